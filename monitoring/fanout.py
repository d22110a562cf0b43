"""The live stream's last hop: one Redis subscription per web process, many websockets.

The publisher (:mod:`monitoring.live`) publishes each message once, encoded, to the Redis
pub/sub channel :func:`monitoring.live.channel`. Each web process subscribes to it once (a
:class:`Hub` per event loop; uvicorn runs one per worker) and hands every message to the
process's own clients in memory:

* a message is decoded once; for each distinct subscription among the connected clients it
  is narrowed (:func:`monitoring.live.narrow`) and encoded once, and every client with that
  subscription gets the very same text. Clients with no subscription get the published
  text as it came, without any encoding;
* each client has an :class:`Outlet`, a queue of at most :data:`QUEUE_MAX` messages and a
  task that writes them to its socket, so a client that reads slowly delays only itself.
  One that falls further behind is dropped (counted in ``slow_dropped``): its websocket is
  closed and ``live.js`` reconnects and re-fetches what it shows;
* when Redis goes away the hub subscribes again with backoff (:data:`BACKOFF_MIN_S`
  doubling to :data:`BACKOFF_MAX_S`, jittered) while the websockets stay open. What was
  published in between is lost (pub/sub keeps nothing); pages catch up at their next poll.
  A connection that is open but silent (no answer to a ping for :data:`PING_S` × 2) counts
  as gone too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import live
from .seldom import SeldomWarning

log = logging.getLogger(__name__)

#: messages one client may be behind before it is dropped (at two or three messages a
#: second per gearmand, about 20 s of a client that does not read)
QUEUE_MAX = 64
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
#: ping an idle subscription this often; no answer for twice as long = reconnect
PING_S = 15.0
CONNECT_TIMEOUT_S = 5.0

_counters = {
    "subscribes": 0,      # subscriptions made (the first, and one after each outage)
    "redis_errors": 0,    # subscriptions lost (Redis gone, refused, silent)
    "received": 0,        # messages read from Redis
    "bad_messages": 0,    # messages that could not be decoded or narrowed (skipped)
    "encoded": 0,         # narrowed messages encoded (once per distinct subscription)
    "queued": 0,          # copies handed to clients' queues
    "slow_dropped": 0,    # clients closed for falling QUEUE_MAX messages behind
    "send_failed": 0,     # writes that failed (the client went away meanwhile)
}
_warn = SeldomWarning(log)


class Outlet:
    """One websocket's end of the hub: a bounded queue of encoded messages and the loop
    (:meth:`pump`, run as the connection's own task) that writes them to the socket."""

    __slots__ = ("_on_slow", "_queue", "_send", "_wake", "limit", "open", "subscription")

    def __init__(self, send: Callable[[str], Awaitable[None]], on_slow: Callable[[], None],
                 limit: int = QUEUE_MAX) -> None:
        self._send = send
        self._on_slow = on_slow
        self._queue: deque[str] = deque()
        self._wake = asyncio.Event()
        self.limit = limit
        self.open = True
        self.subscription = live.Subscription.of()

    def offer(self, text: str) -> bool:
        """Queue ``text`` for the client, and say whether the outlet is still open. Past
        the limit the client is dropped instead: ``on_slow`` is called (once), the queue
        emptied, and nothing is queued any more."""
        if not self.open:
            return False
        if len(self._queue) >= self.limit:
            self.open = False
            self._queue.clear()
            _counters["slow_dropped"] += 1
            _warn("live: a client fell %d messages behind and is dropped", self.limit)
            self._on_slow()
            return False
        self._queue.append(text)
        _counters["queued"] += 1
        self._wake.set()
        return True

    @property
    def backlog(self) -> int:
        return len(self._queue)

    async def pump(self) -> None:
        """Write what is queued, in order, until the outlet closes or a write fails."""
        queue, wake = self._queue, self._wake
        while self.open:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            try:
                await self._send(queue.popleft())
            except Exception:  # the client went away: its disconnect follows
                _counters["send_failed"] += 1
                self.open = False


class Hub:
    """One subscription to ``channel`` on ``url``, shared by the outlets of one event loop."""

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self._groups: dict[live.Subscription, dict[Outlet, None]] = {}
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = BACKOFF_MIN_S

    # -- membership ---------------------------------------------------------------------

    @property
    def clients(self) -> int:
        return sum(len(outlets) for outlets in self._groups.values())

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def join(self, outlet: Outlet) -> None:
        """Deliver to ``outlet`` from the next message on (:meth:`ready` subscribes)."""
        self._groups.setdefault(outlet.subscription, {})[outlet] = None

    def leave(self, outlet: Outlet) -> None:
        outlets = self._groups.get(outlet.subscription)
        if outlets is not None:
            outlets.pop(outlet, None)
            if not outlets:
                del self._groups[outlet.subscription]

    def move(self, outlet: Outlet, subscription: live.Subscription) -> None:
        """``outlet`` now wants ``subscription`` (from the next message on)."""
        self.leave(outlet)
        outlet.subscription = subscription
        if outlet.open:
            self.join(outlet)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"hq-live-fanout {self.channel}")

    async def ready(self, timeout: float) -> bool:
        """Subscribe (once per hub; again after each outage, by itself) and say whether it
        is subscribed, waiting at most ``timeout`` seconds."""
        self.start()
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- fan-out ------------------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        """Hand one published message to every outlet, narrowed to its subscription."""
        _counters["received"] += 1
        if not self._groups:
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            _counters["bad_messages"] += 1
            return
        message: dict[str, Any] | None = None
        for subscription, outlets in list(self._groups.items()):
            if subscription.everything:
                out = text
            else:
                if message is None:
                    message = _decode(data)
                    if message is None:
                        return
                out_or_none = _narrowed(message, subscription)
                if out_or_none is None:
                    continue
                out = out_or_none
            for outlet in list(outlets):
                if not outlet.offer(out):
                    self.leave(outlet)

    # -- the subscription ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except Exception as exc:  # Redis went away, refused, or stopped answering
                _counters["redis_errors"] += 1
                _warn("live: lost the Redis subscription (%s: %s); subscribing again",
                      exc.__class__.__name__, exc)
            self._subscribed.clear()
            await asyncio.sleep(self._backoff * random.uniform(0.5, 1.0))
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    async def _listen(self) -> None:
        # no retries inside redis-py: this loop decides when to try again
        client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=PING_S,
            socket_keepalive=True, retry=Retry(NoBackoff(), 0))
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            _counters["subscribes"] += 1
            self._backoff = BACKOFF_MIN_S
            self._subscribed.set()
            await self._read(pubsub)
        finally:
            self._subscribed.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _read(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        while True:
            message = await pubsub.get_message(timeout=PING_S / 3)
            now = loop.time()
            if message is not None:
                heard = now
                if message.get("type") == "message":
                    self._deliver_safely(message["data"])
                continue
            if now - heard > 2 * PING_S:
                raise ConnectionError(f"no answer from Redis for {now - heard:.0f} s")
            if now - pinged >= PING_S:
                pinged = now
                await pubsub.ping()

    def _deliver_safely(self, data: Any) -> None:
        try:
            self.deliver(data if isinstance(data, bytes) else str(data).encode())
        except Exception:  # a bug in one message must not end the subscription
            _counters["bad_messages"] += 1
            log.exception("live: fan-out of one message failed")


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict):
        _counters["bad_messages"] += 1
        return None
    return message


def _narrowed(message: dict[str, Any], subscription: live.Subscription) -> str | None:
    try:
        narrowed = live.narrow(message, subscription)
    except Exception:  # a malformed field: this subscription skips the message
        _counters["bad_messages"] += 1
        return None
    if narrowed is None:
        return None
    _counters["encoded"] += 1
    return live.encode(narrowed).decode()


# -- one hub per event loop (and stream) ---------------------------------------------------

_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], Hub]] = (
    weakref.WeakKeyDictionary())


def hub() -> Hub:
    """The running event loop's hub for the stream of ``REDIS_URL`` (made on first use)."""
    loop = asyncio.get_running_loop()
    key = (settings.REDIS_URL, live.channel())
    hubs = _hubs.get(loop)
    if hubs is None:
        hubs = _hubs[loop] = {}
    found = hubs.get(key)
    if found is None:
        found = hubs[key] = Hub(*key)
    return found


def stats() -> dict[str, int]:
    """This process's fan-out counters, and how many clients its hubs serve now."""
    clients = sum(h.clients for hubs in list(_hubs.values()) for h in hubs.values())
    return {**_counters, "clients": clients}
