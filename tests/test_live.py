"""``/ws/live/`` through the real ASGI application, the real publisher and the real Redis
pub/sub fan-out (``monitoring/fanout.py``).

Each test uses its own stream name and server names, so concurrent runs (and a running HQ
on the same Redis) cannot leak messages into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from hq.asgi import application
from hq.models import ApiToken, Role
from hq.services import ensure_user, issue_token
from monitoring import fanout, live

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 5.0  # seconds to wait for a message that must come
QUIET = 1.5  # seconds of silence that prove a message was filtered (3 flush intervals)


@pytest.fixture(autouse=True)
def group(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"live-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setattr(live, "GROUP", name)  # this test's own pub/sub channel
    yield name
    live.drain()
    live.redis_client().zrem(live.WATCH_KEY, *WATCHED)


WATCHED = ("H:t:2", "H:t:17")  # the handles tests subscribe to (registered in Redis)


@pytest.fixture
def server() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def token() -> str:
    user = ensure_user(f"viewer-{uuid.uuid4().hex[:8]}", Role.VIEWER)
    return issue_token(user)


def row(server: str, handle: str, function: str = "resize_small",
        state: str = "queued", id: int = 1) -> dict[str, Any]:
    return {"id": id, "handle": handle, "function": function, "state": state,
            "server": server}


@contextlib.asynccontextmanager
async def open_ws(path: str, headers: list[tuple[bytes, bytes]] | None = None,
                  ) -> AsyncIterator[WebsocketCommunicator]:
    """An accepted connection, always disconnected at the end (so the consumer stops)."""
    comm = WebsocketCommunicator(application, path, headers=headers or [])
    try:
        connected, code = await comm.connect(timeout=WAIT)
        assert connected, f"refused with {code}"
        yield comm
    finally:
        await comm.disconnect()


async def subscribe(comm: WebsocketCommunicator, **wanted: str) -> None:
    await comm.send_json_to({"subscribe": wanted})
    ack = await comm.receive_json_from(timeout=WAIT)
    assert ack == {"type": "subscribed", "function": wanted.get("function"),
                   "handle": wanted.get("handle")}


async def close_code(comm: WebsocketCommunicator) -> int:
    """The code of a connection the server accepted and then closed."""
    out = await comm.receive_output(timeout=WAIT)
    assert out["type"] == "websocket.close", out
    return out["code"]


# -- authentication ----------------------------------------------------------------------------

def test_token_connects_and_receives_a_job_message(token: str, server: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with open_ws(f"/ws/live/?token={token}") as comm:
            live.jobs_changed([row(server, "H:t:1", state="running", id=41)])
            return await comm.receive_json_from(timeout=WAIT)

    message = async_to_sync(scenario)()
    assert message["type"] == "job"
    assert message["server"] == server
    assert message["changed"] == 1
    assert message["functions"] == {"resize_small": {"changed": 1, "states": {"running": 1}}}
    assert message["jobs"] == [row(server, "H:t:1", state="running", id=41)]
    assert message["truncated"] is False


@pytest.mark.parametrize("query", ["", "?token=", "?token=hq_not-a-real-token"])
def test_without_a_valid_token_closed_4401(query: str) -> None:
    async def scenario() -> int:
        async with open_ws(f"/ws/live/{query}") as comm:
            return await close_code(comm)

    assert async_to_sync(scenario)() == 4401


def test_user_without_viewer_role_closed_4403() -> None:
    user = get_user_model().objects.create_user(f"norole-{uuid.uuid4().hex[:8]}")
    raw = ApiToken.issue(user)[1]

    async def scenario() -> int:
        async with open_ws(f"/ws/live/?token={raw}") as comm:
            return await close_code(comm)

    assert async_to_sync(scenario)() == 4403


def test_session_cookie_authenticates(server: str) -> None:
    user = ensure_user(f"web-{uuid.uuid4().hex[:8]}", Role.VIEWER)
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    async def scenario() -> dict[str, Any]:
        headers = [(b"cookie", cookie), (b"origin", b"http://testserver")]
        async with open_ws("/ws/live/", headers=headers) as comm:
            live.queues_changed(server)
            return await comm.receive_json_from(timeout=WAIT)

    message = async_to_sync(scenario)()
    assert message["type"] == "queue"
    assert message["server"] == server
    assert message["functions"] is None


def test_foreign_origin_refused(token: str) -> None:
    async def scenario() -> tuple[bool, Any]:
        comm = WebsocketCommunicator(application, f"/ws/live/?token={token}",
                                     headers=[(b"origin", b"http://evil.example")])
        return await comm.connect(timeout=WAIT)

    connected, _ = async_to_sync(scenario)()
    assert not connected


# -- subscriptions -------------------------------------------------------------------------------

def test_subscribe_by_function_glob(token: str, server: str) -> None:
    async def scenario() -> None:
        async with open_ws(f"/ws/live/?token={token}") as comm:
            await subscribe(comm, function="resize_*")

            live.jobs_changed([row(server, "H:t:1", "email_send"),
                               row(server, "H:t:2", "resize_big", "completed")])
            message = await comm.receive_json_from(timeout=WAIT)
            assert list(message["functions"]) == ["resize_big"]
            assert [j["handle"] for j in message["jobs"]] == ["H:t:2"]
            assert message["changed"] == 1

            live.jobs_changed([row(server, "H:t:3", "email_send")])
            live.queues_changed(server, ["email_send"])
            live.workers_changed(server, ["email_send", "pdf"])
            assert await comm.receive_nothing(timeout=QUIET)

            live.workers_changed(server, ["email_send", "resize_big"])
            message = await comm.receive_json_from(timeout=WAIT)
            assert message["type"] == "worker"
            assert message["functions"] == ["resize_big"]

            await subscribe(comm)  # {} resets
            live.jobs_changed([row(server, "H:t:4", "email_send")])
            message = await comm.receive_json_from(timeout=WAIT)
            assert list(message["functions"]) == ["email_send"]

    async_to_sync(scenario)()


def test_subscribe_by_handle(token: str, server: str) -> None:
    async def scenario() -> None:
        async with open_ws(f"/ws/live/?token={token}") as comm:
            await subscribe(comm, handle="H:t:2")

            live.jobs_changed([row(server, "H:t:1"), row(server, "H:t:20")])
            live.queues_changed(server)
            live.alert(rule="deep queue", state="firing", function="resize_small",
                       server=server, value=120)
            assert await comm.receive_nothing(timeout=QUIET)

            live.jobs_changed([row(server, "H:t:1"), row(server, "H:t:2", state="running")])
            message = await comm.receive_json_from(timeout=WAIT)
            assert [(j["handle"], j["state"]) for j in message["jobs"]] == [("H:t:2", "running")]

    async_to_sync(scenario)()


def test_alert_messages_follow_the_function_subscription(token: str, server: str) -> None:
    async def scenario() -> None:
        async with open_ws(f"/ws/live/?token={token}") as comm:
            await subscribe(comm, function="resize_*")
            live.alert(rule="deep", state="firing", function="email_send", server=server)
            assert await comm.receive_nothing(timeout=QUIET)
            live.alert(rule="deep", state="firing", function="resize_big", server=server,
                       value=51.0, id=7, severity="critical")
            message = await comm.receive_json_from(timeout=WAIT)
            assert message["type"] == "alert"
            assert (message["id"], message["rule"], message["state"], message["value"]) == \
                (7, "deep", "firing", 51.0)

    async_to_sync(scenario)()


def test_bad_client_message_answers_an_error_and_keeps_the_connection(token: str) -> None:
    async def scenario() -> None:
        async with open_ws(f"/ws/live/?token={token}") as comm:
            await comm.send_to(text_data="not json")
            error = await comm.receive_json_from(timeout=WAIT)
            assert error["type"] == "error" and error["error"]["code"] == "bad_request"
            await comm.send_json_to({"subscribe": {"function": 5}})
            error = await comm.receive_json_from(timeout=WAIT)
            assert error["type"] == "error"
            await subscribe(comm, function="x")

    async_to_sync(scenario)()


def test_an_idle_connection_stays_open(token: str, server: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle longer than the subscription's socket timeout and several of its pings (redis-py 8
    times reads out after 5 s by default, which once dropped every idle websocket)."""
    monkeypatch.setattr(fanout, "PING_S", 2.0)

    async def scenario() -> dict[str, Any]:
        async with open_ws(f"/ws/live/?token={token}") as comm:
            await asyncio.sleep(live_idle_s())
            live.queues_changed(server)
            return await comm.receive_json_from(timeout=WAIT)

    assert async_to_sync(scenario)()["server"] == server


