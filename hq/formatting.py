"""How values read on every page: durations, relative times, hex dumps, event styles.

Plain functions, used by views and presenters in Python and, through
``hq/templatetags/hq_format.py``, in templates (``{% load hq_format %}``). Everything here
is pure formatting: no queries except ``user_role`` (one lookup of the user's groups).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from django.utils import timezone

from .roles import role_of

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser, AnonymousUser

DASH = "—"

# kind -> (icon, tone, label). Tones are CSS classes shared with the state badges.
EVENT_STYLES: dict[str, tuple[str, str, str]] = {
    "submitted": ("↓", "queued", "Submitted"),
    "attached": ("⇄", "queued", "Client attached"),
    "started": ("▶", "running", "Started"),
    "status": ("◔", "running", "Progress"),
    "data": ("≡", "queued", "Data"),
    "warning": ("!", "lost", "Warning"),
    "completed": ("✓", "completed", "Completed"),
    "failed": ("✕", "failed", "Failed"),
    "exception": ("⚠", "failed", "Exception"),
    "worker_lost": ("↺", "lost", "Worker lost, requeued"),
    "abandoned": ("⏏", "lost", "Client went away"),
    "cancelled": ("⊘", "cancelled", "Cancelled"),
    "retried": ("↻", "scheduled", "Retried"),
    "lost": ("?", "lost", "Lost"),
}

STATE_ICONS = {
    "scheduled": "◷", "queued": "…", "running": "▶", "completed": "✓",
    "failed": "✕", "lost": "?", "cancelled": "⊘",
}


def duration_ms(ms: int | float | None) -> str:
    """12 ms · 3.4 s · 42 s · 2 min 5 s · 14 min · 1 h 5 min · 2 d 3 h."""
    if ms is None or ms == "":
        return DASH
    ms = float(ms)
    if ms < 0:
        return "-" + duration_ms(-ms)
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return _coarse(int(seconds))


def _coarse(seconds: int) -> str:
    minutes, s = divmod(seconds, 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    if days:
        return f"{days} d {h} h" if h else f"{days} d"
    if hours:
        return f"{hours} h {m} min" if m else f"{hours} h"
    if minutes < 10 and s:
        return f"{minutes} min {s} s"
    return f"{minutes} min"


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """Compact relative time: just now · 12 s ago · 5 min ago · 3 h ago · in 2 min."""
    if when is None:
        return DASH
    delta = (now or timezone.now()) - when
    seconds = int(delta.total_seconds())
    if abs(seconds) < 2:
        return "just now"
    text = _coarse_short(abs(seconds))
    return f"{text} ago" if seconds > 0 else f"in {text}"


def _coarse_short(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def utc(when: datetime | None) -> str:
    """2026-11-24 10:00:00.123 UTC"""
    if when is None:
        return DASH
    when = when.astimezone(UTC) if when.tzinfo else when
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d} UTC"


def iso(when: datetime | None) -> str:
    return when.astimezone(UTC).isoformat() if when else ""


def offset(when: datetime | None, base: datetime | None) -> str:
    """+1.2 s: how long after ``base`` (the submit) ``when`` happened."""
    if when is None or base is None:
        return ""
    delta: timedelta = when - base
    ms = delta.total_seconds() * 1000
    return ("+" if ms >= 0 else "") + duration_ms(ms)


def is_bytes(value: object) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def hexdump(value: bytes | None, limit: int = 4096) -> str:
    """``xxd``-style lines: offset, 16 hex bytes, printable ASCII."""
    if value is None:
        return ""
    data = bytes(value)
    lines = []
    for start in range(0, min(len(data), int(limit)), 16):
        chunk = data[start : start + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start:08x}  {hexes:<47}  {text}")
    if len(data) > int(limit):
        lines.append(f"… {len(data) - int(limit)} more bytes")
    return "\n".join(lines)


def preview(value: str | bytes | None, length: int = 120) -> str:
    """A one-line taste of event data: text shortened, bytes as a hex string."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        head = data[: int(length) // 3].hex(" ")
        return head + (" …" if len(data) > int(length) // 3 else "")
    text = " ".join(str(value).split())
    return text if len(text) <= int(length) else text[: int(length) - 1] + "…"


def byte_len(value: str | bytes | None) -> int:
    if value is None:
        return 0
    return len(value.encode()) if isinstance(value, str) else len(value)


def size(n: int | None) -> str:
    """1 byte · 512 bytes · 4.0 KiB · 1.2 MiB"""
    if n is None:
        return DASH
    if n == 1:
        return "1 byte"
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def percent(numerator: int | None, denominator: int | None) -> int | None:
    if numerator is None or not denominator:
        return None
    return max(0, min(100, round(100 * numerator / denominator)))


def event_icon(kind: str) -> str:
    return EVENT_STYLES.get(kind, ("•", "queued", kind))[0]


def event_tone(kind: str) -> str:
    return EVENT_STYLES.get(kind, ("•", "queued", kind))[1]


def event_label(kind: str) -> str:
    return EVENT_STYLES.get(kind, ("•", "queued", kind.replace("_", " ").capitalize()))[2]


def state_icon(state: str) -> str:
    return STATE_ICONS.get(state, "•")


def user_role(user: AbstractUser | AnonymousUser | None) -> str:
    role = role_of(user)
    return role.value if role else "no role"


def pretty_json(value: object) -> object:
    """JSON text indented for reading; anything else, or JSON too deeply nested to
    indent (a payload of 30,000 ``[``), unchanged."""
    if not isinstance(value, str) or value[:1] not in ("{", "["):
        return value
    try:
        return json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return value


def blob_kind(value: object) -> str:
    if is_bytes(value):
        return "binary"
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            json.loads(value)
        except (ValueError, RecursionError):
            return "text"
        return "JSON"
    return "text"


def share(part: int | None, other: int | None) -> int:
    """``part``'s share of ``part + other`` in whole percent (0-100): the ``basis-N`` class
    that sizes a bar (``static/css/hq.css``; no inline styles under the CSP)."""
    total = (part or 0) + (other or 0)
    return max(0, min(100, round(100 * (part or 0) / total))) if total > 0 else 0


class OnAServer(Protocol):
    @property
    def server_id(self) -> int: ...


def spans_servers(jobs: Iterable[OnAServer]) -> bool:
    """Whether these rows come from more than one server (then each row names its own)."""
    return len({job.server_id for job in jobs}) > 1
