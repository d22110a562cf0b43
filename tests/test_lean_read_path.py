"""The hot endpoints' lean read path writes what DRF wrote, byte for byte (hq/renderers.py,
jobs/serializers.py), and the values many clients share are computed once
(hq/shared_cache.py, monitoring.selectors.shared_*)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import pickle
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from django.test import override_settings
from rest_framework.renderers import JSONRenderer

from hq import shared_cache
from hq.renderers import FastJSONRenderer
from jobs.models import Boot, Job, Server
from jobs.serializers import JOB_COLUMNS, JOB_RELATED, JobSerializer, job_values

if TYPE_CHECKING:
    from rest_framework.test import APIClient

UTC = dt.UTC
TRICKY: dict[str, Any] = {
    "times": [dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
              dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
              dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
              dt.date(2026, 1, 2), dt.timedelta(seconds=90)],
    "text": ["plain", "é ü 日本", "line\u2028break\u2029para", "quote \" \\ \n\t", ""],
    "numbers": [0, -1, 2**53, 1.5, 0.001, 123456789.125, decimal.Decimal("1.10")],
    "other": [None, True, False, uuid.UUID(int=7), {"nested": {"1": [1, {"a": None}]}}],
    7: "an int key",
}


def test_the_fast_renderer_writes_drfs_bytes() -> None:
    fast, drf = FastJSONRenderer(), JSONRenderer()
    assert fast.render(TRICKY) == drf.render(TRICKY)
    assert fast.render(None) == drf.render(None) == b""
    indented = "application/json; indent=2"
    assert fast.render(TRICKY, indented, {}) == drf.render(TRICKY, indented, {})
    huge = {"n": 2**70}  # orjson refuses it; DRF's renderer writes it
    assert fast.render(huge) == drf.render(huge)
    # the one difference: an exponent is written 1e-07 by Python, 1e-7 by orjson
    tiny = {"rate": 1e-7, "big": 1.5e300}
    assert json.loads(fast.render(tiny)) == json.loads(drf.render(tiny)) == tiny


@pytest.fixture
def jobs(db: None) -> list[Job]:
    server = Server.objects.create(name="s1", address="127.0.0.1:4730")
    boot = Boot.objects.create(server=server, token="4242", first_seen=dt.datetime.now(UTC))
    now = dt.datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
    common = {"server": server, "boot": boot, "state": "running", "updated_at": now,
              "submitted_at": now}
    return [
        Job.objects.create(handle="H:t:1", function="text", payload_text="hello é",
                           payload_size=40, result_text="ok", result_size=2,
                           progress_numerator=3, progress_denominator=10, priority="high",
                           background=True, **common),
        Job.objects.create(handle="H:t:2", function="bin", payload_bin=b"\x00\xff",
                           payload_size=2, progress_numerator=None, progress_denominator=0,
                           background=None, started_at=now, wait_ms=5, **common),
        Job.objects.create(handle="H:t:3", function="secret_x", payload_text="card",
                           payload_size=4, error="boom", clients=2, **common),
    ]


def _contract_fields() -> list[str]:
    return list(JobSerializer.Meta.fields)


@override_settings(HQ_REDACT=["secret_*"])
def test_a_job_row_and_a_job_instance_make_the_same_json(jobs: list[Job]) -> None:
    rows = {r["id"]: r for r in Job.objects.values(*JOB_COLUMNS, **JOB_RELATED)}
    for job in jobs:
        from_instance = JobSerializer(Job.objects.get(pk=job.pk)).data
        from_row = JobSerializer(rows[job.pk]).data
        assert from_instance == from_row
        assert list(from_row) == _contract_fields()
        assert job_values(job)["server_name"] == "s1"
    by_handle = {j["handle"]: j for j in (JobSerializer(r).data for r in rows.values())}
    assert by_handle["H:t:1"]["progress"] == {"numerator": 3, "denominator": 10}
    assert by_handle["H:t:1"]["payload_truncated"] is True
    assert by_handle["H:t:1"]["submitted_at"] == "2026-03-01T12:00:00.250000Z"
    assert (by_handle["H:t:2"]["payload"], by_handle["H:t:2"]["payload_encoding"]) == (
        "AP8=", "base64")
    assert by_handle["H:t:2"]["progress"] is None and by_handle["H:t:2"]["priority"] is None
    assert by_handle["H:t:3"]["payload"] is None and by_handle["H:t:3"]["payload_redacted"]


@override_settings(HQ_VIEWERS_SEE_PAYLOADS=False)
def test_the_list_hides_payloads_from_viewers_when_told(jobs: list[Job],
                                                        api_viewer: APIClient,
                                                        api_operator: APIClient) -> None:
    seen = api_viewer.get("/api/v1/jobs/?function=text").json()["results"][0]
    assert seen["payload"] is None and seen["payload_hidden"] is True
    seen = api_operator.get("/api/v1/jobs/?function=text").json()["results"][0]
    assert seen["payload"] == "hello é" and seen["payload_hidden"] is False


# ---------------------------------------------------------------- shared values


@pytest.fixture
def key() -> str:
    return f"test-{uuid.uuid4().hex}"


@override_settings(HQ_SHARED_CACHE_S=60)
def test_a_shared_value_is_computed_once(key: str) -> None:
    calls: list[int] = []

    def compute() -> list[int]:
        calls.append(1)
        return [len(calls)]

    assert [shared_cache.shared(key, compute) for _ in range(5)] == [[1]] * 5
    assert len(calls) == 1


@override_settings(HQ_SHARED_CACHE_S=0)
def test_zero_computes_every_time(key: str) -> None:
    calls: list[int] = []
    for _ in range(3):
        shared_cache.shared(key, lambda: calls.append(1))
    assert len(calls) == 3


@override_settings(HQ_SHARED_CACHE_S=60)
def test_while_one_request_computes_the_others_get_the_previous_value(key: str) -> None:
    stored = shared_cache.redis_key(f"shared:{key}")
    shared_cache.client().set(stored, pickle.dumps((time.time() - 1, "previous")), ex=60)
    assert shared_cache.client().set(f"{stored}:lock", 1, nx=True, ex=30)  # one computes
    try:
        assert shared_cache.shared(key, lambda: "new") == "previous"  # expired, but served
    finally:
        shared_cache.client().delete(f"{stored}:lock")
    assert shared_cache.shared(key, lambda: "new") == "new"


@override_settings(HQ_SHARED_CACHE_S=60)
def test_with_nothing_to_show_the_others_wait_for_the_one_computing(key: str) -> None:
    started, results = threading.Event(), []

    def slow() -> str:
        started.set()
        time.sleep(0.5)
        return "computed once"

    def other() -> None:
        results.append(shared_cache.shared(key, lambda: "computed twice"))

    first = threading.Thread(target=lambda: results.append(shared_cache.shared(key, slow)))
    first.start()
    assert started.wait(5)
    others = [threading.Thread(target=other) for _ in range(3)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(10)
    assert results == ["computed once"] * 4


@pytest.mark.django_db
@override_settings(HQ_SHARED_CACHE_S=60)
def test_the_queue_list_is_shared_and_keeps_its_shape(world: dict[str, object],
                                                      api_viewer: APIClient) -> None:
    shared_cache.client().delete(*(shared_cache.redis_key(f"shared:{name}")
                                   for name in ("queues", "workers")))
    first = api_viewer.get("/api/v1/queues/").json()["results"]
    assert first and all("sparkline" not in row for row in first)
    Server.objects.create(name="zz-new")  # not a queue: the list would not change anyway
    from monitoring.models import QueueSnapshot

    QueueSnapshot.objects.create(server=Server.objects.get(name="zz-new"), function="late",
                                 at=dt.datetime.now(UTC), total=5, running=0, workers=1)
    assert api_viewer.get("/api/v1/queues/").json()["results"] == first  # the shared copy
    with override_settings(HQ_SHARED_CACHE_S=0):
        fresh = api_viewer.get("/api/v1/queues/").json()["results"]
    assert "late" in {row["function"] for row in fresh}
    assert api_viewer.get("/api/v1/workers/").json() == api_viewer.get(
        "/api/v1/workers/").json()
