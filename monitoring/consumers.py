"""``/ws/live/``: the live stream for one browser tab or script.

Authenticated by the session cookie or ``?token=`` (also ``Authorization: Bearer``), viewer
role required. Close codes after the handshake: 4401 not authenticated, 4403 no viewer
role. The consumer joins the group :data:`monitoring.live.GROUP` and forwards what the
publisher sends, narrowed to the client's subscription by :func:`monitoring.live.narrow`:
no database access per message.

Client → server: ``{"subscribe": {"function": "resize_*", "handle": "H:x:1"}}`` (either
key optional, globs; ``{"subscribe": {}}`` resets). Answer: ``{"type": "subscribed",
"function": ..., "handle": ...}``, or ``{"type": "error", "error": {"code", "message"}}``.

A connection may name at most :data:`SUBSCRIPTIONS_MAX` different functions and handles over
its life (each exact handle is registered in a Redis set every publisher reads); past that
a subscribe is refused with the error code ``too_many_subscriptions`` and the current
subscription stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from hq.auth import user_for_token
from hq.models import Role
from hq.roles import has_role

from . import live

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser, AnonymousUser

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
#: re-join the group and re-watch the handle this often (group and watch entries expire)
REFRESH_S = 300
PATTERN_MAX = 255
#: different function and handle values one connection may subscribe to
SUBSCRIPTIONS_MAX = 100


class LiveConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.group = live.GROUP
        self.subscription = live.Subscription.of()
        self.named: set[tuple[str, str]] = set()  # every (key, value) subscribed so far
        self.joined = False
        self.refresher: asyncio.Task[None] | None = None
        user = await self._user()
        if user is None or not user.is_authenticated:
            await self._refuse(CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(has_role)(user, Role.VIEWER):
            await self._refuse(CLOSE_FORBIDDEN)
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.joined = True
        await self.accept()
        self.refresher = asyncio.create_task(self._refresh())

    async def disconnect(self, code: int) -> None:
        if self.refresher is not None:
            self.refresher.cancel()
        if self.joined:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def _refuse(self, code: int) -> None:
        """Accept, then close with ``code``: a close before the handshake would reach a
        browser as a bare HTTP 403, and the page could not tell "log in" from "forbidden"."""
        await self.accept()
        await self.close(code=code)

    async def _user(self) -> AbstractUser | AnonymousUser | None:
        token = self._token()
        if token:
            return await database_sync_to_async(user_for_token)(token)
        return self.scope.get("user")

    def _token(self) -> str:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        if query.get("token"):
            return query["token"][0].strip()
        for name, value in self.scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, raw = value.decode("latin1").partition(" ")
                if scheme.lower() == "bearer":
                    return raw.strip()
        return ""

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            with contextlib.suppress(Exception):
                await self.channel_layer.group_add(self.group, self.channel_name)
                if self.subscription.handle:
                    await sync_to_async(live.watch_handle, thread_sensitive=False)(
                        self.subscription.handle)

    # -- client → server ----------------------------------------------------------------------

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        try:
            return json.loads(text_data)
        except ValueError:
            return None

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("subscribe"), dict):
            await self._error('send {"subscribe": {"function": GLOB, "handle": GLOB}}')
            return
        wanted = content["subscribe"]
        function, handle = wanted.get("function"), wanted.get("handle")
        for name, value in (("function", function), ("handle", handle)):
            if value is not None and (not isinstance(value, str) or len(value) > PATTERN_MAX):
                await self._error(f"{name} must be a string of at most {PATTERN_MAX} characters")
                return
        new = {(k, v) for k, v in (("function", function), ("handle", handle)) if v}
        if len(self.named | new) > SUBSCRIPTIONS_MAX:
            await self._error(f"a connection may subscribe to at most {SUBSCRIPTIONS_MAX} "
                              "functions and handles: open a new one",
                              code="too_many_subscriptions")
            return
        self.named |= new
        self.subscription = live.Subscription.of(function, handle)
        if self.subscription.handle:
            with contextlib.suppress(Exception):  # without it, samples still often show it
                await sync_to_async(live.watch_handle, thread_sensitive=False)(
                    self.subscription.handle)
        await self.send_json({"type": "subscribed", "function": self.subscription.function,
                              "handle": self.subscription.handle})

    async def _error(self, message: str, code: str = "bad_request") -> None:
        await self.send_json({"type": "error", "error": {"code": code, "message": message}})

    # -- group → client -------------------------------------------------------------------------

    async def live_message(self, event: dict[str, Any]) -> None:
        message = live.narrow(event["message"], self.subscription)
        if message is not None:
            await self.send_json(message)
