"""Running the PHP scripts in ``php/`` (pecl gearman 2.x on libgearman): ``client.php``
makes one GearmanClient call per run and prints one JSON line; ``worker.php`` is a
GearmanWorker with ``setId``."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.stack import Tap, stop_process, wait_for, worker_registered

PHP_DIR = Path(__file__).resolve().parent / "php"
WORKER = PHP_DIR / "worker.php"
CLIENT = PHP_DIR / "client.php"


def php_client(port: int, mode: str, function: str, workload: str = "",
               unique: str | None = None, timeout: float = 60) -> dict:
    """Run ``client.php`` once; returns the JSON it printed."""
    args = ["php", str(CLIENT), str(port), mode, function, workload]
    if unique is not None:
        args.append(unique)
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines, f"client.php printed nothing; stderr: {out.stderr}"
    return json.loads(lines[-1])


def start_php_client(port: int, mode: str, function: str, workload: str = "") -> subprocess.Popen:
    """``client.php`` in the background (for clients that wait on a job a test disturbs)."""
    return subprocess.Popen(["php", str(CLIENT), str(port), mode, function, workload],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_php_worker(port: int, admin_port: int, client_id: str = "w-1",
                     functions: tuple[str, ...] = (), log: Path | None = None) -> subprocess.Popen:
    """Start ``worker.php`` on ``port`` and wait until gearmand (``admin_port``) lists it."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(["php", str(WORKER), str(port), client_id, *functions],
                            stdout=out, stderr=subprocess.STDOUT)
    if log:
        out.close()  # type: ignore[union-attr]
    try:
        wait_for(lambda: proc.poll() is not None
                 or worker_registered(admin_port, client_id, (functions or ("reverse",))[0]),
                 message=f"PHP worker {client_id} registered")
        assert proc.poll() is None, f"PHP worker {client_id} exited: {proc.returncode}"
    except BaseException:
        stop_process(proc)
        raise
    return proc


@contextlib.contextmanager
def php_worker(tap: Tap, client_id: str = "w-1", functions: tuple[str, ...] = (),
               log: Path | None = None) -> Iterator[subprocess.Popen]:
    """``worker.php`` connected through ``tap`` for the ``with`` block."""
    proc = start_php_worker(tap.port, tap.gearmand.port, client_id, functions, log)
    try:
        yield proc
    finally:
        stop_process(proc)
