"""The live websocket's per-connection subscription cap (each exact handle a client
subscribes to is registered in a Redis set every publisher reads)."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from hq.models import Role
from hq.services import ensure_user, issue_token
from monitoring.consumers import SUBSCRIPTIONS_MAX

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_connection_may_name_at_most_the_cap() -> None:
    from hq.asgi import application

    token = issue_token(ensure_user(f"v-{uuid.uuid4().hex[:8]}", Role.VIEWER))

    async def scenario() -> list[dict[str, object]]:
        ws = WebsocketCommunicator(application, f"/ws/live/?token={token}")
        connected, _ = await ws.connect(timeout=5)
        assert connected
        answers = []
        try:
            # globs only: nothing lands in the shared Redis watch set
            for n in range(SUBSCRIPTIONS_MAX):
                await ws.send_json_to({"subscribe": {"function": f"fn_{n}_*"}})
                answers.append(await ws.receive_json_from(timeout=5))
            await ws.send_json_to({"subscribe": {"function": "one_too_many_*"}})
            answers.append(await ws.receive_json_from(timeout=5))
            await ws.send_json_to({"subscribe": {"function": "fn_3_*"}})  # named before
            answers.append(await ws.receive_json_from(timeout=5))
            await ws.send_json_to({"subscribe": {"handle": "H:x:*"}})
            answers.append(await ws.receive_json_from(timeout=5))
        finally:
            await ws.disconnect()
        return answers

    answers = async_to_sync(scenario)()
    assert all(a["type"] == "subscribed" for a in answers[:SUBSCRIPTIONS_MAX])
    refused = answers[SUBSCRIPTIONS_MAX]
    assert refused["type"] == "error"
    assert refused["error"]["code"] == "too_many_subscriptions"  # type: ignore[index]
    assert answers[-2] == {"type": "subscribed", "function": "fn_3_*", "handle": None}
    assert answers[-1]["type"] == "error"
