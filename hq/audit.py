"""The audit log: who did what, through which door, to what, and how it went.

Every action service (``jobs/services.py``…) calls :func:`record` in the transaction that
does the work, so an action and its audit row commit together (a batch's rows go in with
one INSERT through :func:`record_many`); a refused action (a 409, a 503) is recorded with
:func:`record_refusal` in its own short transaction, since the action's own rolled back.
Rows are only ever inserted. This module imports no app: a target is named as text
("job 42").
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.db import transaction
from django.db.models import QuerySet

from .errors import InvalidInput
from .models import AuditEntry, Via

VIA = {v.value for v in Via}
FILTERS = ("user", "via", "action", "target", "after", "before")


def record(*, user: AbstractBaseUser | AnonymousUser | None, via: str, action: str,
           target: str, detail: dict[str, Any] | None = None,
           at: datetime | None = None) -> AuditEntry:
    (entry,) = _entries(user, via, action, [(target, detail)])
    if at is not None:
        entry.at = at
    entry.save()
    return entry


def record_many(*, user: AbstractBaseUser | AnonymousUser | None, via: str, action: str,
                rows: Iterable[tuple[str, dict[str, Any] | None]]) -> list[AuditEntry]:
    """One actor's ``action`` on many targets (a batch of retries, of scheduled submits):
    the rows :func:`record` would write, ``(target, detail)`` each, in one INSERT."""
    entries = _entries(user, via, action, rows)
    return AuditEntry.objects.bulk_create(entries) if entries else []


def _entries(user: AbstractBaseUser | AnonymousUser | None, via: str, action: str,
             rows: Iterable[tuple[str, dict[str, Any] | None]]) -> list[AuditEntry]:
    if via not in VIA:
        raise ValueError(f"via must be one of {sorted(VIA)}, not {via!r}")
    real = user if isinstance(user, User) and user.is_authenticated else None
    username = real.get_username() if real else ""
    return [AuditEntry(user=real, username=username, via=via, action=action[:40],
                       target=target[:255], detail=detail or {}) for target, detail in rows]


def record_refusal(*, user: AbstractBaseUser | AnonymousUser | None, via: str, action: str,
                   target: str, reason: str, code: str) -> AuditEntry:
    """An action that was refused or failed (its own transaction rolled back)."""
    with transaction.atomic():
        return record(user=user, via=via, action=action, target=target,
                      detail={"result": "refused", "code": code, "reason": reason})


def entries(params: dict[str, str]) -> QuerySet[AuditEntry]:
    """Audit rows, newest first, narrowed by ``user`` (name), ``via``, ``action``,
    ``target`` (exact) and ``after``/``before`` (ISO 8601)."""
    from django.utils.dateparse import parse_datetime

    qs = AuditEntry.objects.all()
    for name in ("user", "via", "action", "target"):
        raw = (params.get(name) or "").strip()
        if "\0" in raw or len(raw) > 255:
            raise InvalidInput(f"{name} is not a valid filter", fields={name: ["Too long."]})
        if raw:
            qs = qs.filter(**{"username" if name == "user" else name: raw})
    for name, lookup in (("after", "at__gte"), ("before", "at__lt")):
        raw = (params.get(name) or "").strip()
        if raw:
            try:
                value = parse_datetime(raw)
            except ValueError:
                value = None
            if value is not None and value.tzinfo is None:
                from datetime import UTC
                value = value.replace(tzinfo=UTC)
            if value is None or len(raw) > 64:
                raise InvalidInput(f"{name} is not an ISO 8601 time: {raw!r}",
                                   fields={name: ["Use ISO 8601, e.g. 2026-11-24T10:00:00Z."]})
            qs = qs.filter(**{lookup: value})
    return qs.order_by("-at", "-id")
