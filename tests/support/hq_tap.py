"""The ``hq-tap`` console script as an operator runs it on a gearmand host: the script the
package installed (beside this interpreter), started outside the checkout with only the
environment a tap needs (no PYTHONPATH, no DJANGO_SETTINGS_MODULE, no HQ_SECRET_KEY),
optionally under another user (``prefix``, e.g. ``setpriv ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.stack import (
    Gearmand,
    Tap,
    database_url,
    free_port,
    stop_process,
    wait_port,
)

HQ_TAP = Path(sys.executable).with_name("hq-tap")
REDIS_URL = os.environ.get("HQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def tap_env(spool: Path, **extra: str) -> dict[str, str]:
    """What a systemd unit would set, and nothing of the test run's own environment."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
            "DATABASE_URL": database_url(), "REDIS_URL": REDIS_URL,
            "HQ_SPOOL_DIR": str(spool), "HQ_INGEST_FLUSH_MS": "50",
            "HQ_POLL_INTERVAL": "1", "HQ_RECONCILE_INTERVAL": "1", "PYTHONUNBUFFERED": "1",
            **extra}


def run_hq_tap(args: Sequence[str], env: dict[str, str], cwd: Path,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``hq-tap ARGS`` to its end (for the ones that must refuse to start)."""
    return subprocess.run([str(HQ_TAP), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def start_hq_tap(mode: str, gearmand: Gearmand, workdir: Path, server: str, *,
                 env: dict[str, str], prefix: Sequence[str] = ()) -> Tap:
    """``hq-tap capture`` (on lo) or ``hq-tap proxy`` in front of ``gearmand``, returned once
    it is ready; the caller stops it (``Tap.stop``)."""
    log = workdir / f"hq-tap-{server}.log"
    if mode == "capture":
        port = gearmand.port
        args = ["capture", "--interface", "lo", "--port", str(port), "--server", server]
    else:
        port = free_port()
        args = ["proxy", "--listen", f"127.0.0.1:{port}",
                "--upstream", f"127.0.0.1:{gearmand.port}", "--server", server]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*prefix, str(HQ_TAP), *args], stdout=out,
                                stderr=subprocess.STDOUT, cwd=workdir, env=env,
                                start_new_session=True)
    tap = Tap(mode, server, port, gearmand, proc, log)
    ready = "HQ capture ready" if mode == "capture" else f"tap for server '{server}'"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hq-tap {mode} exited early ({proc.returncode}):\n"
                               f"{log.read_text()}")
        if ready in log.read_text():
            wait_port(port, timeout=10)
            return tap
        time.sleep(0.05)
    stop_process(proc)
    raise TimeoutError(f"hq-tap {mode} not ready after 30 s:\n{log.read_text()}")
