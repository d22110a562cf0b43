"""HQ_RETRY_MAX_PER_S: a retry storm is impossible. Policy retries are held for a second
only while that second has fewer than the cap; the excess is delayed, never dropped."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from hq.models import AuditEntry
from jobs.models import Boot, Job, Server
from jobs.recovery import engine, policies

T0 = timezone.now().replace(microsecond=0)


@pytest.fixture
def boot(db: None, monkeypatch: pytest.MonkeyPatch) -> Boot:
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    server = Server.objects.create(name="gm-cap", address="127.0.0.1:1")
    return Boot.objects.create(server=server, token="1", first_seen=T0)


def test_the_retry_rate_cap_holds_with_1000_failures_at_once(
        boot: Boot, settings: object) -> None:
    """HQ_RETRY_MAX_PER_S (100 here): 1,000 failures due for a retry in the same second are
    spread over 10 seconds, none dropped; the delay the cap added is audited."""
    settings.HQ_RETRY_MAX_PER_S = 100  # type: ignore[attr-defined]
    policies.create(data={"function": "*", "max_attempts": 2, "backoff_base_s": 5,
                          "backoff_max_s": 5}, user=None, via="cli")
    Job.objects.bulk_create([
        Job(server=boot.server, boot=boot, handle=f"H:a:{i}", function="resize_image",
            state="failed", background=True, finished_at=T0, updated_at=T0,
            payload_text=str(i), payload_size=len(str(i)), recovery="")
        for i in range(1000)])
    out = engine.sweep(now=T0, max_jobs=5000, max_s=600)
    assert out.retried == 1000
    held = Job.objects.filter(action_key__startswith="policy:", state="scheduled")
    per_second: dict[int, int] = {}
    for when in held.values_list("scheduled_for", flat=True):
        second = int((when - T0).total_seconds())
        per_second[second] = per_second.get(second, 0) + 1
    assert held.count() == 1000
    assert max(per_second.values()) == 100
    assert sorted(per_second) == list(range(5, 15))  # due at +5 s, spread to +14 s
    assert AuditEntry.objects.filter(action="retry_scheduled",
                                     detail__held_by_cap_s__gte=9).count() == 100
