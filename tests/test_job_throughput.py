"""What makes the scheduler and bulk retries fast, against a real gearmand: pooled submit
connections (``broker.client.SubmitPool``) and batches (``jobs/scheduler.py``,
``jobs/bulk.py``) — without giving up what one job at a time guaranteed.

* a background submit's connection goes back to the pool and the next submit reuses it; a
  foreground submit's does not (its job lives as long as the connection);
* a pooled connection whose gearmand restarted is dropped and a fresh one made: the submit
  succeeds (no 503 for a stale socket); a server that is down is skipped for the next;
* a batch of due jobs is one transaction: every job gets its handle and its own audit row;
* a bulk retry chunk with a job that cannot be retried among good ones: the good ones are
  retried (linked, same bytes, audited), the bad one is counted failed with its reason and
  a refusal audit row, and a second pass over the same jobs makes nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from broker.admin import AdminClient
from broker.client import ServerAddress, SubmitPool, submit_first
from hq.models import AuditEntry
from jobs import bulk, scheduler, services
from jobs.models import Boot, BulkAction, Job, Server
from tests.support.stack import Gearmand, free_port

pytestmark = pytest.mark.gearmand


@pytest.fixture
def gm(gearmand: Gearmand, transactional_db: None) -> Iterator[Gearmand]:
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress("gm-t", "127.0.0.1",
                                                             gearmand.port)]):
        yield gearmand


def held(port: int, function: str) -> int:
    with AdminClient("127.0.0.1", port) as admin:
        return sum(s.total for s in admin.status() if s.function == function)


def test_background_submits_reuse_a_connection_foreground_ones_do_not(
        gearmand: Gearmand) -> None:
    pool = SubmitPool()
    server = ServerAddress("gm-t", "127.0.0.1", gearmand.port)
    first, h1 = submit_first([server], "pooled", b"1", pool=pool)
    first.close()
    second, h2 = submit_first([server], "pooled", b"2", pool=pool)
    assert second is first and h1 != h2
    second.close()
    fg, _ = submit_first([server], "pooled", b"3", background=False, pool=pool)
    assert fg is first  # taken from the pool, but now holds a foreground job
    fg.close()
    fresh, _ = submit_first([server], "pooled", b"4", pool=pool)
    assert fresh is not first  # the foreground one was closed, not pooled
    fresh.close()
    assert held(gearmand.port, "pooled") == 4


def test_a_stale_pooled_connection_is_replaced_and_a_down_server_skipped(
        gearmand: Gearmand) -> None:
    pool = SubmitPool()
    server = ServerAddress("gm-t", "127.0.0.1", gearmand.port)
    conn, _ = submit_first([server], "stale", b"1", pool=pool)
    conn.close()
    gearmand.restart()  # the pooled socket now leads nowhere
    again, handle = submit_first([server], "stale", b"2", pool=pool)
    assert again is not conn and handle.startswith("H:")
    again.close()
    assert held(gearmand.port, "stale") == 1  # the restart emptied it; the new job is there
    down = ServerAddress("gm-down", "127.0.0.1", free_port())
    other, _ = submit_first([down, server], "stale", b"3", pool=pool)
    assert other.server == server
    other.close()
    assert held(gearmand.port, "stale") == 2


def test_a_batch_of_due_jobs_gets_its_handles_and_one_audit_row_each(gm: Gearmand) -> None:
    t0 = timezone.now()
    ids = [services.submit(function="batched", payload=f"p{i}".encode(),
                           run_at=t0 + timedelta(minutes=1), user=None, via="api",
                           now=t0).job.pk for i in range(25)]
    batch = scheduler.submit_batch_due(now=t0 + timedelta(minutes=2), limit=20)
    assert len(batch.jobs) == 20 and not batch.gearmand_down
    rows = Job.objects.filter(pk__in=ids)
    assert rows.filter(state="queued").count() == 20
    assert rows.filter(state="scheduled").count() == 5
    queued = rows.filter(state="queued")
    assert len({j.handle for j in queued}) == 20 and all(j.server.name == "gm-t"
                                                          for j in queued)
    assert all(j.submitted_at is not None for j in queued)
    audits = AuditEntry.objects.filter(action="submit_scheduled")
    assert sorted(audits.values_list("target", flat=True)) == sorted(
        f"job {j.pk}" for j in queued)
    assert held(gm.port, "batched") == 20


def failed_jobs(n: int, **extra: object) -> list[int]:
    server, _ = Server.objects.get_or_create(name="gm-t")
    boot, _ = Boot.objects.get_or_create(server=server, token="1",
                                         defaults={"first_seen": timezone.now()})
    at = timezone.now() - timedelta(minutes=5)
    start = Job.objects.count()
    fields: dict[str, object] = {"payload_size": 2}
    fields.update(extra)
    Job.objects.bulk_create([
        Job(server=server, boot=boot, handle=f"H:t:{start + i}", function="chunked",
            unique=f"u-{start + i}", priority="high", background=True, state="failed",
            submitted_at=at, finished_at=at, updated_at=at,
            **{"payload_text": f"p{i}", **fields})
        for i in range(n)])
    return list(Job.objects.filter(handle__startswith="H:t:").order_by("-id")
                .values_list("id", flat=True)[:n])[::-1]


def test_a_bulk_retry_chunk_retries_the_good_and_refuses_the_bad_once(gm: Gearmand) -> None:
    good = failed_jobs(6)
    (bad,) = failed_jobs(1, payload_text="a" * 2, payload_size=100_000)  # truncated
    action, count = bulk.start(action="retry", filter={"function": "chunked"}, user=None,
                               via="api")
    assert action is not None and count == 7
    assert bulk.advance() == 7
    action.refresh_from_db()
    assert (action.state, action.done, action.failed) == ("done", 6, 1)
    assert action.errors[0]["job"] == bad and "truncated" in action.errors[0]["error"]
    retries = {j.retry_of_id: j for j in Job.objects.filter(retry_of__isnull=False)}
    assert set(retries) == set(good)
    for original in Job.objects.filter(pk__in=good):
        retry = retries[original.pk]
        assert (retry.payload, retry.unique, retry.priority, retry.action_key) == (
            original.payload, original.unique, "high", f"bulk:{action.pk}:{original.pk}")
    ok = AuditEntry.objects.filter(action="retry", detail__result="ok")
    assert sorted(ok.values_list("detail__retry_of", flat=True)) == sorted(good)
    refused = AuditEntry.objects.get(action="retry", detail__result="refused")
    assert refused.target == f"job {bad}" and "truncated" in refused.detail["reason"]
    assert held(gm.port, "chunked") == 6
    # the same chunk again (as after a worker died before its lease ran out): nothing new
    BulkAction.objects.filter(pk=action.pk).update(state="running", cursor=0, done=0,
                                                   failed=0, leased_until=None)
    assert bulk.advance() == 7
    assert Job.objects.filter(retry_of__isnull=False).count() == 6
    assert AuditEntry.objects.filter(action="retry", detail__result="ok").count() == 6
    assert held(gm.port, "chunked") == 6
