"""``GET /metrics``: rows in Postgres and a tap's hash in Redis → Prometheus samples."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.http import HttpResponse
from django.test import RequestFactory
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import Server
from monitoring import histogram, live, metrics, taps
from monitoring.models import QueueSnapshot, Rollup, ServerState

pytestmark = pytest.mark.django_db

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def fresh_rollup_base() -> Iterator[None]:
    """The cached rollup base is per database; each test starts without one."""
    key, client = metrics._base_key(), live.redis_client()
    client.delete(key)
    yield
    client.delete(key)


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


def scrape(**headers: str) -> HttpResponse:
    return metrics.metrics(RequestFactory().get("/metrics", headers=headers))


def samples(response: HttpResponse | None = None) -> Samples:
    response = response or scrape()
    assert response.status_code == 200
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    out: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def test_queue_server_and_rollup_samples(now: datetime) -> None:
    s1 = Server.objects.create(name=f"m-{uuid.uuid4().hex[:6]}")
    s2 = Server.objects.create(name=f"m-{uuid.uuid4().hex[:6]}")
    ServerState.objects.create(server=s1, up=True, polled_at=now)
    ServerState.objects.create(server=s2, up=False, polled_at=now - timedelta(minutes=3))
    QueueSnapshot.objects.bulk_create([
        QueueSnapshot(server=s1, function="resize", at=now - timedelta(seconds=60),
                      total=10, running=2, workers=1),
        QueueSnapshot(server=s1, function="resize", at=now - timedelta(seconds=5),
                      total=7, running=3, workers=2),
        QueueSnapshot(server=s2, function="resize", at=now - timedelta(seconds=5),
                      total=1, running=1, workers=1),
        QueueSnapshot(server=s1, function="gone", at=now - timedelta(hours=2),
                      total=99, running=0, workers=0),
    ])
    Rollup.objects.bulk_create([
        Rollup(server=s1, function="resize", minute=minute(now - timedelta(hours=2)),
               submitted=6, completed=5, failed=1,
               runtime_hist=histogram.from_values([0.5, 3, 3, 100, 2000])),
        Rollup(server=s1, function="resize", minute=minute(now), submitted=3, completed=3,
               runtime_hist=histogram.from_values([10, 10, 70_000])),
        Rollup(server=s2, function="mail", minute=minute(now), submitted=2, failed=2),
    ])

    found = samples()
    a, b = s1.name, s2.name
    assert get(found, "hq_queue_depth", server=a, function="resize") == 4
    assert get(found, "hq_queue_running", server=a, function="resize") == 3
    assert get(found, "hq_queue_workers", server=a, function="resize") == 2
    assert get(found, "hq_queue_depth", server=b, function="resize") == 0
    assert get(found, "hq_queue_depth", server=a, function="gone") is None  # stale
    assert get(found, "hq_server_up", server=a) == 1
    assert get(found, "hq_server_up", server=b) == 0
    assert get(found, "hq_server_last_poll_timestamp_seconds", server=a) == \
        pytest.approx(now.timestamp())

    assert get(found, "hq_jobs_submitted_total", server=a, function="resize") == 9
    assert get(found, "hq_jobs_completed_total", server=a, function="resize") == 8
    assert get(found, "hq_jobs_failed_total", server=a, function="resize") == 1
    assert get(found, "hq_jobs_failed_total", server=b, function="mail") == 2

    # 0.5 | 3 3 | 10 10 | 100 | 2000 | 70000 ms, cumulative, in seconds
    expected = {"0.001": 1, "0.004": 3, "0.016": 5, "0.064": 5, "0.256": 6, "1.024": 6,
                "4.096": 7, "16.384": 7, "65.536": 7, "262.144": 8, "+Inf": 8}
    buckets = {dict(labels)["le"]: value for (name, labels), value in found.items()
               if name == "hq_job_runtime_seconds_bucket" and dict(labels)["server"] == a}
    assert {le: buckets[le] for le in expected} == expected
    assert len(buckets) == len(metrics.LE_INDEXES) + 1
    assert get(found, "hq_job_runtime_seconds_count", server=a, function="resize") == 8
    total = get(found, "hq_job_runtime_seconds_sum", server=a, function="resize")
    assert total == pytest.approx((0.5 + 3 + 3 + 10 + 10 + 100 + 2000 + 70_000) / 1000,
                                  rel=0.2)
    assert get(found, "hq_scrape_error", source="rollups") == 0


def test_counters_only_grow_as_minutes_settle_and_rollups_expire(
        now: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server.objects.create(name=f"m-{uuid.uuid4().hex[:6]}")
    old = Rollup.objects.create(server=server, function="f", minute=minute(now) - timedelta(
        hours=3), completed=4, runtime_hist=histogram.from_values([5, 5, 5, 5]))
    Rollup.objects.create(server=server, function="f", minute=minute(now), completed=1,
                          runtime_hist=histogram.from_values([5]))

    def completed_and_count() -> tuple[float | None, float | None]:
        found = samples()
        return (get(found, "hq_jobs_completed_total", server=server.name, function="f"),
                get(found, "hq_job_runtime_seconds_count", server=server.name, function="f"))

    assert completed_and_count() == (5, 5)
    later = now + timedelta(minutes=30)  # the current minute settles into the cached base
    monkeypatch.setattr(metrics, "_now", lambda: later)
    assert completed_and_count() == (5, 5)
    Rollup.objects.create(server=server, function="f", minute=minute(later), completed=2)
    assert completed_and_count() == (7, 5)
    old.delete()  # retention: the counter must not go down
    assert completed_and_count() == (7, 5)


def test_tap_stats_from_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    tap = f"tap-{uuid.uuid4().hex[:6]}"
    taps.tap_stats_to_redis(tap, {
        "source": {"kernel_drops": 3, "gaps": 9, "segments": 100},
        "tap": {"decode_errors": 2, "gaps": 7, "bytes": 1000},
        "tracker": {"events": 1234},
        "writer": {"events_written": 1200, "spool_batches": 1, "lag_ms": 250, "queued": 34,
                   "db_errors": 5},
    })
    proxy_tap = f"tap-{uuid.uuid4().hex[:6]}"  # proxy mode: no kernel drops
    taps.tap_stats_to_redis(proxy_tap, {"tap": {"gaps": 0}, "tracker": {"events": 1}})
    try:
        found = samples()
        assert get(found, "hq_tap_events_total", server=tap) == 1234
        assert get(found, "hq_tap_events_written_total", server=tap) == 1200
        assert get(found, "hq_tap_kernel_drops_total", server=tap) == 3
        assert get(found, "hq_tap_resync_gaps_total", server=tap) == 7
        assert get(found, "hq_tap_decode_errors_total", server=tap) == 2
        assert get(found, "hq_tap_db_errors_total", server=tap) == 5
        assert get(found, "hq_tap_spool_batches", server=tap) == 1
        assert get(found, "hq_tap_queued_events", server=tap) == 34
        assert get(found, "hq_tap_ingest_lag_seconds", server=tap) == 0.25
        assert 0 <= get(found, "hq_tap_stats_age_seconds", server=tap) < 60  # type: ignore[operator]
        assert get(found, "hq_tap_events_total", server=proxy_tap) == 1
        assert get(found, "hq_tap_kernel_drops_total", server=proxy_tap) is None
        assert get(found, "hq_scrape_error", source="taps") == 0
    finally:
        live.redis_client().delete(taps.TAP_KEY.format(server=tap),
                                   taps.TAP_KEY.format(server=proxy_tap))


def test_redis_down_hides_only_the_tap_metrics(now: datetime,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server.objects.create(name=f"m-{uuid.uuid4().hex[:6]}")
    QueueSnapshot.objects.create(server=server, function="f", at=now, total=5, running=0,
                                 workers=0)
    Rollup.objects.create(server=server, function="f", minute=minute(now), completed=1)
    nobody_listens = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    monkeypatch.setattr(live, "redis_client", lambda: nobody_listens)
    found = samples()
    assert get(found, "hq_scrape_error", source="taps") == 1
    assert get(found, "hq_scrape_error", source="queues") == 0
    assert get(found, "hq_queue_depth", server=server.name, function="f") == 5
    assert get(found, "hq_jobs_completed_total", server=server.name, function="f") == 1


def test_token_required_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scrape().status_code == 200
    monkeypatch.setenv("HQ_METRICS_TOKEN", "s3cret-metrics")
    assert scrape().status_code == 401
    assert scrape().headers["WWW-Authenticate"].startswith("Bearer")
    assert scrape(Authorization="Bearer wrong").status_code == 401
    assert scrape(Authorization="s3cret-metrics").status_code == 401
    assert samples(scrape(Authorization="Bearer s3cret-metrics"))
    assert metrics.metrics(RequestFactory().post("/metrics")).status_code == 405
