"""The ``gearman`` command line tool (gearman-tools, on libgearman) as a client and as a
worker against a port (gearmand's own or a proxy tap's)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def gearman(port: int, *args: str, stdin: str | None = None, timeout: float = 20) -> str:
    """One ``gearman`` client run; its stdout. Raises when it exits non-zero."""
    out = subprocess.run(["gearman", "-h", "127.0.0.1", "-p", str(port), *args], input=stdin,
                         capture_output=True, text=True, timeout=timeout, check=True)
    return out.stdout


def submit_bg(port: int, function: str, payload: str) -> None:
    """One background job of ``function``."""
    gearman(port, "-b", "-f", function, payload)


def start_worker(port: int, function: str | tuple[str, ...], *cmd: str,
                 jobs: int | None = None) -> subprocess.Popen:
    """A ``gearman -w`` worker for ``function`` (one or several) that runs ``cmd`` for every
    job, with the job's payload on its stdin; it exits after ``jobs`` jobs when given.

    It runs in its own process group: :func:`stop_worker` ends ``cmd`` with it (e.g. a
    ``sleep`` in the middle of a job)."""
    functions = (function,) if isinstance(function, str) else function
    count = ["-c", str(jobs)] if jobs is not None else []
    flags = [arg for f in functions for arg in ("-f", f)]
    return subprocess.Popen(["gearman", "-h", "127.0.0.1", "-p", str(port), "-w", *count,
                             *flags, "--", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop_worker(proc: subprocess.Popen) -> None:
    """SIGTERM to the worker's process group; SIGKILL if it has not gone after 10 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
