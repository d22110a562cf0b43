"""Submitting jobs through HQ (``POST /api/v1/jobs/``, ``jobs.services.submit``) against a
real gearmand watched by HQ's tap, with PHP workers (pecl gearman) doing the work.

What is checked: the worker gets exactly the bytes submitted (it reverses them and the tap
records its result), HQ's row and the tap's row become one row that keeps HQ's id, a
foreground submit waits for its result or answers 202, a dead gearmand is skipped and only
"none accepts" is a 503 (with nothing recorded as queued), sizes and encodings are checked,
and every submit leaves an audit row.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.test import override_settings

from broker.client import ServerAddress
from hq.models import AuditEntry
from jobs import services
from jobs.models import Job
from tests.interop.php_scripts import php_worker
from tests.support.stack import (
    Gearmand,
    Tap,
    free_port,
    jobs_of,
    kinds,
    start_tap,
    wait_for,
)

if TYPE_CHECKING:
    from rest_framework.test import APIClient

pytestmark = pytest.mark.gearmand


@pytest.fixture
def tapped(gearmand: Gearmand, tmp_path: Path, transactional_db: None) -> Iterator[Tap]:
    """gearmand with a capture tap, and HQ_GEARMAN naming it as the tap does."""
    tap = start_tap("capture", gearmand, tmp_path)
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress(tap.server, "127.0.0.1",
                                                             tap.port)]):
        yield tap
    tap.stop()


def linked(job_id: int, state: str) -> Job:
    """Wait until HQ's row ``job_id`` is the tap's row (it has a boot) in ``state``."""
    def done() -> Job | None:
        services.link_pending()
        job = Job.objects.select_related("boot").filter(pk=job_id).first()
        return job if job is not None and job.boot_id and job.state == state else None

    return wait_for(done, message=f"job {job_id} linked and {state}")


def test_a_background_submit_reaches_a_php_worker_byte_for_byte(
        tapped: Tap, api_operator: APIClient, tmp_path: Path) -> None:
    raw = bytes(range(256)) * 3  # not UTF-8, has NULs
    with php_worker(tapped, "w-1", ("reverse",), log=tmp_path / "w.log"):
        text = api_operator.post("/api/v1/jobs/", {"function": "reverse",
                                                   "payload": "héllo wörld 4711"},
                                 format="json")
        binary = api_operator.post("/api/v1/jobs/", {
            "function": "reverse", "payload_b64": base64.b64encode(raw).decode(),
            "priority": "high", "unique": "bin-1"}, format="json")
        assert text.status_code == binary.status_code == 201, (text.json(), binary.json())
        first, second = text.json(), binary.json()
        assert first["handle"].startswith("H:") and first["state"] in ("queued", "completed")
        assert first["server"] == tapped.server and first["background"] is True
        a, b = linked(first["id"], "completed"), linked(second["id"], "completed")
    # the worker reversed exactly the bytes submitted (strrev: byte by byte)
    assert a.result == "héllo wörld 4711".encode()[::-1] and a.payload == "héllo wörld 4711"
    assert bytes(b.result_bin or b"") == raw[::-1] and b.payload == raw
    assert (b.priority, b.unique, b.worker) == ("high", "bin-1", "w-1")
    # one row per job, with the id HQ answered with, and the tap's timeline on it
    assert jobs_of(tapped.server).count() == 2
    assert {a.handle, b.handle} == {first["handle"], second["handle"]}
    assert kinds(a) == ["submitted", "started", "completed"]
    assert a.clients == 1  # HQ's submit, seen once
    got = api_operator.get(f"/api/v1/jobs/{first['id']}/").json()
    assert got["state"] == "completed" and got["payload"] == "héllo wörld 4711"
    audit = AuditEntry.objects.filter(action="submit").order_by("id")
    assert [(e.username, e.via, e.target) for e in audit] == [
        ("opal", "api", f"job {first['id']}"), ("opal", "api", f"job {second['id']}")]


def test_a_foreground_submit_waits_for_its_result(tapped: Tap, api_operator: APIClient,
                                                  tmp_path: Path) -> None:
    with php_worker(tapped, "w-1", ("reverse",), log=tmp_path / "w.log"):
        r = api_operator.post("/api/v1/jobs/?wait=20", {"function": "reverse",
                                                        "payload": "abc", "background": False},
                              format="json")
        assert r.status_code == 201, r.json()
        body = r.json()
        assert (body["state"], body["result"], body["background"]) == ("completed", "cba", False)
        job = linked(body["id"], "completed")
    assert job.result == "cba" and job.background is False


def test_a_foreground_submit_nobody_serves_answers_202(tapped: Tap,
                                                       api_operator: APIClient) -> None:
    r = api_operator.post("/api/v1/jobs/?wait=0.3", {"function": "nobody_serves",
                                                     "payload": "x", "background": False},
                          format="json")
    assert r.status_code == 202, r.json()
    assert r.json()["handle"].startswith("H:") and r.json()["result"] is None


def test_a_dead_gearmand_is_skipped_and_none_accepting_is_a_503(
        gearmand: Gearmand, api_operator: APIClient, transactional_db: None) -> None:
    dead = ServerAddress("gm-dead", "127.0.0.1", free_port())
    live = ServerAddress("gm-live", "127.0.0.1", gearmand.port)
    with override_settings(HQ_GEARMAN_SERVERS=[dead, live]):
        handles = []
        for n in range(4):  # whichever server each submit starts at, it lands on the live one
            r = api_operator.post("/api/v1/jobs/", {"function": "f", "payload": str(n)},
                                  format="json")
            assert r.status_code == 201, r.json()
            assert r.json()["server"] == "gm-live"
            handles.append(r.json()["handle"])
        assert len(set(handles)) == 4
    before = Job.objects.count()
    with override_settings(HQ_GEARMAN_SERVERS=[dead]):
        r = api_operator.post("/api/v1/jobs/", {"function": "f", "payload": "x"}, format="json")
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "unavailable"
    assert "No gearmand accepted the job (gm-dead)" in error["message"]
    assert "cannot connect" in error["message"]
    assert Job.objects.count() == before  # nothing claims it was queued
    refused = AuditEntry.objects.get(action="submit", detail__result="refused")
    assert refused.target == "function f" and refused.detail["code"] == "unavailable"


@override_settings(HQ_PAYLOAD_MAX=1000)
def test_payload_size_and_encoding_are_checked(api_operator: APIClient, db: None) -> None:
    def post(body: dict[str, object]) -> tuple[int, dict[str, object]]:
        r = api_operator.post("/api/v1/jobs/", body, format="json")
        return r.status_code, r.json()["error"]

    status, error = post({"function": "f", "payload": "x" * 1001})
    assert (status, error["code"]) == (413, "payload_too_large")
    assert "1,001 bytes" in str(error["message"]) and "1,000" in str(error["message"])
    status, error = post({"function": "f", "payload_b64": "not base64!"})
    assert (status, error["fields"]) == (400, {"payload_b64": ["Not valid base64."]})
    status, error = post({"function": "f", "payload": "a", "payload_b64": "YQ=="})
    assert status == 400 and "not both" in str(error["message"])
    status, error = post({"function": "two words", "payload": "a"})
    assert status == 400 and "white space" in str(error["message"])
    status, error = post({"function": "f", "priority": "urgent"})
    assert status == 400 and "priority" in error["fields"]  # type: ignore[operator]
    r = api_operator.post("/api/v1/jobs/?wait=61", {"function": "f", "background": False},
                          format="json")
    assert r.status_code == 400 and r.json()["error"]["fields"] == {"wait": ["0 to 60."]}
    assert not Job.objects.exists()


def test_viewers_may_not_act_and_only_admins_read_the_audit_log(
        api_viewer: APIClient, api_operator: APIClient, api_admin: APIClient,
        db: None) -> None:
    for path in ("/api/v1/jobs/", "/api/v1/jobs/1/retry/", "/api/v1/jobs/1/cancel/"):
        r = api_viewer.post(path, {"function": "f"}, format="json")
        assert r.status_code == 403, path
        assert r.json()["error"]["code"] == "permission_denied"
    assert api_operator.get("/api/v1/audit/").status_code == 403
    assert api_viewer.get("/api/v1/audit/").status_code == 403
    r = api_admin.get("/api/v1/audit/")
    assert r.status_code == 200 and r.json()["results"] == []
    assert api_admin.get("/api/v1/audit/?after=yesterday").status_code == 400