def live_idle_s() -> float:
    return 7.0  # three pings, and longer than the read timeout


# -- coalescing ----------------------------------------------------------------------------------

def test_a_burst_of_5000_changes_is_a_handful_of_messages(token: str, server: str) -> None:
    functions = ["resize_small", "resize_big", "email_send"]
    rows = [row(server, f"H:t:{n}", functions[n % 3], "completed" if n % 2 else "running",
                id=n) for n in range(5000)]

    async def scenario() -> list[dict[str, Any]]:
        async with open_ws(f"/ws/live/?token={token}") as comm:
            for start in range(0, len(rows), 100):  # a writer committing 50 batches in 1 s
                live.jobs_changed(rows[start:start + 100])
                await asyncio.sleep(0.02)
            messages: list[dict[str, Any]] = []
            while sum(m["changed"] for m in messages) < len(rows):
                messages.append(await comm.receive_json_from(timeout=WAIT))
            assert await comm.receive_nothing(timeout=QUIET)
            return messages

    messages = async_to_sync(scenario)()
    # one flush every HQ_LIVE_INTERVAL_MS (500): at t = 0, 0.5, 1.0 and maybe 1.5 s
    assert 0 < len(messages) <= 4, [m["changed"] for m in messages]
    per_function: dict[str, int] = {}
    for m in messages:
        assert len(m["jobs"]) <= live.SAMPLES_MAX
        assert len(json.dumps(m)) < 64_000
        for name, agg in m["functions"].items():
            per_function[name] = per_function.get(name, 0) + agg["changed"]
    assert per_function == {f: sum(1 for r in rows if r["function"] == f) for f in functions}
    last = messages[-1]
    assert last["truncated"] is True
    assert row(server, "H:t:4999", "resize_big", "completed", id=4999) in last["jobs"]


