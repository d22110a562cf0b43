"""The live stream: what the tap, the poller and the alert evaluator tell websocket clients.

Producers call plain functions that never raise and never block on Redis:

* :func:`jobs_changed` — the ingest writer, after each committed batch,
* :func:`queues_changed` / :func:`workers_changed` — the admin poller,
* :func:`alert` — the alert evaluator,
* :func:`publish` — any ready-made message.

Nothing is sent from the caller's thread. Job, queue and worker changes are folded into a
:class:`Coalescer` (per server and function: how many changes, by new state, and the latest
few jobs), and one background thread per process publishes at most one message of each
kind per server every ``HQ_LIVE_INTERVAL_MS`` (leading edge, then at that pace): each
message is encoded once (:func:`encode`) and published once to the Redis pub/sub channel
:func:`channel`. Thousands of job changes a second become two or three messages a second,
however many clients listen. Each web process subscribes to that channel once and fans
each message out to its own websockets in memory (``monitoring/fanout.py``): narrowed to
each distinct subscription (:func:`narrow`) and encoded once per subscription, with no
database access.

A client that subscribes to an exact handle registers it in the Redis sorted set
:data:`WATCH_KEY` (score = expiry); the coalescers always include jobs whose handle is
watched, so a job page sees its own job even in a burst where samples would miss it.

Message shapes (JSON, as the client receives them)::

    {"type": "job", "server": "s1", "at": 1712.5, "changed": 5000,
     "functions": {"resize": {"changed": 5000, "states": {"completed": 4990, "failed": 10}}},
     "jobs": [{"id": 7, "handle": "H:x:7", "function": "resize", "state": "failed",
               "server": "s1"}, ...],            # latest per function, plus watched handles
     "truncated": true}                          # some changed jobs are not in "jobs"
    {"type": "queue", "server": "s1", "at": ..., "functions": ["resize"] | null}
    {"type": "worker", "server": "s1", "at": ..., "functions": ["resize"] | null}
    {"type": "alert", "at": ..., "id": 3, "rule": "deep", "function": "resize",
     "server": "s1", "state": "firing", "value": 120.0, "severity": "critical"}

``functions: null`` means "anything on this server may have changed".
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from django.conf import settings
from redis.connection import parse_url

from .seldom import SeldomWarning

log = logging.getLogger(__name__)

#: the stream's name (part of its Redis pub/sub channel, :func:`channel`)
GROUP = "live"
#: Redis sorted set of watched handle patterns (score: expiry, epoch seconds)
WATCH_KEY = "hq:live:watch"
WATCH_TTL_S = 900
SAMPLES_PER_FUNCTION = 10
SAMPLES_MAX = 300
WATCHED_MAX = 500
OUTBOX_MAX = 1000
WATCH_REFRESH_S = 1.0

_GLOB_CHARS = re.compile(r"[*?\[]")


def _interval_s() -> float:
    return max(0.05, getattr(settings, "HQ_LIVE_INTERVAL_MS", 500) / 1000)


# -- Redis (plain commands: the watch list; tap stats are in monitoring/taps.py) ------

_redis_lock = threading.Lock()
_redis_client: tuple[int, str, redis.Redis] | None = None


def redis_client() -> redis.Redis:
    """A process-wide client of ``REDIS_URL`` (its pool is thread-safe); recreated after a
    fork, or when the setting changes."""
    global _redis_client
    url = settings.REDIS_URL
    with _redis_lock:
        if _redis_client is None or _redis_client[:2] != (os.getpid(), url):
            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            _redis_client = (os.getpid(), url, client)
        return _redis_client[2]


def channel() -> str:
    """The Redis pub/sub channel of the stream. Pub/sub ignores database numbers, so the
    database of ``REDIS_URL`` is part of the name: two HQs sharing one Redis stay apart."""
    db = parse_url(settings.REDIS_URL).get("db") or 0
    return f"hq:live:{db}:{GROUP}"


def encode(message: Mapping[str, Any]) -> bytes:
    """A message as the client receives it (JSON, UTF-8). Values JSON cannot carry are
    sent as their ``str()``."""
    return orjson.dumps(message, default=str, option=orjson.OPT_NON_STR_KEYS)


def send_now(message: Mapping[str, Any]) -> int:
    """Publish ``message`` at once, from the calling thread (the publisher thread's last
    step). Returns how many web processes received it; raises when Redis does not answer."""
    return int(redis_client().publish(channel(), encode(message)))


def watch_handle(handle: str, ttl_s: int = WATCH_TTL_S) -> None:
    """Make every coalescer include the job ``handle`` in its messages (for ``ttl_s``).
    Globs are ignored: they still filter, but only what the samples carry."""
    if _GLOB_CHARS.search(handle):
        return
    now = time.time()
    client = redis_client()
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(WATCH_KEY, {handle: now + ttl_s}, gt=True)
        pipe.zremrangebyscore(WATCH_KEY, "-inf", now)
        pipe.execute()


def refresh_watches() -> None:
    """Reload the watched handles now (the publisher thread does it every second)."""
    _coalescer().load_watches()


# -- filtering, shared by the consumer ----------------------------------------------------

def compile_glob(pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    return re.compile(fnmatch.translate(pattern))


@dataclass(frozen=True)
class Subscription:
    """What one client asked for: a function glob and/or a handle glob."""

    function: str | None = None
    handle: str | None = None
    _function_re: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    _handle_re: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, function: str | None = None, handle: str | None = None) -> Subscription:
        return cls(function or None, handle or None, compile_glob(function),
                   compile_glob(handle))

    @property
    def everything(self) -> bool:
        return self._function_re is None and self._handle_re is None


def narrow(message: dict[str, Any], sub: Subscription) -> dict[str, Any] | None:
    """The part of ``message`` a client with ``sub`` sees, or None. Pure, no I/O.

    A function glob keeps messages about matching functions (and server-wide ones,
    ``functions: null``); a handle glob keeps only job messages, narrowed to its jobs.
    """
    if sub.everything:
        return message
    fre, hre = sub._function_re, sub._handle_re
    kind = message.get("type")
    if kind == "job":
        return _narrow_job(message, fre, hre)
    if hre is not None:
        return None
    assert fre is not None
    if kind in ("queue", "worker"):
        functions = message.get("functions")
        if functions is None:
            return message
        kept = [f for f in functions if fre.match(f)]
        return {**message, "functions": kept} if kept else None
    if kind == "alert":
        function = message.get("function") or ""
        if not function or _GLOB_CHARS.search(function) or fre.match(function):
            return message
        return None
    return message


def _narrow_job(message: dict[str, Any], fre: re.Pattern[str] | None,
                hre: re.Pattern[str] | None) -> dict[str, Any] | None:
    jobs = [j for j in message.get("jobs", ())
            if (fre is None or fre.match(j.get("function") or ""))
            and (hre is None or hre.match(j.get("handle") or ""))]
    functions = message.get("functions", {})
    if hre is not None:
        if not jobs:
            return None
        names = {j.get("function") for j in jobs}
        functions = {k: v for k, v in functions.items() if k in names}
    elif fre is not None:
        functions = {k: v for k, v in functions.items() if fre.match(k)}
        if not functions:
            return None
    changed = sum(v.get("changed", 0) for v in functions.values())
    return {**message, "functions": functions, "jobs": jobs, "changed": changed,
            "truncated": message.get("truncated", False) or len(jobs) < changed}


# -- coalescing -----------------------------------------------------------------------------

@dataclass
class _FunctionChanges:
    changed: int = 0
    states: dict[str, int] = field(default_factory=dict)
    samples: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # handle -> latest


class Coalescer:
    """Folds job/queue/worker changes until the next flush. Thread-safe; memory bounded
    (counts per function, ``SAMPLES_PER_FUNCTION`` jobs each, ``WATCHED_MAX`` watched)."""

    def __init__(self, samples_per_function: int = SAMPLES_PER_FUNCTION,
                 samples_max: int = SAMPLES_MAX) -> None:
        self.samples_per_function = samples_per_function
        self.samples_max = samples_max
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, _FunctionChanges]] = {}  # server -> function -> ...
        self._watched_rows: dict[str, dict[str, Mapping[str, Any]]] = {}
        self._touched: dict[tuple[str, str], set[str] | None] = {}  # (kind, server) -> fns
        self._watch: frozenset[str] = frozenset()
        self._watch_loaded = 0.0
        self._jobs_seen = 0.0

    @property
    def pending(self) -> bool:
        return bool(self._jobs or self._touched)

    def add_jobs(self, rows: Iterable[Mapping[str, Any]]) -> None:
        watched_handles = self._watch
        keep = self.samples_per_function
        self._jobs_seen = time.monotonic()
        with self._lock:
            by_server = self._jobs
            for row in rows:
                server = str(row.get("server") or "")
                function = str(row.get("function") or "")
                functions = by_server.get(server)
                if functions is None:
                    functions = by_server[server] = {}
                agg = functions.get(function)
                if agg is None:
                    agg = functions[function] = _FunctionChanges()
                agg.changed += 1
                state = str(row.get("state") or "")
                agg.states[state] = agg.states.get(state, 0) + 1
                handle = str(row.get("handle") or "")
                samples = agg.samples
                samples.pop(handle, None)
                samples[handle] = row
                if len(samples) > keep:
                    del samples[next(iter(samples))]
                if handle in watched_handles:
                    watched = self._watched_rows.setdefault(server, {})
                    watched.pop(handle, None)
                    if len(watched) < WATCHED_MAX:
                        watched[handle] = row

    def touch(self, kind: str, server: str, functions: Iterable[str] | None) -> None:
        key = (kind, server)
        with self._lock:
            if functions is None:
                self._touched[key] = None
            elif key not in self._touched:
                self._touched[key] = set(functions)
            else:
                known = self._touched[key]
                if known is not None:
                    known.update(functions)

    def take(self) -> list[dict[str, Any]]:
        """The messages for everything folded since the last take, and a fresh start."""
        with self._lock:
            jobs, self._jobs = self._jobs, {}
            watched, self._watched_rows = self._watched_rows, {}
            touched, self._touched = self._touched, {}
        at = time.time()
        out = [self._job_message(server, functions, watched.get(server, {}), at)
               for server, functions in jobs.items()]
        for (kind, server), functions in touched.items():
            out.append({"type": kind, "server": server, "at": at,
                        "functions": None if functions is None else sorted(functions)})
        return out

    def _job_message(self, server: str, functions: dict[str, _FunctionChanges],
                     watched: dict[str, Mapping[str, Any]], at: float) -> dict[str, Any]:
        per_function = max(1, min(self.samples_per_function,
                                  self.samples_max // max(1, len(functions))))
        chosen: dict[str, Mapping[str, Any]] = {}
        for agg in functions.values():
            for handle, row in list(agg.samples.items())[-per_function:]:
                chosen[handle] = row
        chosen.update(watched)
        changed = sum(agg.changed for agg in functions.values())
        return {
            "type": "job", "server": server, "at": at, "changed": changed,
            "functions": {name: {"changed": agg.changed, "states": agg.states}
                          for name, agg in functions.items()},
            "jobs": [_job_fields(row) for row in chosen.values()],
            "truncated": len(chosen) < changed,
        }

    def load_watches(self) -> None:
        """Read the watched handles from Redis (keeps the old ones on error). Only exact
        handles count: a glob could make every client's messages carry every job."""
        self._watch_loaded = time.monotonic()
        members = redis_client().zrangebyscore(WATCH_KEY, time.time(), "+inf")
        handles = {m.decode() if isinstance(m, bytes) else str(m) for m in members}
        self._watch = frozenset(h for h in handles if not _GLOB_CHARS.search(h))

    def watches_due(self) -> bool:
        """Only while jobs flow (within the last minute): an idle process asks nothing."""
        now = time.monotonic()
        return now - self._jobs_seen < 60 and now - self._watch_loaded >= WATCH_REFRESH_S


