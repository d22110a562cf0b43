"""``manage.py hq_dead list|show|requeue|discard`` against dead letters made on the real
stack (PHP client and failing PHP worker, capture tap, recovery sweep); a requeued job is
completed by a working worker (the ``gearman`` CLI's ``cat`` under the same function)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from broker.client import ServerAddress
from hq.models import AuditEntry
from jobs import services
from jobs.models import Job
from jobs.recovery import engine, policies
from tests.interop.php_scripts import php_client, php_worker
from tests.support.gearman_cli import start_worker, stop_worker
from tests.support.stack import Gearmand, Tap, jobs_of, start_tap, wait_for

pytestmark = pytest.mark.gearmand


@pytest.fixture
def tapped(gearmand: Gearmand, tmp_path: Path, transactional_db: None,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Tap]:
    monkeypatch.setattr(engine, "GRACE", timedelta(0))
    tap = start_tap("capture", gearmand, tmp_path)
    with override_settings(HQ_GEARMAN_SERVERS=[ServerAddress(tap.server, "127.0.0.1",
                                                             tap.port)]):
        yield tap
    tap.stop()


def run(*args: str, answer: str | None = None,
        monkeypatch: pytest.MonkeyPatch | None = None) -> str:
    out = io.StringIO()
    if answer is not None and monkeypatch is not None:
        monkeypatch.setattr("builtins.input", lambda prompt="": answer)
    call_command("hq_dead", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def dead_letters(tap: Tap, tmp_path: Path, payloads: list[str]) -> list[Job]:
    policies.create(data={"function": "fail", "max_attempts": 1}, user=None, via="cli")
    with php_worker(tap, "w-1", ("fail",), log=tmp_path / "w.log"):
        for p in payloads:
            php_client(tap.port, "background", "fail", p)
        wait_for(lambda: jobs_of(tap.server).filter(state="failed").count() == len(payloads),
                 message="failures recorded")
    assert engine.sweep().dead == len(payloads)
    return list(Job.objects.filter(dead=True).order_by("id"))


def test_list_show_requeue_and_discard(tapped: Tap, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = dead_letters(tapped, tmp_path, ["alpha", "beta"])
    table = run("list").splitlines()
    assert table[0].split() == ["ID", "HANDLE", "FUNCTION", "ATTEMPTS", "LAST", "ERROR", "AGE"]
    rows = [line.split() for line in table[1:]]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (str(b.pk), b.handle, "fail", "1"), (str(a.pk), a.handle, "fail", "1")]
    assert "WORK_FAIL" in table[1] or "failure" in table[1]
    assert len(run("list", "--limit", "1").splitlines()) == 2
    assert run("list", "--function", "other") == "no dead letters\n"
    assert run("list", "--since", "2999-01-01T00:00:00Z") == "no dead letters\n"
    listed = json.loads(run("list", "--json"))
    assert [(j["id"], j["dead"], j["attempts_in_chain"]) for j in listed] == [
        (b.pk, True, 1), (a.pk, True, 1)]
    shown = run("show", str(a.pk))
    assert f"handle:         {a.handle}" in shown and "payload:        alpha" in shown
    assert "attempts:       1" in shown
    with pytest.raises(CommandError):
        run("show")

    # discard asks first; "n" changes nothing
    out = run("discard", str(a.pk), answer="n", monkeypatch=monkeypatch)
    assert out.splitlines() == [f"discard 1 dead letter(s): {a.pk} (fail)", "nothing done"]
    assert Job.objects.get(pk=a.pk).dead
    out = run("discard", str(a.pk), "--yes")
    assert out.splitlines() == [f"discard 1 dead letter(s): {a.pk} (fail)",
                                f"discarded job {a.pk} (fail)", "discard: 1 of 1 done"]
    a.refresh_from_db()
    assert not a.dead and a.recovery == "discarded" and a.state == "failed"  # in history
    assert AuditEntry.objects.filter(action="discard", via="cli", target=f"job {a.pk}").exists()

    # requeue: a working worker under the same name completes the fresh chain
    worker = start_worker(tapped.port, "fail", "cat")
    try:
        out = run("requeue", "--function", "fail", answer="y", monkeypatch=monkeypatch)
        assert out.splitlines()[0] == f"requeue 1 dead letter(s): {b.pk} (fail)"
        new_id = int(out.splitlines()[1].split()[5])
        assert out.splitlines()[-1] == "requeue: 1 of 1 done"

        def completed() -> Job | None:
            services.link_pending()
            return Job.objects.filter(pk=new_id, state="completed").first()

        done = wait_for(completed, message="the requeued job completed")
    finally:
        stop_worker(worker)
    assert done.retry_of_id == b.pk and done.result == "beta"
    b.refresh_from_db()
    assert not b.dead and b.recovery == "requeued"
    assert run("list") == "no dead letters\n"
    assert engine.sweep().dead == 0
