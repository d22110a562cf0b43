"""Fixtures that start real things: gearmand on a free port, and HQ's tap (capture or
proxy) as the same management command an operator runs, writing to the test database.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@dataclass
class Gearmand:
    port: int
    proc: subprocess.Popen
    log: Path

    def restart(self) -> None:
        stop_process(self.proc)
        self.proc = _spawn_gearmand(self.port, self.log, self.extra)

    extra: tuple[str, ...] = ()


def _spawn_gearmand(port: int, log: Path, extra: tuple[str, ...]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [GEARMAND, "--listen=127.0.0.1", f"--port={port}", f"--log-file={log}",
         "--verbose=WARNING", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_port(port)
    return proc


@pytest.fixture
def gearmand_factory(tmp_path: Path) -> Iterator[Callable[..., Gearmand]]:
    started: list[Gearmand] = []

    def start(*extra: str) -> Gearmand:
        port = free_port()
        log = tmp_path / f"gearmand-{port}.log"
        g = Gearmand(port, _spawn_gearmand(port, log, extra), log, extra)
        started.append(g)
        return g

    yield start
    for g in started:
        stop_process(g.proc)


@pytest.fixture
def gearmand(gearmand_factory: Callable[..., Gearmand]) -> Gearmand:
    return gearmand_factory()


def _test_database_url() -> str:
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


def start_tap(mode: str, gearmand: Gearmand, tmp_path: Path, *, server: str = "") -> Tap:
    server = server or f"t-{uuid.uuid4().hex[:8]}"
    log = tmp_path / f"tap-{server}.log"
    env = dict(os.environ, DATABASE_URL=_test_database_url(),
               HQ_SPOOL_DIR=str(tmp_path / "spool"), HQ_INGEST_FLUSH_MS="50", HQ_POLL_INTERVAL="1",
               PYTHONUNBUFFERED="1")
    manage = [sys.executable, str(ROOT / "manage.py")]
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
        if mode == "proxy":
            try:
                wait_port(port, timeout=0.2)
                return tap
            except TimeoutError:
                pass
        time.sleep(0.05)
    stop_process(proc)
    raise TimeoutError(f"{mode} tap not ready after 30 s:\n{log.read_text()}")


@pytest.fixture(params=["capture", "proxy"])
def tap(request: pytest.FixtureRequest, gearmand: Gearmand, tmp_path: Path,
        transactional_db: None) -> Iterator[Tap]:
    """gearmand watched by HQ, once in capture mode and once in proxy mode."""
    t = start_tap(request.param, gearmand, tmp_path)
    yield t
    t.stop()


def wait_for(predicate: Callable[[], object], timeout: float = 20.0,
             message: str = "condition") -> object:
    """Poll until ``predicate()`` is truthy; returns its value. Never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(0.05)


def jobs_of(server: str):  # type: ignore[no-untyped-def]
    from jobs.models import Job

    return Job.objects.filter(server__name=server).order_by("id")


def wait_jobs(server: str, count: int, *, state: str | None = None, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Wait until ``count`` jobs of ``server`` exist (in ``state``, when given)."""
    def ready():  # type: ignore[no-untyped-def]
        qs = jobs_of(server)
        if state:
            qs = qs.filter(state=state)
        rows = list(qs)
        return rows if len(rows) >= count else None

    return wait_for(ready, timeout, f"{count} jobs of {server} in state {state or 'any'}")


def make_user(username: str, role: object, password: str):  # type: ignore[no-untyped-def]
    """A user who can sign in with ``password``: with ``role`` (a hq.models.Role), or with
    none at all when ``role`` is None."""
    from django.contrib.auth import get_user_model

    from hq.services import ensure_user

    if role is None:
        user = get_user_model().objects.create_user(username)
    else:
        user = ensure_user(username, role)  # type: ignore[arg-type]
    user.set_password(password)
    user.save()
    return user


@pytest.fixture(autouse=True, scope="session")
def _artifacts_dir() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
