"""Is a tap recording? Judged from the stats it reports (``TapRunner.stats()``).

Pure: the stats dict and when it was reported in, a verdict out. Read by ``/metrics``
(``hq_tap_healthy``), ``/healthz``, the overview's server cards and the ``tap_health``
alert metric, so all four say the same thing for the same reasons.

A tap is unhealthy when any of these holds (``code``: what the text says):

* ``stale``: no report for :data:`STALE_S` seconds (the process is gone or hung);
  ``stopped`` when its last report said it was stopping,
* ``thread_dead`` / ``writer_dead``: a thread of the tap died (it is about to exit),
* ``child_down``: proxy mode, the decoding child is down (the proxy forwards, unrecorded),
* ``db_down``: the writer cannot reach Postgres (events go to the disk spool),
* ``lagging``: the oldest event not yet committed is older than ``HQ_TAP_LAG_MAX_S``,
* ``spool_full``: the spool is :data:`SPOOL_WARN` or more of ``HQ_SPOOL_MAX``,
* ``quarantined``: rows were quarantined in the last :data:`QUARANTINE_RECENT_S`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: a tap reports every 5 s; this long without a report and it is taken for gone
STALE_S = 30.0
LAG_MAX_S = 30.0
SPOOL_WARN = 0.8
QUARANTINE_RECENT_S = 900.0


@dataclass(frozen=True)
class TapHealth:
    server: str
    healthy: bool
    reasons: tuple[tuple[str, str], ...] = ()  # (code, text)
    age_s: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def codes(self) -> list[str]:
        return [code for code, _ in self.reasons]

    @property
    def text(self) -> str:
        """"writer dead / lagging 12 s / spool 80 % full", or "ok"."""
        return " / ".join(text for _, text in self.reasons) or "ok"

    def as_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "reasons": self.codes, "text": self.text,
                "age_s": round(self.age_s, 1), **self.facts}


def _section(stats: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    part = stats.get(name)
    return part if isinstance(part, Mapping) else {}


def _number(part: Mapping[str, Any], name: str) -> float | None:
    value = part.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def assess(server: str, stats: Mapping[str, Any], updated_at: float, now: float, *,
           stale_s: float = STALE_S, lag_max_s: float = LAG_MAX_S) -> TapHealth:
    """The verdict on one tap's last report."""
    writer = _section(stats, "writer")
    process = _section(stats, "process")
    age = max(0.0, now - updated_at)
    reasons: list[tuple[str, str]] = []
    if age > stale_s:
        if process.get("stopping") or writer.get("state") == "stopped":
            reasons.append(("stopped", "stopped"))
        else:
            reasons.append(("stale", f"no report for {age:.0f} s"))
    if process.get("dead_thread"):
        reasons.append(("thread_dead", str(process["dead_thread"])[:120]))
    if writer.get("state") == "dead":
        reasons.append(("writer_dead", "writer dead"))
    reasons += _proxy_reasons(_section(stats, "proxy"), now, stale_s)
    reasons += _writer_reasons(writer, now, lag_max_s)
    facts = {k: writer[k] for k in ("lag_ms", "spool_bytes", "spool_max", "queue_events",
                                    "quarantined_events", "db_errors", "writer_alive")
             if k in writer}
    return TapHealth(server, not reasons, tuple(reasons), age, facts)


def _writer_reasons(writer: Mapping[str, Any], now: float,
                    lag_max_s: float) -> list[tuple[str, str]]:
    reasons = []
    if writer.get("db_up") is False:
        reasons.append(("db_down", "database unreachable, spooling"))
    lag_ms = _number(writer, "lag_ms")
    if lag_ms is not None and lag_ms / 1000 > lag_max_s:
        reasons.append(("lagging", f"lagging {lag_ms / 1000:.0f} s"))
    size, limit = _number(writer, "spool_bytes"), _number(writer, "spool_max")
    if size is not None and limit and size / limit >= SPOOL_WARN:
        reasons.append(("spool_full", f"spool {min(size / limit, 1) * 100:.0f} % full"))
    last = _number(writer, "last_quarantine_at")
    count = _number(writer, "quarantined_events") or 0
    corrupt = _number(writer, "corrupt_spool_files") or 0
    if last and now - last < QUARANTINE_RECENT_S and (count or corrupt):
        text = f"{count:.0f} quarantined" if count else ""
        if corrupt:
            text = (text + ", " if text else "") + f"{corrupt:.0f} corrupt spool files"
        reasons.append(("quarantined", text))
    return reasons


def _proxy_reasons(proxy: Mapping[str, Any], now: float,
                   stale_s: float) -> list[tuple[str, str]]:
    """Proxy mode: what the forwarding process says of its decoding child (only while that
    report itself is fresh)."""
    at = _number(proxy, "updated_at")
    if not proxy or at is None or now - at > stale_s:
        return []
    if proxy.get("child_alive") is False:
        return [("child_down", "decoding child down")]
    return []