def _job_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row.get("id"), "handle": row.get("handle"), "function": row.get("function"),
            "state": row.get("state"), "server": row.get("server")}


# -- the publisher thread -------------------------------------------------------------------

_counters = {"published": 0, "errors": 0, "dropped": 0, "job_changes": 0}
_warn = SeldomWarning(log)


class _Publisher:
    """One daemon thread per process, publishing what the coalescer and the outbox hold."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.coalescer = Coalescer()
        self.outbox: deque[dict[str, Any]] = deque()
        self.wake = threading.Condition()
        self.last_flush = 0.0
        self.idle = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hq-live-publisher", daemon=True)
        self.thread.start()

    def notify(self) -> None:
        with self.wake:
            self.idle.clear()
            self.wake.notify()

    def _run(self) -> None:
        while True:
            try:
                if self.coalescer.watches_due():
                    self._refresh_watches()
                for message in self._next_messages():
                    self._send(message)
            except Exception:  # the thread must outlive any bug in a message
                _counters["errors"] += 1
                log.exception("live publisher")
                time.sleep(0.1)

    def _next_messages(self) -> list[dict[str, Any]]:
        """Waits (at most a second) for something to send; the lock is never held
        during I/O, so producers never wait for Redis."""
        interval = _interval_s()
        with self.wake:
            now = time.monotonic()
            due_at = self.last_flush + interval
            if not self.outbox and not (self.coalescer.pending and now >= due_at):
                if not self.coalescer.pending:
                    self.idle.set()
                self.wake.wait(max(0.0, due_at - now) if self.coalescer.pending else 1.0)
            messages = list(self.outbox)
            self.outbox.clear()
        now = time.monotonic()
        if self.coalescer.pending and now >= self.last_flush + interval:
            self.last_flush = now
            messages.extend(self.coalescer.take())
        return messages

    def _refresh_watches(self) -> None:
        try:
            self.coalescer.load_watches()
        except Exception as exc:
            _counters["errors"] += 1
            _warn("live: cannot read watched handles: %s", exc)

    def _send(self, message: dict[str, Any]) -> None:
        try:
            send_now(message)
            _counters["published"] += 1
        except Exception as exc:
            _counters["errors"] += 1
            _warn("live message not published (%s: %s)", exc.__class__.__name__, exc)


_publisher_lock = threading.Lock()
_publisher_instance: _Publisher | None = None


def _publisher() -> _Publisher:
    global _publisher_instance
    pub = _publisher_instance
    if pub is not None and pub.pid == os.getpid():
        return pub
    with _publisher_lock:  # first use, or first use after a fork (Celery prefork)
        if _publisher_instance is None or _publisher_instance.pid != os.getpid():
            _publisher_instance = _Publisher()
        return _publisher_instance


def _coalescer() -> Coalescer:
    return _publisher().coalescer


# -- the entry points -------------------------------------------------------------------------

def publish(message: dict[str, Any]) -> None:
    """Send ``message`` (JSON-able, with a ``type``) to every live client, soon. Never
    raises, never waits for Redis; when the outbox is full the message is dropped."""
    try:
        pub = _publisher()
        with pub.wake:
            if len(pub.outbox) >= OUTBOX_MAX:
                _counters["dropped"] += 1
                return
            pub.outbox.append(message)
            pub.idle.clear()
            pub.wake.notify()
    except Exception as exc:
        _counters["errors"] += 1
        _warn("live.publish failed: %s", exc)


def jobs_changed(rows: Iterable[Mapping[str, Any]]) -> None:
    """After a committed batch: one dict per changed job, ``{"id", "handle", "function",
    "state", "server"}``. Folded, not sent one by one; never raises."""
    try:
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return
        pub = _publisher()
        pub.coalescer.add_jobs(rows)
        _counters["job_changes"] += len(rows)
        pub.notify()
    except Exception as exc:
        _counters["errors"] += 1
        _warn("live.jobs_changed failed: %s", exc)


def queues_changed(server: str, functions: Iterable[str] | None = None) -> None:
    """The poller stored new queue figures for ``server`` (optionally: only these
    functions changed)."""
    _touch("queue", server, functions)


def workers_changed(server: str, functions: Iterable[str] | None = None) -> None:
    """The poller saw workers of ``server`` come, go or change jobs."""
    _touch("worker", server, functions)


def _touch(kind: str, server: str, functions: Iterable[str] | None) -> None:
    try:
        pub = _publisher()
        pub.coalescer.touch(kind, server, None if functions is None else list(functions))
        pub.notify()
    except Exception as exc:
        _counters["errors"] += 1
        _warn("live.%s_changed failed: %s", kind, exc)


def alert(*, rule: str, state: str, function: str = "", server: str = "",
          value: float | None = None, id: int | None = None, severity: str = "",
          **extra: Any) -> None:
    """An alert changed state (``firing``, ``resolved``, ``acknowledged``...)."""
    publish({"type": "alert", "at": time.time(), "id": id, "rule": rule,
             "function": function, "server": server, "state": state, "value": value,
             "severity": severity, **extra})


def stats() -> dict[str, int]:
    """This process's publisher counters (published, errors, dropped, job_changes)."""
    return dict(_counters)


def drain(timeout: float = 5.0) -> bool:
    """Wait until everything handed over so far is sent (a tap calls it when stopping)."""
    with contextlib.suppress(Exception):
        pub = _publisher()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pub.idle.wait(max(0.0, deadline - time.monotonic())):
                with pub.wake:
                    if not pub.outbox and not pub.coalescer.pending:
                        return True
                time.sleep(0.01)
    return False
