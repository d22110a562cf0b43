"""Reads: job search and a job's timeline. Views and the API call these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_datetime

from hq.errors import InvalidInput, NotFound
from hq.prepared import PreparedRows, Shapes

from .lookups import like_pattern  # importing it registers __ilike
from .models import Job, JobEvent, SearchText, Server, State

FILTERS = ("handle", "function", "state", "unique", "worker", "server",
           "submitted_after", "submitted_before", "q", "retry_of", "priority", "background",
           "dead")
STATES = {s.value for s in State}
#: the longest value each filter may have (the column's own length; a time, a state list)
FILTER_MAX = {"handle": 255, "function": 255, "unique": 255, "worker": 255, "server": 100,
              "state": 200, "submitted_after": 64, "submitted_before": 64, "q": 500,
              "retry_of": 19, "priority": 6, "background": 5, "dead": 5}


def _time(name: str, raw: str) -> datetime:
    hint = {name: ["Use ISO 8601, e.g. 2026-11-24T10:00:00Z."]}
    try:  # parse_datetime raises ValueError for a well-formed impossible date (Feb 30)
        value = parse_datetime(raw.replace(" ", "+", 1) if "T" in raw else raw)
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if value is not None:
            value.astimezone(UTC)  # year 1 with a +01:00 offset has no UTC time
    except (ValueError, OverflowError):
        raise InvalidInput(f"{name} is not a valid time: {raw!r}", fields=hint) from None
    if value is None:
        raise InvalidInput(f"{name} is not an ISO 8601 time: {raw!r}", fields=hint)
    return value


def _states(raw: str) -> list[str]:
    states = [s.strip() for s in raw.split(",") if s.strip()]
    bad = [s for s in states if s not in STATES]
    if bad:
        choices = ", ".join(sorted(STATES))
        raise InvalidInput(f"unknown state {bad[0]!r}",
                           fields={"state": [f"Choose from: {choices}."]})
    return states


def filter_values(params: Mapping[str, object]) -> dict[str, str]:
    """The filters in ``params`` (a query string, or a JSON object from a bulk action),
    stripped and checked: strings without NUL, no longer than :data:`FILTER_MAX`."""
    value: dict[str, str] = {}
    for name in FILTERS:
        raw = params.get(name)
        if raw is None:
            raw = ""
        if not isinstance(raw, str):
            raise InvalidInput(f"{name} must be a string", fields={name: ["A string."]})
        raw = raw.strip()
        if "\0" in raw:
            raise InvalidInput(f"{name} must not contain NUL characters",
                               fields={name: ["No NUL (\\0) characters."]})
        limit = FILTER_MAX[name]
        if len(raw) > limit:
            raise InvalidInput(f"{name} is too long ({limit} characters at most)",
                               fields={name: [f"{limit} characters at most."]})
        value[name] = raw
    return value


#: filters search_jobs puts into the query as they are (exact matches): a prepared search
#: takes new values for them without compiling again
EXACT_FILTERS = ("handle", "function", "unique", "worker", "server")
#: filters it checks and maps onto a few values: a prepared search's shape includes them
CHOICE_FILTERS = ("state", "priority", "background", "dead")
SHAPES = Shapes()


def prepared_search(params: Mapping[str, object], *, payload_search: bool = True,
                    columns: Sequence[str], related: Mapping[str, Any]) -> PreparedRows | None:
    """:func:`search_jobs` ``.values(*columns, **related)`` as a :class:`PreparedRows`
    (SQL compiled once per shape, hq/prepared.py), or None when a filter in ``params``
    (times, ``q``, ``retry_of``) needs the ORM every time."""
    value = filter_values(params)
    if any(value[name] for name in FILTERS
           if name not in EXACT_FILTERS and name not in CHOICE_FILTERS):
        return None
    exact = {name: value[name] for name in EXACT_FILTERS if value[name]}
    choices = {name: value[name] for name in CHOICE_FILTERS if value[name]}

    def build(values: Mapping[str, Any]) -> QuerySet[Job, dict[str, Any]]:
        return search_jobs({**choices, **values}, payload_search=payload_search).values(
            *columns, **related)

    shape = (tuple(exact), tuple(choices.items()), payload_search, tuple(columns),
             tuple(related))
    return PreparedRows(SHAPES, build, Job, shape, exact)


def search_jobs(params: Mapping[str, object], *, payload_search: bool = True) -> QuerySet[Job]:
    """Jobs matching the filters in ``params`` (the REST/UI query string), newest first.

    ``q`` is the one search box: a whole handle, a unique key (a UUID one whole), any part
    of a function name or of the payload's first 512 characters (case-insensitive
    substring, served by one trigram index; see ``SearchText``). Without
    ``payload_search`` (a viewer who may not see payloads) it does not look in payloads,
    so it cannot be used to guess them.
    """
    qs = Job.objects.select_related("server")
    value = filter_values(params)
    for name in ("handle", "function", "unique", "worker"):
        if value[name]:
            qs = qs.filter(**{name: value[name]})
    if value["server"]:
        qs = qs.filter(server__name=value["server"])
    if value["state"]:
        qs = qs.filter(state__in=_states(value["state"]))
    if value["submitted_after"]:
        qs = qs.filter(submitted_at__gte=_time("submitted_after", value["submitted_after"]))
    if value["submitted_before"]:
        qs = qs.filter(submitted_at__lt=_time("submitted_before", value["submitted_before"]))
    if value["priority"]:
        if value["priority"] not in ("high", "normal", "low"):
            raise InvalidInput(f"unknown priority {value['priority']!r}",
                               fields={"priority": ["high, normal or low."]})
        qs = qs.filter(priority=value["priority"])
    if value["background"]:
        flag = {"true": True, "false": False}.get(value["background"].lower())
        if flag is None:
            raise InvalidInput("background must be true or false",
                               fields={"background": ["true or false."]})
        qs = qs.filter(background=flag)
    if value["dead"]:
        dead = {"true": True, "false": False}.get(value["dead"].lower())
        if dead is None:
            raise InvalidInput("dead must be true or false", fields={"dead": ["true or false."]})
        qs = qs.filter(dead=dead)
    if value["retry_of"]:
        if not value["retry_of"].isdigit():
            raise InvalidInput(f"retry_of must be a job id, not {value['retry_of']!r}",
                               fields={"retry_of": ["A whole number."]})
        qs = qs.filter(retry_of_id=int(value["retry_of"]))
    if value["q"]:
        if payload_search:
            qs = qs.alias(search_text=SearchText()).filter(_text_match(value["q"]))
        else:
            qs = qs.filter(_name_match(value["q"]))
    return qs.order_by("-id")


def _text_match(text: str) -> Q:
    if len(text) < 3:  # too short for a trigram index: exact matches only
        return Q(handle=text) | Q(unique=text) | Q(function=text)
    # the trigram text leaves out handles and UUID unique keys (models.SearchText): those
    # match whole, through their btree indexes
    return Q(search_text__ilike=like_pattern(text)) | Q(handle=text) | Q(unique=text)


def _name_match(text: str) -> Q:
    """``q`` without payloads: handle, unique or function (substring from 3 characters)."""
    if len(text) < 3:
        return Q(handle=text) | Q(unique=text) | Q(function=text)
    pattern = like_pattern(text)
    return Q(handle__ilike=pattern) | Q(unique__ilike=pattern) | Q(function__ilike=pattern)


def get_job(job_id: int | str) -> Job:
    try:
        return Job.objects.select_related("server", "boot").get(pk=int(job_id))
    except (Job.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"No job with id {job_id}.") from None


def exact_job(text: str) -> Job | None:
    """The job a search box text names exactly (a handle, newest boot first), if one does."""
    text = text.strip()
    if not text or "\0" in text or len(text) > FILTER_MAX["handle"]:
        return None
    return Job.objects.filter(handle=text).order_by("-id").first()


#: at most this many earlier runs are counted ("1,000+")
EARLIER_RUNS_MAX = 1000


def earlier_runs(job: Job) -> int:
    """Jobs before this one with the same function and (non-empty) unique key: gearmand
    coalesces only those, so they are earlier runs of the same piece of work."""
    if not job.unique or job.submitted_at is None:
        return 0
    earlier = (Job.objects.filter(unique=job.unique, function=job.function,
                                  submitted_at__lt=job.submitted_at)
               .exclude(pk=job.pk).values("pk")[:EARLIER_RUNS_MAX])
    return Job.objects.filter(pk__in=earlier).count()


def job_events(job: Job) -> QuerySet[JobEvent]:
    if job.boot_id is None:  # HQ's own row, no tap row yet: no events
        return JobEvent.objects.none()
    return JobEvent.objects.filter(boot_id=job.boot_id, handle=job.handle).order_by("at", "id")


def newest_page(qs: QuerySet[Job], before_id: str, size: int) -> tuple[list[Job], int | None]:
    """One page of newest-first jobs, older than ``before_id``; and the next cursor."""
    raw = before_id.strip()
    if raw:
        if not raw.isdigit() or len(raw) > 18:
            raise InvalidInput(f"before_id must be a job id, not {raw!r}",
                               fields={"before_id": ["A whole number."]})
        qs = qs.filter(id__lt=int(raw))
    rows = list(qs[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return rows, (rows[-1].pk if more else None)


def server_names() -> list[str]:
    return list(Server.objects.order_by("name").values_list("name", flat=True))


def known_functions(limit: int = 500) -> list[str]:
    """The distinct function names of recorded jobs (at most ``limit``, in order), for the
    submit form's completion: a loose index scan of ``job_function``, one index probe per
    name, so a table of millions of jobs costs as much as its few hundred functions."""
    from django.db import connection

    table = Job._meta.db_table
    sql = (f'WITH RECURSIVE f(fn) AS (SELECT min(function) FROM "{table}" WHERE function > \'\' '
           f'UNION ALL SELECT (SELECT min(function) FROM "{table}" WHERE function > f.fn) '
           "FROM f WHERE f.fn IS NOT NULL) SELECT fn FROM f WHERE fn IS NOT NULL LIMIT %s")
    with connection.cursor() as cur:
        cur.execute(sql, [limit])
        return [row[0] for row in cur.fetchall()]
