"""Delivering the notification outbox through apprise.

A worker claims due rows with ``SELECT … FOR UPDATE SKIP LOCKED`` and leases them (moves
``next_attempt_at`` into the future) in a short transaction, sends outside it, then
records the outcome. Several workers never send the same row; a worker that dies
mid-send leaves a lease that expires, and the row is tried again. A failed send is
recorded with apprise's own error text and retried with exponential backoff.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import apprise
from django.db import transaction
from django.utils import timezone

from .models import Notification

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)
MAX_ATTEMPTS = 8
BACKOFF_FIRST_S = 15
BACKOFF_MAX_S = 3600


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str = ""


def send(url: str, title: str, body: str) -> SendResult:
    """One message to one apprise URL; the error is apprise's own words."""
    notifier = apprise.Apprise()
    with apprise.LogCapture(level=apprise.logging.WARNING, fmt="%(message)s") as logs:
        if not notifier.add(url):
            return SendResult(False, "not a valid apprise URL (check its scheme and format)")
        # plain text in: apprise escapes it for HTML mail and Slack markup, so a function
        # name like <img src=x onerror=...> or *bold* arrives as the characters it is
        ok = notifier.notify(title=title, body=body, body_format=apprise.NotifyFormat.TEXT)
        captured = logs.getvalue().strip()
    if ok:
        return SendResult(True)
    return SendResult(False, captured.splitlines()[-1] if captured else "delivery failed")


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(BACKOFF_FIRST_S * 2 ** max(attempts - 1, 0), BACKOFF_MAX_S))


def claim(now: datetime, limit: int) -> list[Notification]:
    with transaction.atomic():
        rows = list(Notification.objects.select_for_update(skip_locked=True)
                    .filter(status=Notification.PENDING, next_attempt_at__lte=now)
                    .select_related("channel").order_by("next_attempt_at", "id")[:limit])
        Notification.objects.filter(pk__in=[n.pk for n in rows]).update(
            next_attempt_at=now + LEASE)
    return rows


def deliver_due(now: datetime | None = None, limit: int = 50) -> tuple[int, int]:
    """Send what is due. Returns (sent, failed attempts)."""
    now = now or timezone.now()
    sent = failed = 0
    for n in claim(now, limit):
        result = send(n.channel.url, n.title, n.body)
        n.attempts += 1
        if result.ok:
            n.status, n.sent_at, n.last_error = Notification.SENT, timezone.now(), ""
            sent += 1
        else:
            failed += 1
            n.last_error = result.error[:2000]
            if n.attempts >= MAX_ATTEMPTS:
                n.status = Notification.FAILED
            n.next_attempt_at = timezone.now() + backoff(n.attempts)
            log.warning("notification %s to %s failed (attempt %d): %s", n.id,
                        n.channel.name, n.attempts, result.error)
        n.save(update_fields=["status", "sent_at", "attempts", "last_error",
                              "next_attempt_at"])
    return sent, failed
