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
from tests.interop.php_scripts import WORKER as PHP_WORKER
from tests.support.gearman_cli import submit_bg
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

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()

    def about(self, function: str) -> int:
        return sum(1 for m in self.messages if function in (m.get("functions") or ()))


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
                                  worker=client_id
                                  ).count() == JOBS
    finally:
        stop_process(proc)
    left = time.monotonic()
    wait_for(lambda: not _rows(tap.server), timeout=30, message="the worker gone")
    gone_s = time.monotonic() - left
    try:
        wait_for(lambda: live.about(function) >= 2, timeout=10,
                 message="live worker messages for its arrival and its departure")
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
