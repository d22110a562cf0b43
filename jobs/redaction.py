"""Payload privacy: ``HQ_REDACT`` and ``HQ_VIEWERS_SEE_PAYLOADS``.

``HQ_REDACT`` is a comma-separated list of globs (``billing_*,send_password_reset``,
matched like shell globs, case-sensitive, against the whole function name). A matching
function's payloads and results are never stored, only their sizes: the ingest writer asks
:class:`Redactor` for each event's data before it builds the row. The job page and the API
say "redacted" (``payload_redacted``) instead of "not stored", and do so for rows stored
before the function was redacted too.

``HQ_VIEWERS_SEE_PAYLOADS=0`` hides payloads, results and event data from viewers (operators
and admins still see them); the API says ``payload_hidden`` and the search box stops
looking inside payloads for them, so it cannot be used to guess one.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

from django.conf import settings

from broker.tracker import Event
from hq.models import Role
from hq.roles import has_role

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser, AnonymousUser

REDACTED = "redacted"
HIDDEN = "hidden"
#: how many redacted jobs the writer remembers between their submit and their last event
REMEMBER_MAX = 100_000


@lru_cache(maxsize=16)
def _matcher(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    globs = [p.strip() for p in patterns if p.strip()]
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


def is_redacted(function: str | None) -> bool:
    """Whether ``function``'s payloads and results are kept out of HQ (``HQ_REDACT``)."""
    matcher = _matcher(tuple(getattr(settings, "HQ_REDACT", ())))
    return matcher is not None and function is not None and bool(matcher.match(function))


def may_see_payloads(user: AbstractUser | AnonymousUser | None) -> bool:
    """Operators and admins always; viewers unless ``HQ_VIEWERS_SEE_PAYLOADS`` is off."""
    if getattr(settings, "HQ_VIEWERS_SEE_PAYLOADS", True):
        return has_role(user, Role.VIEWER)
    return has_role(user, Role.OPERATOR)


def withheld(function: str | None, user: AbstractUser | AnonymousUser | None) -> str | None:
    """Why ``user`` does not see the data of a job of ``function``: :data:`REDACTED`,
    :data:`HIDDEN`, or None when they do."""
    if is_redacted(function):
        return REDACTED
    if not may_see_payloads(user):
        return HIDDEN
    return None


class EventLike(Protocol):
    @property
    def boot(self) -> str: ...
    @property
    def handle(self) -> str: ...
    @property
    def function(self) -> str | None: ...
    @property
    def data(self) -> bytes | None: ...


class Redactor:
    """For the ingest writer: the data of an event to store, or None for a redacted job.

    Only submit and start events name the function; the events after them (data, warning,
    complete, fail, exception) are matched through the (boot, handle) remembered then.
    Memory is bounded (:data:`REMEMBER_MAX` redacted jobs, oldest forgotten first)."""

    def __init__(self, remember: int = REMEMBER_MAX) -> None:
        self.remember = remember
        self._jobs: OrderedDict[tuple[str, str], None] = OrderedDict()

    def data(self, ev: EventLike) -> bytes | None:
        key = (ev.boot, ev.handle)
        if ev.function is not None:
            if is_redacted(ev.function):
                self._jobs[key] = None
                self._jobs.move_to_end(key)
                if len(self._jobs) > self.remember:
                    self._jobs.popitem(last=False)
                return None
            self._jobs.pop(key, None)  # the handle now belongs to another function's job
            return ev.data
        return None if key in self._jobs else ev.data

    def event(self, ev: Event) -> Event:
        """``ev`` as the writer should store it: without its data when the job is
        redacted (its size stays, so the page can say how much was not stored)."""
        data = self.data(ev)
        return ev if data is ev.data else dataclasses.replace(ev, data=None)
