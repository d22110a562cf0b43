"""Alert metrics ``dead_letters`` (per function, in the rule's window) and ``job_of_death``:
a rule fires on the failures the recovery sweep turned into dead letters and resolves when
they are discarded (controlled clock); ``hq_check`` reads both."""

from __future__ import annotations

import io
import uuid
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from alerts import check, metric_values
from alerts.models import Alert
from jobs import services
from jobs.models import Boot, Job, JobEvent, Server
from jobs.recovery import engine, policies
from tests.support.alerting import rule, tick
from tests.support.worlds import add_job

T0 = timezone.now().replace(microsecond=0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def boot(db: None, monkeypatch: pytest.MonkeyPatch) -> Boot:
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    server = Server.objects.create(name="gm-a", address="127.0.0.1:1")
    return Boot.objects.create(server=server, token="1", first_seen=T0)


def failed(boot: Boot, handle: str, function: str, *, deaths: int = 0) -> Job:
    """A background job as the tap records one that failed at T0 (and, when ``deaths``,
    whose workers died holding it first)."""
    job = add_job(boot, handle, function=function, state="failed", finished_at=T0,
                  error="boom", payload_text="p", payload_size=1, recovery="")
    for n in range(deaths):
        JobEvent.objects.create(id=uuid.uuid4(), at=T0, server=boot.server,
                                boot=boot, handle=handle, kind="worker_lost", worker=f"w{n}")
    return job


def test_dead_letters_and_job_of_death_fire_and_resolve(boot: Boot) -> None:
    policies.create(data={"function": "*", "max_attempts": 1}, user=None, via="cli")
    r_dead = rule("dead_letters", ">", 0, function="resize_*", window_seconds=600)
    r_death = rule("job_of_death", ">", 0)
    a = failed(boot, "H:a:1", "resize_image")
    b = failed(boot, "H:a:2", "resize_image")
    c = failed(boot, "H:a:3", "charge", deaths=3)
    assert engine.sweep(now=at(1)).dead == 3
    values = metric_values.alert_metrics({600}, at(2))
    assert values[(boot.server_id, "resize_image")]["dead_letters@600"] == 2
    assert values[(boot.server_id, "charge")]["job_of_death"] == 1
    assert values[(boot.server_id, "resize_image")]["job_of_death"] == 0
    tick(at(2), refresh=False)
    firing = {(al.rule_id, al.function): al.value for al in Alert.objects.filter(state="firing")}
    assert firing == {(r_dead.pk, "resize_image"): 2, (r_death.pk, "charge"): 1}
    # out of the window (the failures are older than 600 s): no dead letters to count
    later = metric_values.alert_metrics({600}, at(700))
    assert not later.get((boot.server_id, "resize_image"), {}).get("dead_letters@600")
    for job in (a, b, c):
        services.discard(job_id=job.pk, user=None, via="cli")
    tick(at(3), refresh=False)
    assert not Alert.objects.filter(state="firing").exists()


def test_hq_check_reads_both(boot: Boot) -> None:
    policies.create(data={"function": "*", "max_attempts": 1}, user=None, via="cli")
    failed(boot, "H:a:1", "resize_image", deaths=4)
    engine.sweep()
    result = check.check("resize_*", "dead_letters", 0, 5, window=600)
    assert result.code == check.WARNING
    assert result.line == ("HQ DEAD_LETTERS WARNING - resize_image dead_letters is 1 "
                           "| dead_letters=1;0;5")
    assert check.check("*", "job_of_death", 0, 0).code == check.CRITICAL
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("hq_check", "--metric", "job_of_death", "--warning", "0",
                     "--critical", "2", stdout=out)
    assert exit_.value.code == check.WARNING
    assert out.getvalue().startswith("HQ JOB_OF_DEATH WARNING - resize_image job_of_death is 1")