def test_a_watched_handle_is_never_sampled_away(token: str, server: str) -> None:
    rows = [row(server, f"H:t:{n}", id=n) for n in range(5000)]

    async def scenario() -> dict[str, Any]:
        async with open_ws(f"/ws/live/?token={token}") as comm:
            await subscribe(comm, handle="H:t:17")
            await asyncio.to_thread(live.refresh_watches)
            live.jobs_changed(rows)
            return await comm.receive_json_from(timeout=WAIT)

    message = async_to_sync(scenario)()
    assert message["jobs"] == [rows[17]]
    assert message["truncated"] is True


# -- the pure parts ------------------------------------------------------------------------------

def test_coalescer_keeps_counts_and_the_latest_jobs() -> None:
    c = live.Coalescer(samples_per_function=2)
    c.add_jobs([row("a", "H:1"), row("a", "H:2"), row("a", "H:1", state="running"),
                row("a", "H:3", "other"), row("b", "H:9")])
    c.touch("queue", "a", ["f1"])
    c.touch("queue", "a", ["f2"])
    c.touch("worker", "a", ["f1"])
    c.touch("worker", "a", None)
    messages = {(m["type"], m["server"]): m for m in c.take()}
    a = messages[("job", "a")]
    assert a["changed"] == 4
    assert a["functions"]["resize_small"] == {"changed": 3,
                                              "states": {"queued": 2, "running": 1}}
    assert [j["handle"] for j in a["jobs"]] == ["H:2", "H:1", "H:3"]
    assert a["jobs"][1]["state"] == "running"
    assert messages[("job", "b")]["changed"] == 1
    assert messages[("queue", "a")]["functions"] == ["f1", "f2"]
    assert messages[("worker", "a")]["functions"] is None
    assert not c.pending and c.take() == []


def test_narrow() -> None:
    job: dict[str, Any] = {"type": "job", "server": "s", "changed": 3, "truncated": False,
           "functions": {"resize": {"changed": 2, "states": {}},
                         "mail": {"changed": 1, "states": {}}},
           "jobs": [row("s", "H:1", "resize"), row("s", "H:2", "mail")]}
    everything = live.Subscription.of()
    assert live.narrow(job, everything) is job
    by_function = live.narrow(job, live.Subscription.of(function="res*"))
    assert by_function is not None
    assert by_function["changed"] == 2 and by_function["jobs"] == [job["jobs"][0]]
    assert live.narrow(job, live.Subscription.of(function="pdf")) is None
    assert live.narrow(job, live.Subscription.of(handle="H:3")) is None
    assert live.narrow(job, live.Subscription.of(function="res*", handle="H:2")) is None
    queue = {"type": "queue", "server": "s", "functions": None}
    assert live.narrow(queue, live.Subscription.of(function="x")) is queue
    assert live.narrow(queue, live.Subscription.of(handle="H:1")) is None
    alert = {"type": "alert", "function": "*"}
    assert live.narrow(alert, live.Subscription.of(function="x")) is alert
