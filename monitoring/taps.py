"""Each tap's report in Redis: the counters a tap writes every few seconds (its own
process, and the proxy's forwarding process for its decoding child), read back by
``/metrics``, ``/healthz``, the overview and the ``tap_health`` alert metric through one
verdict (``jobs.tap_health``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from django.conf import settings

from jobs.tap_health import TapHealth, assess

from . import live
from .seldom import SeldomWarning

log = logging.getLogger(__name__)

#: Redis hash a tap writes its counters to: fields "stats" (JSON) and "updated_at" (epoch)
TAP_KEY = "hq:tap:{server}"
TAP_KEY_TTL_S = 86400
WARN_EVERY_S = 30.0
#: a tap must never stop for Redis: it says so, at most every WARN_EVERY_S seconds
_warn = SeldomWarning(log, WARN_EVERY_S)


def tap_stats_to_redis(server: str, stats: Mapping[str, Any]) -> None:
    """Called by a tap every few seconds with ``TapRunner.stats()``; read by ``/metrics``.

    Expected shape (missing keys are skipped by the reader)::

        {"source": {"kernel_drops", "gaps", ...}, "tap": {"decode_errors", "gaps"},
         "tracker": {"events"}, "writer": {"events_written", "spool_batches", "lag_ms",
         "queued", "db_errors", "writer_alive", "quarantined_events", "spool_bytes", ...},
         "process": {"pid", "dead_thread", "stopping"}}

    ``jobs.tap_health`` judges it (:func:`taps_health`).
    """
    try:
        key = TAP_KEY.format(server=server)
        client = live.redis_client()
        with client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"stats": json.dumps(stats, default=str),
                                    "updated_at": repr(time.time())})
            pipe.expire(key, TAP_KEY_TTL_S)
            pipe.execute()
    except Exception as exc:
        _warn("tap stats not written to Redis: %s", exc)


def tap_section_to_redis(server: str, section: str, data: Mapping[str, Any]) -> None:
    """A part of a tap's report written by another process than the one that writes
    ``stats`` (the proxy's forwarding process says how its decoding child is): stored as
    its own field, read back as ``stats[section]`` with its own ``updated_at``."""
    try:
        key = TAP_KEY.format(server=server)
        body = json.dumps({**data, "updated_at": time.time()}, default=str)
        client = live.redis_client()
        with client.pipeline(transaction=False) as pipe:
            pipe.hset(key, section, body)
            pipe.expire(key, TAP_KEY_TTL_S)
            pipe.execute()
    except Exception as exc:
        _warn("tap %s stats not written to Redis: %s", section, exc)


def read_tap_stats() -> dict[str, tuple[dict[str, Any], float]]:
    """``server -> (stats, updated_at)`` for every ``hq:tap:*`` hash in Redis; the other
    sections of the hash (:func:`tap_section_to_redis`) are merged into ``stats``.
    Raises ``redis.RedisError`` when Redis does not answer."""
    client = live.redis_client()
    prefix = TAP_KEY.format(server="")
    keys = sorted(client.scan_iter(match=prefix + "*", count=500))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        answers = pipe.execute(raise_on_error=False)
    out = {}
    for key, answer in zip(keys, answers, strict=True):
        if isinstance(answer, Exception) or not answer:
            continue
        fields = {_text(k): v for k, v in answer.items()}
        try:
            stats = json.loads(fields.pop("stats"))
            updated = float(fields.pop("updated_at", 0) or 0)
        except (KeyError, ValueError):
            continue
        if not isinstance(stats, dict):
            continue
        for name, raw in fields.items():
            try:
                stats.setdefault(name, json.loads(raw))
            except ValueError:
                continue
        out[_text(key)[len(prefix):]] = (stats, updated)
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def taps_health(now: float | None = None) -> dict[str, TapHealth]:
    """Every reporting tap's health (``jobs.tap_health``), by server name. Raises
    ``redis.RedisError`` when Redis does not answer."""
    now = time.time() if now is None else now
    lag_max = float(settings.HQ_TAP_LAG_MAX_S)
    return {server: assess(server, stats, updated, now, lag_max_s=lag_max)
            for server, (stats, updated) in read_tap_stats().items()}
