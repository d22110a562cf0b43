"""PHP clients and workers (pecl gearman 2.x on libgearman) through HQ's tap, both modes.

The scripts live in ``tests/interop/php/`` (run by ``php_scripts.py``): ``worker.php`` (a
GearmanWorker with ``setId``) and ``client.php`` (one GearmanClient call per run, printing
one JSON line).
What libgearman puts on the wire, seen here: OPTION_REQ ``exceptions`` on every connection
(clients and workers), a generated UUID as the unique key of every submit, GRAB_JOB_ALL →
JOB_ASSIGN_UNIQ for workers, and the worker's ``setId`` as SET_CLIENT_ID.

``GearmanClient::doNormal`` in pecl gearman 2.1 runs to completion (it never returns early
with GEARMAN_WORK_STATUS), so ``doStatus`` has nothing to report; the foreground progress
test reads the WORK_STATUS packets through a status callback (addTask + runTasks) and the
background one polls with ``jobStatus``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.interop.php_scripts import php_client, php_worker
from tests.support.stack import Tap, events_of, jobs_of, kinds, wait_for, wait_jobs

pytestmark = pytest.mark.gearmand

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# -- foreground ---------------------------------------------------------------------------


def test_php_foreground_priorities_results_and_worker_id(tap: Tap, tmp_path: Path) -> None:
    with php_worker(tap, "w-1", log=tmp_path / "worker.log"):
        outs = [php_client(tap.port, mode, "reverse", f"{mode} text")
                for mode in ("normal", "high", "low")]
        jobs = wait_jobs(tap.server, 3, state="completed")
    assert outs == [{"mode": m, "rc": "SUCCESS", "result": f"{m} text"[::-1]}
                    for m in ("normal", "high", "low")]
    assert [j.priority for j in jobs] == ["normal", "high", "low"]
    for job, mode in zip(jobs, ("normal", "high", "low"), strict=True):
        assert job.function == "reverse"
        assert job.background is False
        assert job.payload == f"{mode} text"
        assert job.result == f"{mode} text"[::-1]
        assert job.error == ""
        assert job.attempts == 1
        assert job.worker == "w-1"
        assert job.clients == 1
        assert UUID.match(job.unique), job.unique  # libgearman sends a UUID as unique
        assert job.handle.startswith("H:")
        assert job.wait_ms is not None and job.wait_ms >= 0
        assert job.runtime_ms is not None and job.runtime_ms >= 0
        assert job.submitted_at <= job.started_at <= job.finished_at
        assert kinds(job) == ["submitted", "started", "completed"]
        started = events_of(job)[1]
        assert started.worker == "w-1"


def test_php_explicit_unique_is_recorded(tap: Tap) -> None:
    with php_worker(tap):
        out = php_client(tap.port, "normal", "reverse", "abc", unique="order-42")
        (job,) = wait_jobs(tap.server, 1, state="completed")
    assert out["result"] == "cba"
    assert job.unique == "order-42"


def test_php_fail_and_exception(tap: Tap) -> None:
    with php_worker(tap, "w-1"):
        fail = php_client(tap.port, "normal", "fail", "f-1")
        exc = php_client(tap.port, "normal", "exception", "e-1")
        bg_fail = php_client(tap.port, "background", "fail", "f-2")
        bg_exc = php_client(tap.port, "background", "exception", "e-2")
        jobs = wait_jobs(tap.server, 4, state="failed")
    # libgearman asks for OPTION exceptions, so the client is sent WORK_EXCEPTION itself
    assert fail == {"mode": "normal", "rc": "WORK_FAIL", "result": ""}
    assert exc == {"mode": "normal", "rc": "WORK_EXCEPTION", "result": ""}
    assert bg_fail["rc"] == bg_exc["rc"] == "SUCCESS"
    by_payload = {j.payload: j for j in jobs}
    assert set(by_payload) == {"f-1", "e-1", "f-2", "e-2"}
    assert by_payload["f-2"].handle == bg_fail["handle"]
    assert by_payload["e-2"].handle == bg_exc["handle"]
    for payload in ("f-1", "f-2"):
        job = by_payload[payload]
        assert job.function == "fail"
        assert job.background is (payload == "f-2")
        assert job.error and "WORK_FAIL" in job.error
        assert job.result is None
        assert kinds(job) == ["submitted", "started", "failed"]
    for payload in ("e-1", "e-2"):
        job = by_payload[payload]
        assert job.function == "exception"
        assert job.background is (payload == "e-2")
        assert job.error == "bad input"
        # the exception text is the event's data; gearmand relaying it adds no second event
        assert kinds(job) == ["submitted", "started", "exception"]
        assert events_of(job)[-1].data == "bad input"
    for job in jobs:
        assert job.state == "failed"
        assert job.attempts == 1
        assert job.worker == "w-1"
        assert job.finished_at is not None
        assert job.runtime_ms is not None and job.runtime_ms >= 0


def test_php_foreground_progress_reaches_the_timeline(tap: Tap) -> None:
    with php_worker(tap):
        out = php_client(tap.port, "statuscb", "progress", "p-1")
        (job,) = wait_jobs(tap.server, 1, state="completed")
    assert out == {"mode": "statuscb", "rc": "SUCCESS", "result": "progress done",
                   "statuses": [[1, 3], [2, 3], [3, 3]]}
    assert (job.progress_numerator, job.progress_denominator) == (3, 3)
    assert job.result == "progress done"
    assert job.worker == "w-1"
    events = events_of(job)
    assert [e.kind for e in events] == ["submitted", "started", "status", "status", "status",
                                        "completed"]
    statuses = [e for e in events if e.kind == "status"]
    assert [(e.numerator, e.denominator) for e in statuses] == [(1, 3), (2, 3), (3, 3)]


def test_php_background_progress_polled_with_job_status(tap: Tap) -> None:
    with php_worker(tap):
        out = php_client(tap.port, "poll", "progress", "p-2")
        (job,) = wait_jobs(tap.server, 1, state="completed")
    # what jobStatus() reported, de-duplicated: [known, running, numerator, denominator]
    statuses = out["statuses"]
    assert statuses[-1] == [False, False, 0, 0]  # done: gearmand forgot it
    running = [s[2:] for s in statuses if s[0] and s[1]]
    assert running, statuses  # polls may miss some of the three steps, not all of the job
    assert all(s in ([0, 0], [1, 3], [2, 3], [3, 3]) for s in running), statuses
    assert running == sorted(running), statuses
    assert job.handle == out["handle"]
    assert job.background is True and job.priority == "normal"
    assert (job.progress_numerator, job.progress_denominator) == (3, 3)
    assert [(e.numerator, e.denominator) for e in events_of(job) if e.kind == "status"] == [
        (1, 3), (2, 3), (3, 3)]
    assert job.result == "progress done"
    assert job.worker == "w-1"


def test_php_slow_job_runtime(tap: Tap) -> None:
    with php_worker(tap, "w-1", functions=("slow",)):
        out = php_client(tap.port, "normal", "slow", "400")
        (job,) = wait_jobs(tap.server, 1, state="completed")
    assert out["result"] == "slept 400"
    assert job.result == "slept 400"
    assert job.runtime_ms is not None and job.runtime_ms >= 400
    assert job.wait_ms is not None and job.wait_ms >= 0
    assert job.worker == "w-1"


# -- background ---------------------------------------------------------------------------


def test_php_background_priorities_wait_then_run_high_first(tap: Tap) -> None:
    outs = {mode: php_client(tap.port, mode, "reverse", f"bg {mode}")
            for mode in ("background", "highbg", "lowbg")}
    assert all(o["rc"] == "SUCCESS" and o["handle"].startswith("H:") for o in outs.values())
    queued = wait_jobs(tap.server, 3, state="queued")
    handles = {o["handle"]: mode for mode, o in outs.items()}
    assert {j.handle for j in queued} == set(handles)
    expect_priority = {"background": "normal", "highbg": "high", "lowbg": "low"}
    for job in queued:
        mode = handles[job.handle]
        assert job.priority == expect_priority[mode]
        assert job.background is True
        assert job.payload == f"bg {mode}"
        assert job.started_at is None and job.attempts == 0
    with php_worker(tap, "w-1"):
        done = wait_jobs(tap.server, 3, state="completed")
    for job in done:
        mode = handles[job.handle]
        assert job.result == f"bg {mode}"[::-1]
        assert job.worker == "w-1"
        assert job.attempts == 1
        assert job.wait_ms is not None and job.wait_ms >= 0
    # one worker took them in gearmand's priority order: high, normal, low
    assert [j.priority for j in sorted(done, key=lambda j: j.started_at)] == [
        "high", "normal", "low"]


# -- the client sees the same through the tap ---------------------------------------------

FOREGROUND_RUNS = [
    ("normal", "reverse", "same bytes"),
    ("high", "reverse", "high bytes"),
    ("low", "reverse", "low bytes"),
    ("normal", "fail", "x"),
    ("normal", "exception", "y"),
    ("statuscb", "progress", "z"),
]


def test_php_client_sees_what_it_sees_without_the_tap(tap: Tap) -> None:
    """Each client run once through ``tap.port`` and once straight to gearmand: the outputs
    are the same. The worker is connected through the tap, so HQ records every job; in proxy
    mode the direct client bypasses HQ and those jobs are known only from the worker's side
    (no submit: no submitted_at, no priority), in capture mode fully."""
    with php_worker(tap):
        for mode, function, workload in FOREGROUND_RUNS:
            via_tap = php_client(tap.port, mode, function, workload)
            direct = php_client(tap.gearmand.port, mode, function, workload)
            assert via_tap == direct, (mode, function)
        bg_tap = php_client(tap.port, "background", "reverse", "bg")
        bg_direct = php_client(tap.gearmand.port, "background", "reverse", "bg")
        assert bg_tap["rc"] == bg_direct["rc"] == "SUCCESS"
        assert bg_tap["handle"] != bg_direct["handle"]
        # a marker through the tap, after everything else in the one worker's queue
        php_client(tap.port, "normal", "reverse", "marker")
        total = 2 * (len(FOREGROUND_RUNS) + 1) + 1
        wait_for(lambda: jobs_of(tap.server).filter(finished_at__isnull=False).count() >= total,
                 message=f"{total} finished jobs")
    jobs = list(jobs_of(tap.server))
    assert len(jobs) == total
    assert all(j.worker == "w-1" and j.attempts == 1 for j in jobs)
    unsubmitted = [j for j in jobs if j.submitted_at is None]
    if tap.mode == "capture":
        assert unsubmitted == []
    else:
        assert len(unsubmitted) == len(FOREGROUND_RUNS) + 1
        assert bg_direct["handle"] in {j.handle for j in unsubmitted}
        for job in unsubmitted:  # what the worker's packets told: function, payload, result
            assert job.function in {"reverse", "fail", "exception", "progress"}
            assert job.payload in {w for _, _, w in FOREGROUND_RUNS} | {"bg"}
            assert job.priority == "" and job.background is None
    by_function: dict[str, list] = {}
    for job in jobs:
        by_function.setdefault(job.function, []).append(job)
    assert len(by_function["fail"]) == len(by_function["exception"]) == 2
    assert all(j.state == "failed" for j in by_function["fail"] + by_function["exception"])
    assert all(j.error == "bad input" for j in by_function["exception"])
    assert all((j.progress_numerator, j.progress_denominator) == (3, 3)
               for j in by_function["progress"])
    assert sorted(j.result for j in by_function["reverse"]) == sorted(
        [w[::-1] for _, f, w in FOREGROUND_RUNS if f == "reverse"] * 2 + ["gb", "gb", "rekram"])
