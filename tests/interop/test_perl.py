"""Perl's pure-Perl Gearman::Client / Gearman::Worker (libgearman-client-perl 2.004) through
HQ's tap, both modes.

What this implementation puts on the wire (unlike libgearman): no OPTION_REQ, an empty
unique key unless ``uniq`` is given, SUBMIT_JOB / _HIGH / _LOW and their _BG forms; the
worker sends SET_CLIENT_ID before every CAN_DO, asks with GRAB_JOB (9) and is assigned with
JOB_ASSIGN (11, no unique). A function that dies makes the worker send WORK_EXCEPTION (the
error frozen with Storable) and then WORK_FAIL; gearmand finishes the job on the exception,
relays it to a client that did not ask for exceptions as a WORK_FAIL whose body carries a
trailing NUL (which Gearman::Client then fails to match: "unknown handle"), and answers the
worker's WORK_FAIL with ERROR JOB_NOT_FOUND (``worker.pl`` survives that).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import (
    Tap,
    events_of,
    jobs_of,
    kinds,
    stop_process,
    wait_for,
    wait_jobs,
    worker_registered,
)

pytestmark = pytest.mark.gearmand

PERL_DIR = Path(__file__).resolve().parent / "perl"


def perl_client(port: int, mode: str, function: str, arg: str, uniq: str | None = None) -> str:
    args = ["perl", str(PERL_DIR / "client.pl"), str(port), mode, function, arg]
    if uniq is not None:
        args.append(uniq)
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def bg_handle(output: str) -> str:
    """``handle: 127.0.0.1:PORT//H:host:N`` → ``H:host:N``."""
    assert output.startswith("handle: "), output
    return output.split("//", 1)[1]


@contextlib.contextmanager
def perl_worker(tap: Tap, client_id: str = "pw-1") -> Iterator[subprocess.Popen]:
    log = tap.log.parent / f"perl-worker-{client_id}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["perl", str(PERL_DIR / "worker.pl"), str(tap.port), client_id],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for(lambda: proc.poll() is not None
                     or worker_registered(tap.gearmand.port, client_id, "perl_status"),
                     message=f"Perl worker {client_id} registered")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nworker.pl: {log.read_text()}\n"
                                 f"tap: {tap.output()}") from None
        assert proc.poll() is None, f"worker.pl exited: {log.read_text()}"
        yield proc
    finally:
        stop_process(proc)


def test_perl_do_task_priorities(tap: Tap) -> None:
    with perl_worker(tap):
        outs = [perl_client(tap.port, mode, "perl_reverse", f"{mode} arg")
                for mode in ("do", "do_high", "do_low")]
        jobs = wait_jobs(tap.server, 3, state="completed")
    assert outs == [f"result: {f'{m} arg'[::-1]}" for m in ("do", "do_high", "do_low")]
    assert [j.priority for j in jobs] == ["normal", "high", "low"]
    for job, mode in zip(jobs, ("do", "do_high", "do_low"), strict=True):
        assert job.function == "perl_reverse"
        assert job.background is False
        assert job.unique == ""  # Gearman::Client sends no unique unless asked
        assert job.payload == f"{mode} arg"
        assert job.result == f"{mode} arg"[::-1]
        assert job.worker == "pw-1"  # from SET_CLIENT_ID
        assert job.attempts == 1
        assert job.clients == 1
        assert job.runtime_ms is not None and job.runtime_ms >= 0
        assert kinds(job) == ["submitted", "started", "completed"]


def test_perl_uniq_is_recorded(tap: Tap) -> None:
    with perl_worker(tap):
        assert perl_client(tap.port, "do", "perl_reverse", "abc", uniq="perl-key") == \
            "result: cba"
        (job,) = wait_jobs(tap.server, 1, state="completed")
    assert job.unique == "perl-key"


