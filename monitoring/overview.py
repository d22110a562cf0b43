"""The overview page at scale (20 servers, thousands of queues): what to show first.

- Servers with a problem (down, not polled, waiting, tap unhealthy) come first; retired
  servers (``monitoring.retire``) are left out, with their queues, unless asked.
- Queues that need attention come first, most urgent first
  (``presenters.attention_order``): jobs queued and no worker, the oldest queued job
  older than a minute, an alert firing on it, or ``presenters.FAILING_RATE`` of the last
  hour failing. Firing alerts come from the sources registered with
  :func:`register_attention` (the alerts app registers its own: it sits above
  monitoring, which cannot import it).
- Idle queues (nothing queued or running, no job in 24 h: ``selectors.idle_queues``)
  are folded behind their count.
- A filter (words matched in the function or server name) narrows every list.
- At most ``ROW_LIMIT`` rows of each kind are rendered, so the page costs the same with
  500 or 10,000 queues; the filter reaches the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobs.tap_health import TapHealth

from . import selectors
from .presenters import Row, attention_order, queue_row, server_card, totals

ROW_LIMIT = 200
#: more servers than this: healthy ones are shown as one compact line each
COMPACT_AFTER = 6
BANNER_NAMES = 8
STATUS_RANK = {"down": 0, "stale": 1, "waiting": 2, "up": 4}
FILTER_MAX = 200
#: each returns the (server name, function) of queues with an alert firing; server "*":
#: that function on every server
AttentionSource = Callable[[], set[tuple[str, str]]]
ATTENTION_SOURCES: list[AttentionSource] = []


def register_attention(source: AttentionSource) -> None:
    if source not in ATTENTION_SOURCES:
        ATTENTION_SOURCES.append(source)


def _alerting() -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for source in ATTENTION_SOURCES:
        out |= source()
    return out


@dataclass(frozen=True)
class Options:
    """What the page was asked for: ``?q=…&idle=1&retired=1``."""

    q: str = ""
    idle: bool = False
    retired: bool = False

    @classmethod
    def from_query(cls, params: Any) -> Options:
        q = " ".join(str(params.get("q", "")).replace("\0", "").split())[:FILTER_MAX]
        return cls(q=q, idle=params.get("idle") == "1", retired=params.get("retired") == "1")

    def matches(self, *texts: str) -> bool:
        """Every word of the filter is in one of ``texts`` (case-insensitive)."""
        hay = " ".join(texts).lower()
        return all(word in hay for word in self.q.lower().split())


def overview_context(opts: Options, servers: list[Row], queues: list[Row],
                     taps: dict[str, TapHealth]) -> dict[str, Any]:
    retired = selectors.retired_servers()
    cards = [server_card(s, taps.get(s["name"])) for s in servers]
    for card in cards:
        card["retired"] = card["name"] in retired
        card["problem"] = card["status"] != "up" or bool(card["tap"] and
                                                         not card["tap"]["healthy"])
    kept = [c for c in cards if opts.retired or not c["retired"]]
    hidden = {c["name"] for c in cards if c["retired"] and not opts.retired}
    rows = [queue_row(q) for q in queues if q["server"] not in hidden]
    alerting = _alerting()
    for row in rows:
        row["alerting"] = ((row["server"], row["function"]) in alerting
                           or ("*", row["function"]) in alerting)
        if row["alerting"] and row["flag"] in ("", "failing"):
            row["flag"] = "alerting"
    idle = selectors.idle_queues(rows)
    for row in rows:
        row["idle"] = (row["server"], row["function"]) in idle
    shown = [r for r in rows if opts.matches(r["function"], r["server"])]
    flagged = sorted((r for r in shown if r["flag"]), key=attention_order)
    active = [r for r in shown if not r["flag"] and not r["idle"]]
    idle_rows = [r for r in shown if not r["flag"] and r["idle"]]
    listed = {r["server"] for r in shown}
    kept.sort(key=lambda c: (c["retired"], STATUS_RANK.get(c["status"], 3) if c["problem"]
                             else 4, c["name"]))
    return {
        # a filter keeps the servers it names, and those its queues are on
        "servers": [c for c in kept if not opts.q or opts.matches(c["name"], c["address"])
                    or c["name"] in listed],
        "servers_total": len(kept), "retired_count": len(retired & {c["name"] for c in cards}),
        "compact": len(kept) > COMPACT_AFTER,
        "totals": totals(rows, [c for c in cards if not c["retired"]]),
        "attention": flagged[:BANNER_NAMES], "attention_more": max(len(flagged) - BANNER_NAMES, 0),
        "queues": flagged[:ROW_LIMIT] + active[:ROW_LIMIT],
        "flagged_count": len(flagged), "active_count": len(active),
        "cut": max(len(flagged) - ROW_LIMIT, 0) + max(len(active) - ROW_LIMIT, 0),
        "idle_rows": idle_rows[:ROW_LIMIT] if opts.idle else [],
        "idle_count": len(idle_rows), "idle_cut": max(len(idle_rows) - ROW_LIMIT, 0),
        "queues_total": len(rows), "shown_total": len(shown),
        "opts": opts,
        "many_servers": len(kept) > 1 or len({r["server"] for r in rows}) > 1,
    }
