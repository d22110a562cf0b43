"""Job searches replayed from SQL compiled once per shape (hq/prepared.py,
jobs.selectors.prepared_search) answer exactly what the ORM answers: the same rows, pages,
cursors and errors, for every filter, hostile values included; and a shape is compiled once."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from hq.prepared import PreparedRows, Shapes
from jobs import selectors
from jobs.models import Boot, Job, Server

if TYPE_CHECKING:
    from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db
UTC = dt.UTC
HOSTILE = ["H:x:1' OR '1'='1", "%", "_", "fn\\", "日本 ü", "a" * 255, "H:x:%s", "$1",
           "\ue000hq-prepared:handle:1\ue000"]


@pytest.fixture
def jobs(db: None) -> list[Job]:
    s1 = Server.objects.create(name="s1", address="127.0.0.1:4730")
    s2 = Server.objects.create(name="s2", address="127.0.0.1:4731")
    t0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    made = []
    for server in (s1, s2):
        for b in range(3):
            boot = Boot.objects.create(server=server, token=f"{b}", first_seen=t0)
            for i in range(25):
                made.append(Job(
                    server=server, boot=boot, handle=f"H:x:{i}", function=f"fn_{i % 3}",
                    unique=f"u-{i % 5}", worker=f"w{i % 4}", updated_at=t0,
                    state=("completed", "failed", "queued")[i % 3],
                    priority=("high", "normal", "low")[i % 3], background=i % 2 == 0,
                    dead=i % 11 == 0, submitted_at=t0 + dt.timedelta(seconds=i),
                    payload_text=f"job {i}", payload_size=6 + len(str(i))))
    for hostile in HOSTILE:
        made.append(Job(server=s1, boot=None, handle=hostile, function=hostile,
                        unique=hostile, updated_at=t0, state="completed"))
    Job.objects.bulk_create(made)
    first = Job.objects.order_by("id").first()
    assert first is not None
    Job.objects.filter(handle="H:x:3").update(retry_of=first)
    return made


def _pages(client: APIClient, url: str) -> list[dict[str, Any]]:
    """Every page from ``url`` on, following ``next``; then back again by ``previous``."""
    pages, seen = [], set()
    while url and url not in seen:
        seen.add(url)
        r = client.get(url)
        assert r.status_code == 200, (url, r.content[:300])
        pages.append(r.json())
        nxt = r.json()["next"]
        url = (lambda p: f"{p.path}?{p.query}")(urlsplit(nxt)) if nxt else ""
    if len(pages) > 1:
        prev = pages[-1]["previous"]
        parts = urlsplit(prev)
        back = client.get(f"{parts.path}?{parts.query}")
        assert back.status_code == 200
        pages.append(back.json())
    return pages


QUERIES = [
    "handle=H:x:3", "function=fn_1&limit=7", "unique=u-2&limit=4", "worker=w1",
    "server=s2&limit=10", "state=failed&limit=9", "state=completed,queued&function=fn_0",
    "priority=high&limit=5", "background=true&server=s1", "dead=true", "dead=false&limit=20",
    "handle=H:x:3&function=fn_0&server=s1", "limit=13", "",
    # not prepared (the ORM every time): the answers must still agree
    "q=job 1", "retry_of=1", "submitted_after=2026-03-01T12:00:10Z",
] + [f"handle={h}" for h in HOSTILE] + [f"function={h}&unique={h}" for h in HOSTILE]


@pytest.mark.parametrize("query", QUERIES)
def test_a_prepared_search_answers_what_the_orm_answers(
        jobs: list[Job], api_viewer: APIClient, monkeypatch: pytest.MonkeyPatch,
        query: str) -> None:
    from urllib.parse import quote

    url = "/api/v1/jobs/?" + "&".join(
        f"{k}={quote(v)}" for k, _, v in (p.partition("=") for p in query.split("&")) if k)
    prepared = _pages(api_viewer, url)
    assert prepared[0]["results"] or query.startswith(("q=", "retry_of")), query
    monkeypatch.setattr(selectors, "prepared_search", lambda *a, **k: None)
    assert _pages(api_viewer, url) == prepared


def test_bad_values_are_refused_the_same_way(jobs: list[Job], api_viewer: APIClient) -> None:
    for url in ("/api/v1/jobs/?state=nope", "/api/v1/jobs/?priority=urgent",
                "/api/v1/jobs/?background=maybe", "/api/v1/jobs/?handle=%00",
                "/api/v1/jobs/?handle=" + "a" * 256,
                "/api/v1/jobs/?cursor=cD0xMjM0NTY3ODk5OTk5OTk5OTk5OTk5OTk5",
                "/api/v1/jobs/?limit=7&cursor=%%%"):
        r = api_viewer.get(url)
        assert r.status_code == 400, (url, r.content[:200])
        assert set(r.json()) == {"error"}


def test_a_shape_is_compiled_once_whatever_the_values(jobs: list[Job],
                                                      api_viewer: APIClient) -> None:
    selectors.SHAPES.clear()
    before = selectors.SHAPES.compiles
    for n in range(1, 8):
        assert api_viewer.get(f"/api/v1/jobs/?handle=H:x:{n}").json()["results"]
    assert selectors.SHAPES.compiles == before + 1
    api_viewer.get("/api/v1/jobs/?handle=H:x:1&function=fn_1")  # another shape
    api_viewer.get("/api/v1/jobs/?handle=H:x:1&limit=3")  # another page size
    assert selectors.SHAPES.compiles == before + 3


def test_a_value_the_orm_transforms_is_not_replayed(jobs: list[Job]) -> None:
    """A builder that does not put a value into the SQL as it is (here: lower-cased) cannot
    be replayed: its shape is remembered as such and every call runs the ORM."""
    shapes = Shapes()

    def build(values: Any) -> Any:
        return Job.objects.filter(function=values["function"].lower()).order_by("id").values(
            "id", "function")

    for name in ("FN_1", "FN_2"):
        rows = list(PreparedRows(shapes, build, Job, ("lower",), {"function": name})[0:100])
        assert rows and {r["function"] for r in rows} == {name.lower()}
    found, compiled = shapes.get((("lower",), (("slice", 0, 100),)))
    assert found and compiled is None


def test_the_cache_of_shapes_is_bounded() -> None:
    shapes = Shapes(limit=3)
    for n in range(10):
        shapes.put((n,), None)
    assert [shapes.get((n,))[0] for n in range(10)] == [False] * 7 + [True] * 3
