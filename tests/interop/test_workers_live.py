"""Workers listed from the traffic itself (issue 13, "Workers, live").

A PHP or Perl worker (libgearman / Gearman::Worker, not HQ's client) connects through a tap
whose admin poll is far too slow to see it (``HQ_POLL_INTERVAL=600``: no poll happens during
the test), runs 40 jobs of 100 ms and leaves. Its Worker row must appear with its functions
while it runs and be gone after it left: both come from its CAN_DOs and its disconnect as
the tap saw them, and the live stream announces both. The time each took is printed, not
asserted (``-s`` shows it).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.models import Job
from monitoring.models import Worker
from monitoring.services import WIRE_FD
from tests.interop.php_scripts import WORKER as PHP_WORKER
from tests.support.gearman_cli import start_worker, stop_worker, submit_bg
from tests.support.stack import Gearmand, Tap, start_tap, stop_process, wait_for

pytestmark = [pytest.mark.gearmand, pytest.mark.django_db(transaction=True)]

PERL_WORKER = Path(__file__).resolve().parent / "perl" / "worker.pl"
REDIS_DB = 12
JOBS = 40


@pytest.fixture(params=["capture", "proxy"])
def slow_poll_tap(request: pytest.FixtureRequest, gearmand: Gearmand,
                  tmp_path: Path) -> Iterator[Tap]:
    t = start_tap(request.param, gearmand, tmp_path,
                  overrides={"HQ_POLL_INTERVAL": "600",
                             "REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}"})
    yield t
    t.stop()


class LiveWorkerMessages:
    """Every ``worker`` message the tap publishes on the live stream's Redis channel (what
    each web process fans out to its websockets)."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.messages: list[dict[str, Any]] = []
        self.last_at = time.monotonic()  # when the latest one arrived
        self._pubsub = redis.Redis(db=REDIS_DB).pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(f"hq:live:{REDIS_DB}:live")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.1)
            if msg is not None:
                body = json.loads(msg["data"])
                if body.get("type") == "worker" and body.get("server") == self.server:
                    self.messages.append(body)
                    self.last_at = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()

    def about(self, function: str) -> int:
        return sum(1 for m in self.messages if function in (m.get("functions") or ()))

    def settled(self) -> bool:
        """No message for twice the publishing interval (HQ_LIVE_INTERVAL_MS, 500 ms): the
        changes so far are all published (changes within one interval share a message)."""
        return time.monotonic() - self.last_at > 1.0


def _rows(server: str) -> list[Worker]:
    return list(Worker.objects.filter(server__name=server))


def _completed(server: str, function: str) -> int:
    return Job.objects.filter(server__name=server, function=function,
                              state="completed").count()


def _watch_a_worker_come_and_go(tap: Tap, cmd: list[str], function: str, client_id: str,
                                functions: list[str]) -> None:
    for i in range(JOBS):
        submit_bg(tap.port, function, "100" if function == "slow" else f"job {i}")
    live = LiveWorkerMessages(tap.server)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rows = wait_for(lambda: [r for r in _rows(tap.server) if r.functions], timeout=30,
                        message="the worker listed")
        listed_s = time.monotonic() - started
        done_when_listed = _completed(tap.server, function)
        assert len(rows) == 1
        row = rows[0]
        assert row.client_id == client_id and sorted(row.functions) == functions
        assert row.address.startswith("127.0.0.1:")  # its own connection, port included
        wait_for(lambda: _completed(tap.server, function) == JOBS, timeout=60,
                 message=f"{JOBS} jobs completed")
        assert _rows(tap.server), "the worker is still listed while connected"
        assert Job.objects.filter(server__name=tap.server, function=function,
                                  worker=client_id).count() == JOBS
        wait_for(lambda: live.about(function) >= 1 and live.settled(), timeout=10,
                 message="a live worker message for its arrival")
        announced = live.about(function)
    finally:
        stop_process(proc)
    left = time.monotonic()
    wait_for(lambda: not _rows(tap.server), timeout=30, message="the worker gone")
    gone_s = time.monotonic() - left
    try:
        wait_for(lambda: live.about(function) > announced, timeout=10,
                 message="a live worker message for its departure")
    finally:
        live.close()
    print(f"\n{tap.mode}: listed {listed_s:.2f} s after start ({done_when_listed} of {JOBS} "
          f"jobs done then), gone {gone_s:.2f} s after it was stopped")
    if function == "slow":  # 40 x 100 ms: it ran for 4 s at least
        assert done_when_listed < JOBS, "listed only after it had done all its work"


def test_php_worker_listed_while_it_runs_and_gone_when_it_leaves(slow_poll_tap: Tap) -> None:
    tap = slow_poll_tap
    _watch_a_worker_come_and_go(
        tap, ["php", str(PHP_WORKER), str(tap.port), "php-live", "slow"], "slow", "php-live",
        ["slow"])


def test_perl_worker_listed_with_all_its_functions(slow_poll_tap: Tap) -> None:
    tap = slow_poll_tap
    _watch_a_worker_come_and_go(
        tap, ["perl", str(PERL_WORKER), str(tap.port), "perl-live"], "perl_reverse",
        "perl-live", ["perl_die", "perl_reverse", "perl_status", "perl_undef"])


def test_the_poll_reconciles_traffic_rows_without_doubling_them(tap: Tap) -> None:
    """With the usual 1 s poll: the PHP worker (client id) and a ``gearman -w`` worker (no
    client id, listed by gearmand as ``-``) each keep one row, the traffic's, which each poll
    of gearmand's list confirms (its ``last_seen`` moves to the list's time)."""
    php = subprocess.Popen(["php", str(PHP_WORKER), str(tap.port), "php-poll", "reverse"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cli = start_worker(tap.port, ("cli_a", "cli_b"), "cat")
    try:
        def confirmed() -> list[Worker] | None:
            rows = _rows(tap.server)
            ok = len(rows) >= 2 and all(r.last_seen > r.connected_at for r in rows)
            return rows if ok else None

        rows = wait_for(confirmed, timeout=30, message="both rows confirmed by a poll")
        assert sorted((r.fd, r.client_id, sorted(r.functions)) for r in rows) == [
            (WIRE_FD, "", ["cli_a", "cli_b"]), (WIRE_FD, "php-poll", ["reverse"])]
    finally:
        stop_process(php)
        stop_worker(cli)
    wait_for(lambda: not _rows(tap.server), timeout=30, message="both gone")


def test_a_capture_restarted_under_a_worker_still_sees_it_leave(gearmand: Gearmand,
                                                               tmp_path: Path) -> None:
    """The worker registered under a first capture; a second one joins its connection
    mid-stream (no CAN_DO to see) and still ends its row when it disconnects."""
    overrides = {"HQ_POLL_INTERVAL": "600"}
    first = start_tap("capture", gearmand, tmp_path, overrides=overrides)
    proc = subprocess.Popen(["php", str(PHP_WORKER), str(first.port), "php-stay", "reverse"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            wait_for(lambda: _rows(first.server), timeout=30, message="the worker listed")
        finally:
            first.stop()
        second = start_tap("capture", gearmand, tmp_path, server=first.server,
                           overrides=overrides)
        try:
            submit_bg(second.port, "reverse", "abc")  # traffic on its connection after the join
            wait_for(lambda: _completed(second.server, "reverse") == 1, timeout=30,
                     message="a job done under the second capture")
            assert _rows(second.server)
            stop_process(proc)
            wait_for(lambda: not _rows(second.server), timeout=30,
                     message="the worker gone, seen by the second capture")
        finally:
            second.stop()
    finally:
        stop_process(proc)
