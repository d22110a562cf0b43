"""``/ws/live/``: the live stream for one browser tab or script.

Authenticated by the session cookie or ``?token=`` (also ``Authorization: Bearer``), viewer
role required. Close codes after the handshake: 4401 not authenticated, 4403 no viewer
role, 1013 the stream is unavailable (Redis does not answer: try again later), 4429 the
client fell too far behind the stream (it did not read; reconnect and re-fetch).

Messages come from this process's fan-out hub (:mod:`monitoring.fanout`: one Redis
subscription per web process, each message narrowed and encoded once per distinct
subscription), not from a Channels group: the consumer registers an outlet with the hub and
runs its writer task, with no Redis or database access per message.

Client → server: ``{"subscribe": {"function": "resize_*", "handle": "H:x:1"}}`` (either
key optional, globs; ``{"subscribe": {}}`` resets). Answer: ``{"type": "subscribed",
"function": ..., "handle": ...}``, or ``{"type": "error", "error": {"code", "message"}}``,
in order with the stream (what was queued under the old subscription comes first).

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

from . import fanout, live

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser, AnonymousUser

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNAVAILABLE = 1013  # RFC 6455 "Try Again Later"
CLOSE_TOO_SLOW = 4429
#: how long a new connection waits for its process's Redis subscription
READY_WAIT_S = 3.0
#: re-watch the subscribed handle this often (watch entries expire)
REFRESH_S = 300
PATTERN_MAX = 255
#: different function and handle values one connection may subscribe to
SUBSCRIPTIONS_MAX = 100


class LiveConsumer(AsyncJsonWebsocketConsumer):
    #: not a configured layer, so Channels gives this consumer none: no channel name, no
    #: blocking Redis read per process that an outage would turn into closed websockets
    channel_layer_alias = "hq-live-no-channel-layer"

    async def connect(self) -> None:
        self.subscription = live.Subscription.of()
        self.named: set[tuple[str, str]] = set()  # every (key, value) subscribed so far
        self.outlet: fanout.Outlet | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        user = await self._user()
        if user is None or not user.is_authenticated:
            await self._refuse(CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(has_role)(user, Role.VIEWER):
            await self._refuse(CLOSE_FORBIDDEN)
            return
        self.hub = fanout.hub()
        if not await self.hub.ready(READY_WAIT_S):
            await self._refuse(CLOSE_UNAVAILABLE)
            return
        self.outlet = fanout.Outlet(self._send_text, self._too_slow)
        self.hub.join(self.outlet)  # before the accept: nothing published after it is missed
        await self.accept()
        self.tasks += [asyncio.create_task(self.outlet.pump()),
                       asyncio.create_task(self._refresh())]

    async def disconnect(self, code: int) -> None:
        for task in self.tasks:
            task.cancel()
        if self.outlet is not None:
            self.outlet.open = False
            self.hub.leave(self.outlet)

    async def _send_text(self, text: str) -> None:
        await self.base_send({"type": "websocket.send", "text": text})

    def _too_slow(self) -> None:
        """The hub dropped this client (its queue is full): stop writing, say why, close."""
        for task in self.tasks:
            task.cancel()
        self.tasks = [asyncio.create_task(self.close(code=CLOSE_TOO_SLOW))]

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
            if self.subscription.handle:
                with contextlib.suppress(Exception):
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
        if self.outlet is None:  # refused: the close is on its way
            return
        if not isinstance(content, dict) or not isinstance(content.get("subscribe"), dict):
            self._error('send {"subscribe": {"function": GLOB, "handle": GLOB}}')
            return
        wanted = content["subscribe"]
        function, handle = wanted.get("function"), wanted.get("handle")
        for name, value in (("function", function), ("handle", handle)):
            if value is not None and (not isinstance(value, str) or len(value) > PATTERN_MAX):
                self._error(f"{name} must be a string of at most {PATTERN_MAX} characters")
                return
        new = {(k, v) for k, v in (("function", function), ("handle", handle)) if v}
        if len(self.named | new) > SUBSCRIPTIONS_MAX:
            self._error(f"a connection may subscribe to at most {SUBSCRIPTIONS_MAX} "
                        "functions and handles: open a new one", code="too_many_subscriptions")
            return
        self.named |= new
        self.subscription = live.Subscription.of(function, handle)
        self.hub.move(self.outlet, self.subscription)
        if self.subscription.handle:
            with contextlib.suppress(Exception):  # without it, samples still often show it
                await sync_to_async(live.watch_handle, thread_sensitive=False)(
                    self.subscription.handle)
        self._reply({"type": "subscribed", "function": self.subscription.function,
                     "handle": self.subscription.handle})

    def _error(self, message: str, code: str = "bad_request") -> None:
        self._reply({"type": "error", "error": {"code": code, "message": message}})

    def _reply(self, message: dict[str, Any]) -> None:
        """Through the outlet, so replies keep their place in the stream (and count
        against the same limit: a client that sends without reading is dropped too)."""
        if self.outlet is not None and not self.outlet.offer(live.encode(message).decode()):
            self.hub.leave(self.outlet)
