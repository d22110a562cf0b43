"""Real things a test starts or waits for: gearmand on a free port, HQ's tap (capture or
proxy) as the same management command an operator runs, writing to the test database, and
polling for what the tap wrote.

Tests that read what a tap wrote must use ``transactional_db`` (the tap is another process
and cannot see rows inside the test's transaction).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from jobs.models import Job, JobEvent

ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "manage.py"
GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def spawn_gearmand(port: int, log: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """gearmand on 127.0.0.1:``port``, returned once it accepts connections."""
    proc = subprocess.Popen(
        [GEARMAND, "--listen=127.0.0.1", f"--port={port}", f"--log-file={log}",
         "--verbose=WARNING", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_port(port)
    return proc


@dataclass
class Gearmand:
    port: int
    proc: subprocess.Popen
    log: Path
    extra: tuple[str, ...] = ()

    def stop(self) -> None:
        stop_process(self.proc)

    def start(self) -> None:
        """Start again on the same port with the same options (a new process: a new pid)."""
        self.proc = spawn_gearmand(self.port, self.log, self.extra)

    def restart(self) -> None:
        self.stop()
        self.start()


def database_url() -> str:
    """The URL of the database the tests run against (pytest-django's test database)."""
    from django.db import connection

    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s["PASSWORD"] else ""
    return f"postgres://{s['USER']}{password}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


@dataclass
class Tap:
    mode: str
    server: str
    port: int  # where Gearman clients connect
    gearmand: Gearmand
    proc: subprocess.Popen
    log: Path

    def stop(self) -> str:
        stop_process(self.proc)
        return self.log.read_text()

    def output(self) -> str:
        return self.log.read_text()


def start_tap(mode: str, gearmand: Gearmand, tmp_path: Path, *, server: str = "",
              overrides: dict[str, str] | None = None) -> Tap:
    """``manage.py gearman_capture`` or ``gearman_proxy`` in front of ``gearmand``, returned
    once it is ready; the caller stops it (``Tap.stop``). ``overrides``: more environment."""
    server = server or f"t-{uuid.uuid4().hex[:8]}"
    log = tmp_path / f"tap-{server}.log"
    env = dict(os.environ, DATABASE_URL=database_url(),
               HQ_SPOOL_DIR=str(tmp_path / "spool"), HQ_INGEST_FLUSH_MS="50", HQ_POLL_INTERVAL="1",
               HQ_RECONCILE_INTERVAL="1",
               PYTHONUNBUFFERED="1")
    env.update(overrides or {})
    manage = [sys.executable, str(MANAGE)]
    if mode == "capture":
        port = gearmand.port
        cmd = [*manage, "gearman_capture", "--interface", "lo", "--port", str(port),
               "--server", server]
    else:
        port = free_port()
        cmd = [*manage, "gearman_proxy", "--listen", f"127.0.0.1:{port}",
               "--upstream", f"127.0.0.1:{gearmand.port}", "--server", server]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
    tap = Tap(mode, server, port, gearmand, proc, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{mode} tap exited early:\n{log.read_text()}")
        text = log.read_text()
        if mode == "capture" and "HQ capture ready" in text:
            return tap
        # proxy: listening, and its decoding child (a fresh interpreter that takes a second
        # or two to import Django) has started recording; until then copies wait in the pipe
        if mode == "proxy" and f"tap for server '{server}'" in text:
            try:
                wait_port(port, timeout=0.2)
                return tap
            except TimeoutError:
                pass
        time.sleep(0.05)
    stop_process(proc)
    raise TimeoutError(f"{mode} tap not ready after 30 s:\n{log.read_text()}")


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0,
             message: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; returns its value. Never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(0.05)


def jobs_of(server: str) -> QuerySet[Job]:
    """The jobs HQ recorded for the tap named ``server``, oldest first."""
    from jobs.models import Job

    return Job.objects.filter(server__name=server).order_by("id")


def wait_jobs(server: str, count: int, *, state: str | None = None,
              timeout: float = 20.0) -> list[Job]:
    """Wait until ``count`` jobs of ``server`` exist (in ``state``, when given)."""
    def ready() -> list[Job] | None:
        qs = jobs_of(server)
        if state:
            qs = qs.filter(state=state)
        rows = list(qs)
        return rows if len(rows) >= count else None

    return wait_for(ready, timeout, f"{count} jobs of {server} in state {state or 'any'}")


def events_of(job: Job) -> list[JobEvent]:
    """``job``'s timeline as the job page shows it."""
    from jobs.selectors import job_events

    return list(job_events(job))


def kinds(job: Job) -> list[str]:
    return [e.kind for e in events_of(job)]


def worker_registered(admin_port: int, client_id: str, function: str) -> bool:
    """gearmand (its admin protocol on ``admin_port``) lists a worker with this client id
    that can do ``function``."""
    from broker.admin import AdminClient, AdminError

    try:
        with AdminClient("127.0.0.1", admin_port, timeout=2) as admin:
            return any(w.client_id == client_id and function in w.functions
                       for w in admin.workers())
    except AdminError:
        return False
