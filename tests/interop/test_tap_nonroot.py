"""The tap as the systemd unit runs it (deploy/hq-tap@.service): ``hq-tap capture`` as an
unprivileged user whose only privilege is CAP_NET_RAW, inherited as an ambient capability
(what ``AmbientCapabilities=CAP_NET_RAW`` gives), so tcpdump, started by the tap, holds it too
without file capabilities on the binary. Jobs are recorded; without the capability the same
user is refused with a clear message. Skipped (with the reason) where the machine cannot
switch users or set ambient capabilities."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gearman_cli import gearman, start_worker, stop_worker
from tests.support.hq_tap import HQ_TAP, start_hq_tap, tap_env
from tests.support.stack import Gearmand, wait_jobs

pytestmark = pytest.mark.gearmand

NOBODY = 65534
CAP_NET_RAW = 13
#: Gives the user a way to the interpreter when it lies under a directory only root may
#: enter (a pyenv Python under /root here): in a private mount namespace, that directory is
#: covered by an empty tmpfs with only the interpreter's tree mounted back (nothing changes
#: outside the tap's own namespace).
REVEAL = ('set -e; stage=$1 hidden=$2 keep=$3; shift 3; mkdir -p "$stage"; '
          'mount --bind "$keep" "$stage"; mount -t tmpfs -o mode=0755,size=1m tmpfs "$hidden"; '
          'mkdir -p "$keep"; mount --move "$stage" "$keep"; exec "$@"')


def closed_dir() -> tuple[Path, Path] | None:
    """(the directory others may not enter, its child towards the interpreter), or None."""
    parts = Path(os.path.realpath(sys.executable)).parts
    for i in range(1, len(parts) - 1):
        if not Path(*parts[: i + 1]).stat().st_mode & 0o001:
            return Path(*parts[: i + 1]), Path(*parts[: i + 2])
    return None


def as_nobody(workdir: Path, *, net_raw: bool) -> list[str]:
    """The command prefix that runs a program as ``nobody`` with, as its only privilege,
    CAP_NET_RAW in its ambient set (what systemd's AmbientCapabilities= does) or nothing."""
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if net_raw:  # as deploy/hq-tap@.service: ambient, bounding set, no new privileges
        prefix += ["--inh-caps=+net_raw", "--ambient-caps=+net_raw",
                   "--bounding-set=-all,+net_raw", "--no-new-privs"]
    if closed := closed_dir():
        hidden, keep = closed
        prefix = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", REVEAL,
                  "sh", str(workdir / "stage"), str(hidden), str(keep), *prefix]
    return [*prefix, "--"]


def why_not(workdir: Path) -> str | None:
    """Why this machine cannot run the test (None when it can)."""
    if os.geteuid() != 0:
        return f"switching to an unprivileged user needs root; this run is uid {os.geteuid()}"
    for tool in ("setpriv", "tcpdump", *(["unshare"] if closed_dir() else [])):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run([*as_nobody(workdir, net_raw=True), str(HQ_TAP), "capture",
                            "--help"], env={"PATH": os.environ["PATH"]}, cwd=workdir,
                           capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        return (f"uid {NOBODY} with an ambient CAP_NET_RAW cannot run {HQ_TAP} here (no "
                "ambient capabilities or mount namespaces in this kernel or container?): "
                f"{probe.stderr.strip()[-300:]}")
    return None


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A working directory (and spool) the unprivileged user owns."""
    path = Path(tempfile.mkdtemp(prefix="hq-tap-nonroot-"))
    os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_capture_as_an_unprivileged_user_with_cap_net_raw_records_jobs(
        gearmand: Gearmand, nobody_dir: Path, transactional_db: None) -> None:
    if reason := why_not(nobody_dir):
        pytest.skip(reason)
    tap = start_hq_tap("capture", gearmand, nobody_dir, "nonroot-capture",
                       env=tap_env(nobody_dir / "spool"),
                       prefix=as_nobody(nobody_dir, net_raw=True))
    worker = start_worker(gearmand.port, "rev", "rev")
    try:
        tap_status = status_of(tap.proc.pid)
        tcpdumps = [p for p in children(tap.proc.pid)
                    if Path(f"/proc/{p}/comm").read_text().strip() == "tcpdump"]
        tcpdump_uid = status_of(tcpdumps[0])["Uid"].split()[0] if tcpdumps else None
        replies = [gearman(gearmand.port, "-f", "rev", stdin=f"job {i}\n") for i in range(3)]
        gearman(gearmand.port, "-b", "-f", "rev", "in the background")
        jobs = wait_jobs("nonroot-capture", 4, state="completed")
    finally:
        stop_worker(worker)
        output = tap.stop()
    assert tap_status["Uid"].split() == [str(NOBODY)] * 4, output
    assert int(tap_status["CapEff"], 16) == 1 << CAP_NET_RAW  # that one capability, no other
    assert tcpdump_uid == str(NOBODY)  # tcpdump ran as the user too, with the inherited cap
    assert replies == [f"{i} boj\n" for i in range(3)]
    assert sorted(j.payload for j in jobs) == sorted(
        [f"job {i}\n" for i in range(3)] + ["in the background"])
    assert tap.proc.returncode == 0, output  # stopped its tcpdump and drained cleanly
    assert "Traceback" not in output


def test_the_same_user_without_the_capability_is_told_why(
        gearmand: Gearmand, nobody_dir: Path, db: None) -> None:
    if reason := why_not(nobody_dir):
        pytest.skip(reason)
    env = tap_env(nobody_dir / "spool")
    args = ["capture", "--interface", "lo", "--port", str(gearmand.port), "--server", "x"]
    done = subprocess.run([*as_nobody(nobody_dir, net_raw=False), str(HQ_TAP), *args],
                          env=env, cwd=nobody_dir, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert f"cannot capture on 'lo' as uid {NOBODY}" in done.stderr
    assert "CAP_NET_RAW" in done.stderr


def test_capture_as_root_holding_only_the_compose_services_capabilities(
        gearmand: Gearmand, tmp_path: Path, transactional_db: None) -> None:
    """docker-compose.yml's hq-tap-capture: Docker gives a non-root user no capabilities, so
    it runs as root with cap_drop ALL + NET_RAW, SETUID, SETGID (tcpdump, started as root,
    switches to its own user once the capture is open) and KILL (to stop that tcpdump, now
    another user's process), its spool a directory root owns. Without KILL the tap could
    not stop its tcpdump and ended with a traceback."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root to drop to a bounded set; this run is uid {os.geteuid()}")
    compose = ["setpriv", "--bounding-set=-all,+net_raw,+setuid,+setgid,+kill",
               "--inh-caps=-all", "--"]
    tap = start_hq_tap("capture", gearmand, tmp_path, "compose-capture",
                       env=tap_env(tmp_path / "spool"), prefix=compose)
    worker = start_worker(gearmand.port, "rev", "rev")
    try:
        cap_eff = int(status_of(tap.proc.pid)["CapEff"], 16)
        gearman(gearmand.port, "-b", "-f", "rev", "from compose")
        jobs = wait_jobs("compose-capture", 1, state="completed")
    finally:
        stop_worker(worker)
        output = tap.stop()
    assert cap_eff == (1 << CAP_NET_RAW) | (1 << 5) | (1 << 6) | (1 << 7)  # +KILL SETGID SETUID
    assert [j.payload for j in jobs] == ["from compose"]
    assert tap.proc.returncode == 0, output
    assert "Traceback" not in output
