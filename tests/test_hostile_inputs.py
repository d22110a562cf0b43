"""Hostile query values thrown at every list and detail endpoint and every page: never a
500; the API answers a 4xx with the JSON error shape ``{"error": {"code", "message"}}``.

Each test walks a whole table of values (collecting every failure before asserting), so
one world is built per endpoint family, not per value.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from jobs.models import Job
from tests.support.worlds import add_job

if TYPE_CHECKING:
    from django.test import Client
    from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

#: what a script, a fuzzer or a curious person may put in any query value
HOSTILE = [
    "\x00", "a\x00b", "H:box:1\x00", "x" * 300, "y" * 5000, "%", "_", "\\", "%00",
    "' OR 1=1 --", "\"; DROP TABLE jobs_job; --", "é😀\u202e", "\ufffd", "*", "[",
    "[" * 2000, "{\"a\":", "-1", "0", "99999999999999999999999999", "1e309", "NaN",
    "2026-02-30T00:00:00", "2026-13-01T00:00:00Z", "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59-23:59", "2026-11-24T10:00:00Z", "2026-11-24 10:00:00 01:00",
    "queued,,,running", "firing", "resolved", " ", "",
    # a newline ends an SQL comment: a value bound into one must not become SQL
    "a\nb", "\n} ; SELECT 1 --", "\r\n", "x\n--",
]

def _b64(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode()


#: cursors no page of any list ever had: not base64, base64 of nonsense, positions that are
#: no value of any ordering column, NUL, offsets and flags that are not numbers
BAD_CURSORS = [
    "garbage", "%%%", "é", "\x00", "cD1hYmM=%", *(_b64(raw) for raw in [
        "p=abc", "p=\x00", "p=2026-02-30T00:00:00", "p=99999999999999999999999999",
        "o=-5", "o=abc", "r=x", "p=" + "9" * 200, "p=1.5",
    ]),
]
#: well-formed cursors a client could still craft: a page, or invalid_cursor, never more
ODD_CURSORS = ["", *(_b64(raw) for raw in [
    "p=-1&r=1", "o=99999999999", "p=2026-11-24T10:00:00%2B00:00&r=1", "",
])]
CURSORS = BAD_CURSORS + ODD_CURSORS


def _qs(name: str, value: str) -> str:
    return f"{name}={quote(value, safe='')}"


def _error_shape(body: Any) -> bool:
    return (isinstance(body, dict) and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("code"), str)
            and isinstance(body["error"].get("message"), str))


def _check_api(client: APIClient | Client, urls: Iterable[str]) -> list[str]:
    problems = []
    for url in urls:
        response = client.get(url)
        if response.status_code >= 500:
            problems.append(f"{response.status_code} {url[:120]!r}")
        elif response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not _error_shape(body):
                problems.append(f"{response.status_code} without the error shape {url[:120]!r}")
    return problems


def _check_pages(client: Client, urls: Iterable[str]) -> list[str]:
    problems = []
    for url in urls:
        response = client.get(url)
        if response.status_code >= 500:
            problems.append(f"{response.status_code} {url[:120]!r}")
    return problems


# ---------------------------------------------------------------- the examples of the issue


def test_the_reported_crashes_are_400s_with_the_error_shape(
        world: dict[str, Any], api_viewer: APIClient) -> None:
    r = api_viewer.get("/api/v1/jobs/?submitted_after=2026-02-30T00:00:00")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid"
    assert "submitted_after" in r.json()["error"]["fields"]

    r = api_viewer.get("/api/v1/jobs/?handle=%00")
    assert r.status_code == 400
    assert "handle" in r.json()["error"]["fields"]

    for cursor in ("garbage", base64.b64encode(b"p=abc").decode()):
        r = api_viewer.get("/api/v1/jobs/", {"cursor": cursor})
        assert r.status_code == 400, cursor
        assert r.json()["error"]["code"] == "invalid_cursor"


def test_a_real_cursor_still_pages(world: dict[str, Any], api_viewer: APIClient) -> None:
    first = api_viewer.get("/api/v1/jobs/?limit=2").json()
    assert first["next"]
    second = api_viewer.get(first["next"])
    assert second.status_code == 200
    ids = [j["id"] for j in first["results"]] + [j["id"] for j in second.json()["results"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids) == 4


def test_an_over_long_exact_filter_is_a_400_naming_the_field(
        world: dict[str, Any], api_viewer: APIClient) -> None:
    r = api_viewer.get("/api/v1/jobs/", {"function": "f" * 256})
    assert r.status_code == 400
    assert r.json()["error"]["fields"]["function"] == ["255 characters at most."]
    assert api_viewer.get("/api/v1/jobs/", {"function": "f" * 255}).status_code == 200


def test_a_deeply_nested_payload_shows_raw_on_the_job_page(
        world: dict[str, Any], viewer: Client, api_viewer: APIClient) -> None:
    payload = "[" * 30000
    job = add_job(world["boot"], "H:gm-prod-1:31000", payload_text=payload,
                  payload_size=len(payload), result_text="{" * 30000, result_size=30000)
    page = viewer.get(f"/jobs/{job.pk}/")
    assert page.status_code == 200
    assert "[[[[[[[[" in page.content.decode()
    assert api_viewer.get(f"/api/v1/jobs/{job.pk}/").json()["payload"] == payload


# ---------------------------------------------------------------- every endpoint, every value


def test_job_list_and_search_survive_hostile_filters(
        world: dict[str, Any], api_viewer: APIClient, viewer: Client) -> None:
    from jobs.selectors import FILTERS

    names = [*FILTERS, "before_id", "limit", "poll"]
    urls = [f"/api/v1/jobs/?{_qs(n, v)}" for n in names for v in HOSTILE]
    assert _check_api(api_viewer, urls) == []
    pages = [f"/jobs/?{_qs(n, v)}" for n in names for v in HOSTILE]
    assert _check_pages(viewer, pages) == []
    hx = [f"/jobs/?{_qs(n, v)}" for n in ("q", "before_id", "state") for v in HOSTILE]
    for url in hx:
        assert viewer.get(url, HTTP_HX_REQUEST="true").status_code < 500, url


def test_job_detail_and_events_survive_hostile_cursors_and_ids(
        world: dict[str, Any], api_viewer: APIClient, viewer: Client) -> None:
    job: Job = world["running"]
    urls = [f"/api/v1/jobs/{job.pk}/events/?{_qs('cursor', c)}" for c in CURSORS]
    urls += [f"/api/v1/jobs/{job.pk}/events/?{_qs('limit', v)}" for v in HOSTILE]
    urls += [f"/api/v1/jobs/{quote(v, safe='')}/" for v in HOSTILE if v.strip()]
    urls += ["/api/v1/jobs/99999999999999999999999999/", "/api/v1/jobs/-1/",
             "/api/v1/jobs/9223372036854775808/events/"]
    assert _check_api(api_viewer, urls) == []
    pages = [f"/jobs/{quote(v, safe='')}/" for v in HOSTILE if v.strip()]
    pages += ["/jobs/99999999999999999999999999/", "/jobs/9223372036854775808/"]
    assert _check_pages(viewer, pages) == []


def test_every_paginated_list_answers_invalid_cursor(
        alert_world: dict[str, Any], api_admin: APIClient) -> None:
    job: Job = alert_world["running"]
    lists = ["/api/v1/jobs/", f"/api/v1/jobs/{job.pk}/events/", "/api/v1/alert-rules/",
             "/api/v1/alerts/", "/api/v1/channels/", "/api/v1/tokens/"]
    problems = []
    for url in lists:
        assert api_admin.get(url).status_code == 200, url
        for cursor in CURSORS:
            r = api_admin.get(url, {"cursor": cursor})
            if r.status_code == 200 and cursor in ODD_CURSORS:
                continue
            if r.status_code != 400 or r.json()["error"]["code"] != "invalid_cursor":
                problems.append(f"{url} cursor={cursor[:30]!r}: {r.status_code} "
                                f"{r.content[:100]!r}")
    assert problems == []


def test_monitoring_and_alert_endpoints_survive_hostile_values(
        alert_world: dict[str, Any], api_admin: APIClient) -> None:
    urls = []
    for v in HOSTILE:
        urls += [
            f"/api/v1/queues/?{_qs('server', v)}", f"/api/v1/workers/?{_qs('server', v)}",
            f"/api/v1/servers/?{_qs('server', v)}",
            f"/api/v1/queues/resize_image/stats/?{_qs('range', v)}",
            f"/api/v1/queues/resize_image/stats/?{_qs('step', v)}",
            f"/api/v1/queues/resize_image/stats/?{_qs('server', v)}",
            f"/api/v1/alerts/?{_qs('state', v)}", f"/api/v1/alert-rules/?{_qs('limit', v)}",
            f"/api/v1/channels/?{_qs('limit', v)}", f"/api/v1/tokens/?{_qs('limit', v)}",
        ]
        if v.strip():
            q = quote(v, safe="")
            urls += [f"/api/v1/queues/{q}/stats/", f"/api/v1/alerts/{q}/",
                     f"/api/v1/alert-rules/{q}/", f"/api/v1/channels/{q}/",
                     f"/api/v1/tokens/{q}/"]
    assert _check_api(api_admin, urls) == []


def test_every_page_survives_hostile_values(alert_world: dict[str, Any], admin: Client) -> None:
    job: Job = alert_world["running"]
    critical = alert_world["critical"]
    bases = ["/", "/workers/", "/queues/resize_image/", f"/jobs/{job.pk}/", "/alerts/",
             f"/alerts/{critical.pk}/", "/alerts/rules/new/", "/alerts/channels/",
             "/alerts/strip/", "/tokens/", "/users/", "/api/docs/"]
    names = ["range", "server", "state", "poll", "metric", "function", "threshold", "next",
             "q", "cursor"]
    urls = [f"{base}?{_qs(n, v)}" for base in bases for n in names for v in HOSTILE]
    urls += [f"/queues/{quote(v, safe='')}/" for v in HOSTILE if v.strip()]
    assert _check_pages(admin, urls) == []
    assert admin.get("/queues/a%00b/").status_code == 400
    assert admin.get("/jobs/?q=a%00b").status_code == 400


def test_the_api_answers_nul_anywhere_with_the_error_shape(api_admin: APIClient) -> None:
    for url in ("/api/v1/workers/?server=%00", "/api/v1/queues/%00/stats/",
                "/api/v1/alerts/?state=fir%00ing", "/api/v1/nowhere%00/"):
        r = api_admin.get(url)
        assert r.status_code == 400, url
        assert _error_shape(r.json()), url