def test_perl_dispatch_background(tap: Tap) -> None:
    outs = {mode: perl_client(tap.port, mode, "perl_reverse", f"{mode} data")
            for mode in ("bg", "bg_high", "bg_low")}
    handles = {bg_handle(out): mode for mode, out in outs.items()}
    queued = wait_jobs(tap.server, 3, state="queued")
    assert {j.handle for j in queued} == set(handles)
    priority = {"bg": "normal", "bg_high": "high", "bg_low": "low"}
    for job in queued:
        assert job.background is True
        assert job.priority == priority[handles[job.handle]]
    with perl_worker(tap):
        done = wait_jobs(tap.server, 3, state="completed")
    for job in done:
        assert job.result == f"{handles[job.handle]} data"[::-1]
        assert job.worker == "pw-1"
        assert job.attempts == 1
    assert [j.priority for j in sorted(done, key=lambda j: j.started_at)] == [
        "high", "normal", "low"]


def test_perl_worker_that_dies_or_returns_undef(tap: Tap) -> None:
    with perl_worker(tap) as worker:
        undef = perl_client(tap.port, "do", "perl_undef", "u-1")
        died = perl_client(tap.port, "do", "perl_die", "d-1")
        bg_died = bg_handle(perl_client(tap.port, "bg", "perl_die", "d-2"))
        jobs = wait_jobs(tap.server, 3, state="failed")
        # and the worker goes on working
        assert perl_client(tap.port, "do", "perl_reverse", "after") == "result: retfa"
        assert worker.poll() is None
    assert undef == "undef"
    assert died.startswith("error: ") and "unknown handle" in died
    by_payload = {j.payload: j for j in jobs}
    undef_job = by_payload["u-1"]
    assert undef_job.error == "the worker reported failure (WORK_FAIL)"
    assert kinds(undef_job) == ["submitted", "started", "failed"]
    assert by_payload["d-2"].handle == bg_died
    for payload in ("d-1", "d-2"):
        job = by_payload[payload]
        assert job.function == "perl_die"
        assert job.background is (payload == "d-2")
        # the WORK_EXCEPTION data is Storable's nfreeze of the error string
        assert f"perl worker died on {payload}" in job.error
        # the worker's WORK_FAIL after its WORK_EXCEPTION is not a second ending
        assert kinds(job) == ["submitted", "started", "exception"]
    for job in jobs:
        assert job.worker == "pw-1"
        assert job.attempts == 1
        assert job.result is None


def test_perl_status_updates(tap: Tap) -> None:
    with perl_worker(tap):
        assert perl_client(tap.port, "do", "perl_status", "s") == "result: ok"
        (job,) = wait_jobs(tap.server, 1, state="completed")
    assert (job.progress_numerator, job.progress_denominator) == (2, 2)
    assert [(e.kind, e.numerator, e.denominator) for e in events_of(job)
            if e.kind == "status"] == [("status", 1, 2), ("status", 2, 2)]
    assert job.result == "ok"


def test_perl_client_sees_what_it_sees_without_the_tap(tap: Tap) -> None:
    runs = [("do", "perl_reverse", "same"), ("do_high", "perl_reverse", "hi"),
            ("do", "perl_undef", "u"), ("do", "perl_die", "d"), ("do", "perl_status", "s")]

    def normal(text: str) -> str:
        return re.sub(r"H:[^:\s]+:\d+", "H:*", text)

    with perl_worker(tap):
        for mode, function, arg in runs:
            via_tap = perl_client(tap.port, mode, function, arg)
            direct = perl_client(tap.gearmand.port, mode, function, arg)
            assert normal(via_tap) == normal(direct), (mode, function)
        total = 2 * len(runs)
        wait_for(lambda: jobs_of(tap.server).filter(finished_at__isnull=False).count() >= total,
                 message=f"{total} finished jobs")
    jobs = list(jobs_of(tap.server))
    assert len(jobs) == total
    # proxy mode: the direct client's jobs are known from the worker's side only
    submitted = [j for j in jobs if j.submitted_at is not None]
    assert len(submitted) == (total if tap.mode == "capture" else len(runs))
