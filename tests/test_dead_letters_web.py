"""The Retry policies and Dead letters pages and their REST shapes: CRUD of
``/api/v1/retry-policies/`` (viewers read, operators write: 403 for a viewer), the order
(first match wins, editable), ``POST /api/v1/jobs/{id}/discard/``, bulk discard by filter
through the bulk machinery, requeue from the page against a real gearmand, and the audit
rows of each."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from django.test import override_settings
from django.utils import timezone

from broker.client import ServerAddress
from hq.models import AuditEntry
from jobs import bulk
from jobs.models import Boot, Job, RetryPolicy, Server
from jobs.recovery import engine
from tests.support.stack import Gearmand
from tests.support.worlds import add_job

if TYPE_CHECKING:
    from django.test import Client
    from rest_framework.test import APIClient

NOW = timezone.now()


@pytest.fixture
def boot(db: None, monkeypatch: pytest.MonkeyPatch) -> Boot:
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    server = Server.objects.create(name="gm-w", address="127.0.0.1:1")
    return Boot.objects.create(server=server, token="1", first_seen=NOW)


def dead(boot: Boot, n: int, function: str = "resize_image") -> list[Job]:
    """``n`` failed background jobs of ``function`` made dead letters by the sweep."""
    RetryPolicy.objects.get_or_create(function="*", defaults={"max_attempts": 1,
                                                              "retry_on": ["failed"]})
    jobs = [add_job(boot, f"H:w:{function}:{i}", function=function, state="failed",
                    finished_at=NOW, error=f"boom {i}", payload_text=f"payload {i}",
                    payload_size=len(f"payload {i}"), recovery="") for i in range(n)]
    engine.sweep()
    return [Job.objects.get(pk=j.pk) for j in jobs]


def test_policy_api_crud_order_and_viewer_403(api_operator: APIClient,
                                              api_viewer: APIClient) -> None:
    body = {"function": "resize_*", "max_attempts": 5, "backoff_base_s": 5,
            "backoff_max_s": 60, "jitter": True, "retry_on": ["failed", "lost"]}
    assert api_viewer.post("/api/v1/retry-policies/", body, format="json").status_code == 403
    r = api_operator.post("/api/v1/retry-policies/", body, format="json")
    assert r.status_code == 201, r.json()
    first = r.json()
    assert {k: first[k] for k in body} == body and first["enabled"] is True
    second = api_operator.post("/api/v1/retry-policies/", {"function": "*"},
                               format="json").json()
    assert second["order"] > first["order"]  # appended: the first match stays first
    assert second["retry_on"] == ["failed", "exception", "lost"] and second["max_attempts"] == 3
    listed = api_viewer.get("/api/v1/retry-policies/").json()["results"]
    assert [p["id"] for p in listed] == [first["id"], second["id"]]
    assert engine.policy_for("resize_image").pk == first["id"]  # type: ignore[union-attr]
    assert engine.policy_for("charge").pk == second["id"]  # type: ignore[union-attr]
    bad = api_operator.post("/api/v1/retry-policies/",
                            {"function": "x", "max_attempts": 0, "retry_on": ["nope"]},
                            format="json")
    assert bad.status_code == 400 and "max_attempts" in bad.json()["error"]["fields"]
    bad = api_operator.patch(f"/api/v1/retry-policies/{first['id']}/",
                             {"retry_on": ["fail"]}, format="json")
    assert bad.status_code == 400 and "retry_on" in bad.json()["error"]["fields"]
    bad = api_operator.patch(f"/api/v1/retry-policies/{first['id']}/",
                             {"backoff_max_s": 1}, format="json")
    assert bad.status_code == 400 and "backoff_max_s" in bad.json()["error"]["fields"]
    r = api_operator.patch(f"/api/v1/retry-policies/{first['id']}/", {"enabled": False},
                           format="json")
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert engine.policy_for("resize_image").pk == second["id"]  # type: ignore[union-attr]
    assert api_viewer.delete(f"/api/v1/retry-policies/{first['id']}/").status_code == 403
    assert api_operator.delete(f"/api/v1/retry-policies/{first['id']}/").status_code == 204
    assert api_viewer.get(f"/api/v1/retry-policies/{first['id']}/").status_code == 404
    assert [e.action for e in AuditEntry.objects.order_by("id")] == [
        "policy_create", "policy_create", "policy_update", "policy_delete"]


def test_policy_page_order_is_editable_and_says_foreground_is_never_retried(
        operator: Client, viewer: Client, db: None) -> None:
    assert viewer.get("/retry-policies/").status_code == 200
    page = operator.get("/retry-policies/").content.decode()
    assert "HQ never retries it behind its client's back" in page.replace("&#x27;", "'")
    form = {"function": "a_*", "max_attempts": "3", "backoff_base_s": "10",
            "backoff_max_s": "60", "retry_on": ["failed"], "enabled": "on"}
    assert viewer.post("/retry-policies/", form).status_code == 403
    assert operator.post("/retry-policies/", form).status_code == 302
    assert operator.post("/retry-policies/", {**form, "function": "*"}).status_code == 302
    a, star = RetryPolicy.objects.order_by("order")
    assert (a.function, star.function) == ("a_*", "*")
    assert viewer.post(f"/retry-policies/{star.pk}/move/", {"direction": "up"}).status_code == 403
    assert operator.post(f"/retry-policies/{star.pk}/move/",
                         {"direction": "up"}).status_code == 302
    assert [p.function for p in RetryPolicy.objects.order_by("order", "id")] == ["*", "a_*"]
    html = operator.get("/retry-policies/").content.decode()
    assert html.index(">*</span>") < html.index(">a_*</span>")
    bad = operator.post("/retry-policies/", {**form, "backoff_max_s": "1"})
    assert bad.status_code == 400 and "At least backoff_base_s." in bad.content.decode()


def test_discard_one_by_one_and_in_bulk(boot: Boot, api_operator: APIClient,
                                        api_viewer: APIClient, viewer: Client,
                                        operator: Client) -> None:
    a, b = dead(boot, 2)
    (c,) = dead(boot, 1, function="charge")
    assert all(j.dead for j in (a, b, c))
    page = viewer.get("/dead-letters/").content.decode()
    assert "payload 0" in page and "boom 1" in page and "charge" in page
    assert 'id="discard-all"' not in page  # a viewer sees no actions
    assert api_viewer.post(f"/api/v1/jobs/{a.pk}/discard/").status_code == 403
    assert viewer.post(f"/dead-letters/{a.pk}/discard/").status_code == 403
    r = api_operator.post(f"/api/v1/jobs/{a.pk}/discard/")
    assert r.status_code == 200 and r.json()["dead"] is False
    assert api_operator.post(f"/api/v1/jobs/{a.pk}/discard/").status_code == 409
    assert Job.objects.filter(pk=a.pk).exists()  # kept in history
    ids = [j["id"] for j in api_viewer.get("/api/v1/jobs/?dead=true").json()["results"]]
    assert sorted(ids) == sorted([b.pk, c.pk])
    # bulk by filter: only the charge dead letters
    r = api_operator.post("/api/v1/jobs/bulk/", {"action": "discard",
                                                  "filter": {"dead": "true",
                                                             "function": "charge"}},
                          format="json")
    assert r.status_code == 202 and r.json()["count"] == 1
    bulk.advance()
    assert api_operator.get(f"/api/v1/bulk/{r.json()['id']}/").json()["done"] == 1
    assert list(Job.objects.filter(dead=True).values_list("pk", flat=True)) == [b.pk]
    # from the page, one by one
    assert operator.post(f"/dead-letters/{b.pk}/discard/").status_code == 302
    assert "No dead letters" in viewer.get("/dead-letters/").content.decode()
    targets = set(AuditEntry.objects.filter(action="discard", detail__result="ok")
                  .values_list("target", "via"))
    assert targets == {(f"job {a.pk}", "api"), (f"job {c.pk}", "api"), (f"job {b.pk}", "ui")}


@pytest.fixture
def to_gearmand(gearmand: Gearmand) -> Iterator[None]:
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-w", "127.0.0.1",
                                                             gearmand.port)]):
        yield


@pytest.mark.gearmand
def test_requeue_from_the_page_starts_a_fresh_chain(boot: Boot, operator: Client,
                                                    viewer: Client, to_gearmand: None) -> None:
    (a,) = dead(boot, 1)
    assert viewer.post(f"/dead-letters/{a.pk}/requeue/").status_code == 403
    r = operator.post(f"/dead-letters/{a.pk}/requeue/", follow=True)
    assert "Requeued job #" in r.content.decode()
    a.refresh_from_db()
    assert not a.dead and a.recovery == "requeued"
    new = Job.objects.get(retry_of=a.pk)
    assert new.state == "queued" and new.handle and engine.chain_of(new) == [new]
    entry = AuditEntry.objects.get(action="retry", target=f"job {new.pk}")
    assert entry.via == "ui" and entry.detail["requeued"] is True
    detail = viewer.get(f"/jobs/{a.pk}/").content.decode()
    assert 'id="retry-chain"' in detail and "Requeued from the dead letters" in detail


@pytest.mark.gearmand
def test_requeue_all_matching_goes_through_the_bulk_machinery(
        boot: Boot, operator: Client, to_gearmand: None) -> None:
    a, b = dead(boot, 2)
    (c,) = dead(boot, 1, function="charge")
    r = operator.post("/dead-letters/bulk/", {"action": "requeue", "function": "resize_image"})
    assert r.status_code == 302 and r["Location"].startswith("/bulk/")
    bulk.advance()
    assert set(Job.objects.filter(retry_of__in=[a.pk, b.pk, c.pk])
               .values_list("retry_of_id", flat=True)) == {a.pk, b.pk}
    engine.sweep()  # the bulk retry wrote its rows itself: the sweep settles the letters
    assert list(Job.objects.filter(dead=True).values_list("pk", flat=True)) == [c.pk]
    assert set(Job.objects.filter(recovery="requeued").values_list("pk", flat=True)) == {
        a.pk, b.pk}
