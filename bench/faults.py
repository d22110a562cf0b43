"""Faults under load: what HQ records when Postgres, the tap, gearmand, Redis or the spool's
disk fail while PHP clients submit ~2,000 jobs/s — in capture and in proxy mode.

Everything runs privately: a Postgres cluster and a Redis of the bench's own (the shared
ones are never touched), a gearmand per scenario, HQ's tap as the real management command
(``manage.py gearman_capture`` / ``gearman_proxy``), two paced PHP background clients, one
PHP foreground client and two PHP workers (``bench/php/paced_client.php``,
``fault_worker.php``). Every job carries a unique key naming its client and sequence
number; clients print what gearmand answered, workers what they ran and how it ended.
After the load, gearmand drained and the tap's spool empty, the tap is stopped and HQ's
job rows are compared with that ground truth (see :func:`classify`).

Scenarios (each in capture and in proxy mode; durations are ``--short``/full):

  baseline     no fault
  postgres     Postgres stopped (pg_ctl -m fast) 15/60 s, then started
  tap-kill     the tap's process group killed -9, restarted 2/3 s later (a supervisor)
  gearmand     workers paused 2 s (a backlog builds), gearmand restarted, workers resumed
  redis        Redis stopped 8/30 s, then started
  spool-full   HQ_SPOOL_DIR on a 2 MiB tmpfs (HQ_SPOOL_MAX left at 1 GiB) + Postgres down
  spool-max    the same with HQ_SPOOL_MAX=1 MiB, below the disk: the bound, not ENOSPC
  tap-child    proxy only: the decoding child killed -9 (the proxy restarts it)

    .venv/bin/python bench/faults.py                 # everything, ~12 min on 2 cores
    .venv/bin/python bench/faults.py --short         # ~6 min
    .venv/bin/python bench/faults.py --scenarios postgres,tap-kill --modes proxy

Needs root (tcpdump capture, a tmpfs mount, Postgres run as the postgres user). This is a
benchmark, not a test: it prints a table and a verdict per scenario, and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # bench/ is a directory of scripts, not a package
    PHP_DIR,
    PROJECT_DIR,
    AdminConn,
    BenchError,
    PrivatePostgres,
    Proc,
    ProcessSet,
    command_line,
    descendants,
    free_port,
    machine_info,
    prepare_database,
    process_set,
    raise_on_termination_signals,
    start_gearmand,
    start_redis,
    tmpfs_mount,
    wait_for_port,
    wait_for_workers,
)

HOST = "127.0.0.1"
#: what a tap logs once it records: tcpdump listens / the proxy's decoding child is up
READY = {"capture": "HQ capture ready", "proxy": "watching gearmand"}
MODES = ("capture", "proxy")
FAIL_EVERY = 20  # every 20th job is failed by its worker (WORK_FAIL)
WORKERS = 2
BG_CLIENTS = 2
FG_RATE = 20.0  # foreground jobs/s, one sequential client


# --------------------------------------------------------------------------- the world


@dataclass
class Services:
    """The private Postgres and Redis every scenario shares (stopped only by faults)."""

    pg: PrivatePostgres
    db_url: str
    procs: ProcessSet
    redis_port: int
    redis: Proc | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    def redis_up(self) -> None:
        if self.redis is None or not self.redis.alive():
            self.redis = start_redis(self.procs, self.redis_port)

    def redis_down(self) -> None:
        if self.redis is not None:
            self.procs.stop(self.redis)
            self.redis = None

    def ensure_up(self) -> None:
        if not self.pg.running():
            self.pg.start()
        self.redis_up()


@dataclass
class Run:
    """One scenario in one mode: its processes, ports and what happened when."""

    services: Services
    procs: ProcessSet
    scenario: Scenario
    mode: str
    tag: str
    spool_dir: Path
    gport: int
    cport: int
    env: dict[str, str]
    t0_ns: int = 0
    gearmand: Proc | None = None
    tap: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    strays: set[int] = field(default_factory=set)  # tcpdumps of killed taps (own session)
    boots: list[tuple[int, int]] = field(default_factory=list)  # (monotonic ns, gearmand pid)
    stops: list[int] = field(default_factory=list)  # when a gearmand was stopped (ns)
    blind: list[tuple[int, int]] = field(default_factory=list)  # tap dead: (from, to) ns
    timeline: list[str] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"faults-{self.tag}"

    @property
    def function(self) -> str:
        return f"faults_{self.tag}"

    def note(self, text: str) -> None:
        at = (time.monotonic_ns() - self.t0_ns) / 1e9 if self.t0_ns else 0.0
        self.timeline.append(f"{at:5.1f} s {text}")
        print(f"    {at:5.1f} s  {text}", flush=True)


# --------------------------------------------------------------------------- the faults


def fault_none(run: Run, down_s: float) -> None:
    """No fault: the baseline."""


def fault_postgres(run: Run, down_s: float) -> None:
    run.note("Postgres: pg_ctl stop -m fast")
    run.services.pg.stop("fast")
    try:
        time.sleep(down_s)
    finally:
        run.services.pg.start()
        run.note("Postgres: started again")


def tap_lag(run: Run) -> str:
    """What the tap last reported to Redis (every 5 s): how far behind it was."""
    import redis

    try:
        raw = redis.Redis.from_url(run.services.redis_url, socket_timeout=2).hget(
            f"hq:tap:{run.server}", "stats"
        )
        writer = json.loads(raw or b"{}").get("writer", {})
    except (redis.RedisError, ValueError) as exc:
        return f"tap stats n/a ({exc})"
    return (
        f"its last report: lag {writer.get('lag_ms', '?')} ms, "
        f"{writer.get('queued', '?')} events queued in memory"
    )


def fault_tap_kill(run: Run, down_s: float) -> None:
    assert run.tap is not None
    run.note(tap_lag(run))
    killed_ns = time.monotonic_ns()
    kill_tap(run, run.tap)
    run.note(f"tap killed -9 (process group {run.tap.pid})")
    run.tap = None
    time.sleep(down_s)
    run.tap = start_tap(run)
    run.blind.append((killed_ns, time.monotonic_ns()))
    run.note("tap restarted and ready")


def fault_tap_child(run: Run, down_s: float) -> None:
    """Proxy only: kill -9 the decoding child; the proxy's supervisor restarts it."""
    assert run.tap is not None
    children = [p for p in descendants(run.tap.pid) if "hq.tap.child" in command_line(p)]
    if not children:
        raise BenchError("no decoding child found under the proxy")
    run.note(tap_lag(run))
    ready = run.tap.output(10**8).count(READY["proxy"])
    killed_ns = time.monotonic_ns()
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    run.note(f"decoding child {children} killed -9")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if run.tap.output(10**8).count(READY["proxy"]) > ready:
            run.blind.append((killed_ns, time.monotonic_ns()))
            run.note("the proxy's new decoding child records")
            return
        time.sleep(0.05)
    run.note("! no new decoding child after 60 s")


def fault_gearmand(run: Run, down_s: float) -> None:
    """Pause the workers so a backlog builds, restart gearmand (its queue dies with it:
    no persistent queue), resume the workers."""
    for worker in run.workers:
        os.killpg(worker.pid, signal.SIGSTOP)
    run.note(f"workers paused (SIGSTOP) for {down_s:.0f} s: a backlog builds")
    try:
        time.sleep(down_s)
        queued = _queued(run)
        assert run.gearmand is not None
        run.stops.append(time.monotonic_ns())
        run.procs.stop(run.gearmand)
        run.note(f"gearmand stopped (SIGTERM) with {queued} jobs of the function in it")
        run.gearmand = start_gearmand_at(run)
        run.note(f"gearmand started again (pid {run.gearmand.pid})")
    finally:
        for worker in run.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGCONT)
        run.note("workers resumed (SIGCONT)")


def fault_redis(run: Run, down_s: float) -> None:
    run.services.redis_down()
    run.note("Redis stopped")
    try:
        time.sleep(down_s)
    finally:
        run.services.redis_up()
        run.note("Redis started again")


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Callable[[Run, float], None]
    what: str  # the fault, in the table (with {down} for the duration)
    load_s: tuple[float, float]  # (short, full)
    fault_at_s: tuple[float, float]
    down_s: tuple[float, float]
    modes: tuple[str, ...] = MODES
    spool_tmpfs: str = ""  # size of a tmpfs mounted as HQ_SPOOL_DIR
    env: tuple[tuple[str, str], ...] = ()


SCENARIOS = (
    Scenario("baseline", fault_none, "none", (10, 25), (0, 0), (0, 0)),
    Scenario("postgres", fault_postgres, "Postgres stopped {down} s", (25, 75), (4, 5), (15, 60)),
    Scenario(
        "tap-kill",
        fault_tap_kill,
        "tap killed -9, restarted after {down} s",
        (12, 25),
        (4, 8),
        (2, 3),
    ),
    Scenario(
        "tap-child",
        fault_tap_child,
        "decoding child killed -9",
        (12, 25),
        (4, 8),
        (0, 0),
        modes=("proxy",),
    ),
    Scenario(
        "gearmand",
        fault_gearmand,
        "gearmand restarted (workers paused {down} s before)",
        (12, 25),
        (4, 8),
        (2, 2),
    ),
    Scenario("redis", fault_redis, "Redis stopped {down} s", (18, 45), (4, 5), (8, 30)),
    Scenario(
        "spool-full",
        fault_postgres,
        "spool on a 2 MiB tmpfs + Postgres stopped {down} s",
        (20, 40),
        (4, 5),
        (12, 25),
        spool_tmpfs="2m",
    ),
    Scenario(
        "spool-max",
        fault_postgres,
        "HQ_SPOOL_MAX=1 MiB (2 MiB disk) + Postgres stopped {down} s",
        (20, 40),
        (4, 5),
        (12, 25),
        spool_tmpfs="2m",
        env=(("HQ_SPOOL_MAX", str(1 << 20)),),
    ),
)
BY_NAME = {s.name: s for s in SCENARIOS}


# --------------------------------------------------------------------------- processes


def start_gearmand_at(run: Run) -> Proc:
    """gearmand on the run's port (again, after a restart: retried while the port frees)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            proc = start_gearmand(run.procs, HOST, run.gport)
        except BenchError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        run.boots.append((time.monotonic_ns(), proc.pid))
        return proc


def tap_argv(run: Run) -> list[str]:
    py = [sys.executable, "manage.py"]
    if run.mode == "capture":
        return [
            *py,
            "gearman_capture",
            "--interface",
            "lo",
            "--port",
            str(run.gport),
            "--server",
            run.server,
        ]
    return [
        *py,
        "gearman_proxy",
        "--listen",
        f"{HOST}:{run.cport}",
        "--upstream",
        f"{HOST}:{run.gport}",
        "--server",
        run.server,
    ]


def start_tap(run: Run) -> Proc:
    """The tap as `manage.py gearman_capture|gearman_proxy`; returns once it records."""
    tap = run.procs.spawn(f"tap-{run.mode}", tap_argv(run), env=run.env, cwd=PROJECT_DIR)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not tap.alive():
            raise BenchError(
                f"the tap exited at start ({tap.popen.returncode}):\n{tap.output(3000)}"
            )
        if READY[run.mode] in tap.output(200_000):
            break
        time.sleep(0.05)
    else:
        raise BenchError(f"the tap is not ready after 60 s:\n{tap.output(3000)}")
    if run.mode == "proxy":
        wait_for_port(HOST, run.cport, 30.0, tap)
    run.strays.update(p for p in descendants(tap.pid) if _is_tcpdump(p))
    return tap


def _is_tcpdump(pid: int) -> bool:
    argv = command_line(pid)
    return bool(argv) and Path(argv[0]).name == "tcpdump"


def kill_tap(run: Run, tap: Proc) -> None:
    """SIGKILL the tap's process group (the proxy's decoding child is in it). Its tcpdump
    runs in a session of its own and dies of SIGPIPE; it is reaped in :func:`reap_strays`."""
    run.strays.update(p for p in descendants(tap.pid) if _is_tcpdump(p))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(tap.pid, signal.SIGKILL)
    tap.popen.wait(10)
    run.procs.stop(tap)


def reap_strays(strays: set[int]) -> None:
    """The tcpdumps our taps started, if still alive (checked by name: pids are reused)."""
    for pid in sorted(strays):
        if _is_tcpdump(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    strays.clear()


def php(script: str, *args: object) -> list[str]:
    return ["php", str(PHP_DIR / script), *(str(a) for a in args)]


def start_load(run: Run, rate: float, load_s: float) -> list[Proc]:
    clients = [
        run.procs.spawn(
            f"bg{i}",
            php(
                "paced_client.php",
                HOST,
                run.cport,
                run.function,
                rate / BG_CLIENTS,
                load_s,
                i,
                run.tag,
                "bg",
                FAIL_EVERY,
            ),
        )
        for i in range(BG_CLIENTS)
    ]
    clients.append(
        run.procs.spawn(
            "fg",
            php(
                "paced_client.php",
                HOST,
                run.cport,
                run.function,
                FG_RATE,
                load_s,
                "fg",
                run.tag,
                "fg",
                FAIL_EVERY // 2,
            ),
        )
    )
    return clients


def _queued(run: Run) -> int:
    with contextlib.suppress(OSError, BenchError), AdminConn(HOST, run.gport) as admin:
        return admin.status().get(run.function, (0, 0, 0))[0]
    return -1


def wait_drained(run: Run, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _queued(run) == 0:
            return
        time.sleep(0.2)
    run.note(f"! gearmand still holds {_queued(run)} jobs after {timeout:.0f} s")


def spooled(run: Run) -> int:
    folder = run.spool_dir / run.server
    return len(list(folder.glob("*.batch"))) if folder.is_dir() else 0


#: the next `show jobs` list (≤ 3 + 2 s), its settling time (3 s), the poll that judges
#: by it (2 s), the writer writing the lost events: one reconciliation after the load
RECONCILE_WAIT_S = 12.0


def _gaps_open(log: str) -> bool:
    """The tap recorded missed jobs lost and has not yet said that none is left."""
    found = log.rfind("were not recorded")
    return found >= 0 and log.rfind("reconciled: no job missing") < found


def settle_and_stop_tap(run: Run, timeout: float) -> dict[str, Any]:
    """Wait until the spool is replayed, then stop the tap (SIGTERM: it drains and writes
    everything) and return its final stats."""
    deadline = time.monotonic() + timeout
    while spooled(run) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left := spooled(run):
        run.note(f"! {left} batches still spooled after {timeout:.0f} s")
    time.sleep(RECONCILE_WAIT_S)  # a pass of jobs/reconcile.py over what the fault left
    tap = run.tap
    if tap is not None:  # missed jobs found: their placeholders go a writer-full per pass
        log = tap.log_path
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _gaps_open(log.read_text(errors="replace")):
            time.sleep(1)
    if tap is None:
        return {}
    if not tap.alive():
        run.note(f"! the tap had exited (rc {tap.popen.returncode})")
    rc = run.procs.stop(tap, timeout=120)
    run.note(f"tap stopped (rc {rc})")
    return final_stats(tap.log_path.read_text(errors="replace"))


def final_stats(log_text: str) -> dict[str, Any]:
    """The JSON of the last 'tap stopped: {...}' line, plus the proxy's own last words."""
    stats: dict[str, Any] = {}
    for line in log_text.splitlines():
        if "tap stopped: " in line:
            with contextlib.suppress(ValueError):
                stats = json.loads(line.split("tap stopped: ", 1)[1])
    if m := re.findall(r"decoding child restarts: (\d+)", log_text):
        stats["child_restarts"] = int(m[-1])
    return stats


# --------------------------------------------------------------------------- ground truth


@dataclass
class Truth:
    """One job as its client and workers saw it."""

    unique: str
    handle: str = ""
    first_ns: int = 0  # when it was first heard of (created, or first run)
    last_ns: int = 0  # when it was last heard of
    run_ns: int = 0  # when a worker last reported on it
    created: bool = False
    runs: list[str] = field(default_factory=list)  # worker outcomes in order: C, F, X
    fg_result: str = ""  # a foreground client's S or F

    @property
    def outcome(self) -> str:
        """completed | failed | gone (ran, its answer never reached gearmand) | dropped
        (created, never run: died with gearmand) | unknown (the client saw an error)."""
        if self.runs:
            return {"C": "completed", "F": "failed", "X": "gone"}[self.runs[-1]]
        if self.fg_result:
            return "completed" if self.fg_result == "S" else "failed"
        return "dropped" if self.created else "unknown"


@dataclass
class Load:
    truth: dict[str, Truth]
    attempts: int
    client_errors: int
    bg_attempts: int


def _log_lines(proc: Proc) -> list[str]:
    return proc.log_path.read_text(errors="replace").splitlines()


def read_load(clients: Sequence[Proc], workers: Sequence[Proc]) -> Load:
    truth: dict[str, Truth] = {}
    attempts = errors = bg = 0
    for client in clients:
        for line in _log_lines(client):
            parts = line.split(" ", 4)
            if len(parts) < 3 or parts[0] not in ("S", "F", "E"):
                continue
            attempts += 1
            bg += client.name != "fg"
            job = truth.setdefault(parts[2], Truth(parts[2], first_ns=int(parts[1])))
            job.last_ns = max(job.last_ns, int(parts[1]))
            if parts[0] == "E":
                errors += 1
                continue
            job.created = True
            job.handle = job.handle or (parts[3] if len(parts) > 3 else "")
            if client.name == "fg":
                job.fg_result = parts[0]
    for worker in workers:
        for line in _log_lines(worker):
            parts = line.split()
            if len(parts) != 5 or parts[0] != "J":
                continue
            job = truth.setdefault(parts[3], Truth(parts[3], first_ns=int(parts[1])))
            job.handle = parts[2]
            job.first_ns = min(job.first_ns, int(parts[1]))
            job.last_ns = max(job.last_ns, int(parts[1]))
            job.run_ns = max(job.run_ns, int(parts[1]))
            job.runs.append(parts[4])
    return Load(truth, attempts, errors, bg)


# --------------------------------------------------------------------------- HQ's rows


@dataclass(frozen=True)
class Row:
    id: int
    boot: str
    handle: str
    unique: str
    state: str
    function: str
    boot_id: int


def hq_rows(db_url: str, server: str) -> list[Row]:
    import psycopg

    query = (
        'SELECT j.id, b.token, j.handle, j."unique", j.state, j.function, j.boot_id'
        " FROM jobs_job j JOIN jobs_boot b ON b.id = j.boot_id"
        " JOIN jobs_server s ON s.id = j.server_id WHERE s.name = %s ORDER BY j.id"
    )
    with psycopg.connect(db_url, connect_timeout=10) as conn:
        return [Row(*r) for r in conn.execute(query, (server,)).fetchall()]


def explain(db_url: str, out: Outcome) -> None:
    """The stored events of a few wrong rows, in the order they were emitted (event ids
    grow with each emit): shows whether an event is missing or the row disagrees with them."""
    import psycopg

    query = (
        "SELECT kind, extract(epoch FROM at) FROM jobs_jobevent"
        " WHERE boot_id = %s AND handle = %s ORDER BY id"
    )
    with psycopg.connect(db_url, connect_timeout=10) as conn:
        for row in out.suspects[:6]:
            events = conn.execute(query, (row.boot_id, row.handle)).fetchall()
            first = float(events[0][1]) if events else 0.0
            text = ", ".join(f"{kind} +{(float(at) - first) * 1000:.0f} ms" for kind, at in events)
            _example(out, "events", f"{row.handle} (HQ {row.state}): {text or 'none'}")


@dataclass
class Outcome:
    scenario: str
    mode: str
    fault: str
    load: str
    load_s: float
    duration_s: float = 0.0  # the scenario's wall time, set-up and settling included
    jobs: int = 0  # created by gearmand or run by a worker
    dropped: int = 0  # of those, gearmand dropped them (restart) or their answer was lost
    failed: int = 0
    recorded: int = 0
    not_recorded: int = 0
    not_recorded_blind: int = 0  # of those, the tap was dead for the job's whole life
    duplicated: int = 0
    stale: int = 0  # HQ says queued/running, but the job finished or was dropped
    false: int = 0  # HQ says completed/failed, contradicting the truth
    marked_lost: int = 0  # HQ says lost for a job that in fact finished (could not know)
    invented: int = 0
    unverifiable: int = 0  # rows of submits whose client saw an error and no worker ran
    partial: int = 0  # rows without a unique key (built from later packets), matched by handle
    client_errors: int = 0
    attempts: int = 0
    tap: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    missing_at: dict[int, int] = field(default_factory=dict)  # load second → not recorded
    suspects: list[Row] = field(default_factory=list)  # a few wrong rows, for explain()
    timeline: list[str] = field(default_factory=list)
    loadavg: float = 0.0  # the machine's 1-minute load average when the load ended
    error: str = ""

    @property
    def wrong(self) -> int:
        return self.stale + self.false


FINE = {"completed": "completed", "failed": "failed", "dropped": "lost", "gone": "lost"}


def classify(out: Outcome, load: Load, rows: Sequence[Row], run: Run) -> None:
    """Compare HQ's rows with the truth, job by job (see the README "What HQ guarantees")."""
    by_unique: dict[str, list[Row]] = {}
    anonymous: list[Row] = []
    for row in rows:
        (by_unique.setdefault(row.unique, []) if row.unique else anonymous).append(row)
    by_handle = _match_anonymous(anonymous, load.truth, run, out)
    for job in load.truth.values():
        found = by_unique.pop(job.unique, []) + by_handle.get(job.unique, [])
        _judge(out, job, found, run)
    for unique, extra in by_unique.items():  # rows for uniques nobody submitted or ran
        out.invented += len(extra)
        _example(out, "invented", f"{unique} {extra[0].handle} {extra[0].state}")


def _match_anonymous(
    rows: Sequence[Row], truth: dict[str, Truth], run: Run, out: Outcome
) -> dict[str, list[Row]]:
    """Rows without a unique key (HQ saw neither the submit nor the assignment, only e.g.
    the WORK_COMPLETE) are matched by gearmand's pid and handle."""
    index: dict[tuple[int, str], str] = {}
    for job in truth.values():
        if job.handle:
            index[(_boot_pid(run, job.first_ns), job.handle)] = job.unique
    matched: dict[str, list[Row]] = {}
    for row in rows:
        pid = row.boot.split(".")[0]
        unique = index.get((int(pid), row.handle)) if pid.isdigit() else None
        if unique is None and row.state == "lost" and not row.function:
            # a placeholder for a number missing between recorded handles: gearmand created
            # that job, but neither its client (an error) nor a worker reported it
            out.unverifiable += 1
            _example(out, "placeholder", f"{row.boot} {row.handle}")
        elif unique is None:
            out.invented += 1
            _example(out, "invented", f"(no unique) {row.boot} {row.handle} {row.state}")
        else:
            out.partial += 1
            matched.setdefault(unique, []).append(row)
    return matched


def _boot_pid(run: Run, ns: int) -> int:
    pid = run.boots[0][1]
    for started_ns, boot_pid in run.boots:
        if ns >= started_ns:
            pid = boot_pid
    return pid


def _judge(out: Outcome, job: Truth, found: list[Row], run: Run) -> None:
    outcome = job.outcome
    if outcome in ("completed", "failed") and any(
        job.first_ns < stop <= job.run_ns for stop in run.stops
    ):
        # its worker answered after the gearmand that held it was gone (through the proxy
        # the write still succeeds): no gearmand ever got the answer
        outcome = "gone"
    if outcome == "unknown":  # the client saw an error and no worker ran it
        out.unverifiable += len(found)
        for row in found:
            if row.state not in ("lost", "queued"):
                out.false += 1
                _example(out, "false", f"{job.unique} (never ran) HQ {row.state}")
        return
    out.jobs += 1
    out.dropped += outcome in ("dropped", "gone")
    out.failed += outcome == "failed"
    if not found:
        out.not_recorded += 1
        blind = _inside_blind(run, job)
        out.not_recorded_blind += blind
        second = max(0, (job.first_ns - run.t0_ns) // 10**9)
        out.missing_at[second] = out.missing_at.get(second, 0) + 1
        _example(out, "blind" if blind else "not_recorded", f"{job.unique} {job.handle} {outcome}")
        return
    out.recorded += 1
    out.duplicated += len(found) - 1
    if len(found) > 1:
        _example(
            out,
            "duplicated",
            f"{job.unique}: " + ", ".join(f"{r.boot}/{r.handle} {r.state}" for r in found),
        )
    for row in found:
        kind = _verdict(outcome, row.state)
        if kind:
            setattr(out, kind, getattr(out, kind) + 1)
            _example(out, kind, f"{job.unique} {job.handle} is {outcome}; HQ {row.state}")
            if kind in ("stale", "false") and len(out.suspects) < 6:
                out.suspects.append(row)


def _verdict(outcome: str, state: str) -> str:
    if state == FINE[outcome]:
        return ""
    if state == "lost":
        return "marked_lost"
    if state in ("queued", "running"):
        return "stale"
    return "false"


def _inside_blind(run: Run, job: Truth) -> bool:
    return any(start <= job.first_ns and job.last_ns <= end for start, end in run.blind)


def _example(out: Outcome, kind: str, text: str) -> None:
    examples = out.examples.setdefault(kind, [])
    if len(examples) < 6:
        examples.append(text)


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Config:
    scenarios: list[Scenario]
    modes: list[str]
    short: bool
    rate: float
    json_path: Path | None
    logs_dir: Path | None

    def pick(self, pair: tuple[float, float]) -> float:
        return pair[0] if self.short else pair[1]


def run_scenario(services: Services, cfg: Config, sc: Scenario, mode: str) -> Outcome:
    load_s, down_s = cfg.pick(sc.load_s), cfg.pick(sc.down_s)
    out = Outcome(
        sc.name,
        mode,
        sc.what.format(down=f"{down_s:.0f}"),
        f"{cfg.rate:,.0f}/s bg + {FG_RATE:.0f}/s fg",
        load_s,
    )
    print(f"\n== {sc.name} ({mode}): {out.fault}; load {load_s:.0f} s", flush=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        spool_home = Path(tempfile.mkdtemp(prefix="hq-faults-spool-"))
        stack.callback(shutil.rmtree, spool_home, True)
        spool = spool_home / "spool"
        if sc.spool_tmpfs:
            stack.enter_context(tmpfs_mount(spool, sc.spool_tmpfs))
        strays: set[int] = set()
        stack.callback(reap_strays, strays)  # after the process set is left
        procs = stack.enter_context(process_set())
        run = new_run(services, procs, sc, mode, spool)
        run.strays = strays
        try:
            play(run, cfg, sc, out, load_s, down_s)
        except BenchError as exc:
            out.error = str(exc)
            run.note(f"! {exc}")
        finally:
            out.timeline = run.timeline
            services.ensure_up()
            if cfg.logs_dir:
                keep_logs(procs.workdir, cfg.logs_dir / f"{sc.name}-{mode}-{run.tag}")
    out.duration_s = time.monotonic() - started
    print_outcome(out)
    return out


def keep_logs(workdir: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for log in workdir.glob("*.log"):
        shutil.copy2(log, target / log.name)


def new_run(services: Services, procs: ProcessSet, sc: Scenario, mode: str, spool: Path) -> Run:
    tag = f"{sc.name.replace('-', '')[:5]}{mode[0]}{secrets.token_hex(3)}"
    gport = free_port()
    env = {
        "DATABASE_URL": services.db_url,
        "REDIS_URL": services.redis_url,
        "HQ_SPOOL_DIR": str(spool),
        "HQ_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        # gearmand's admin polls and the check of open jobs against `show jobs` a little
        # more often than by default, so one reconciliation pass (RECONCILE_WAIT_S) fits
        # between the end of the load and the tap's stop
        "HQ_POLL_INTERVAL": "2",
        "HQ_RECONCILE_INTERVAL": "3",
        **dict(sc.env),
    }
    return Run(
        services, procs, sc, mode, tag, spool, gport, free_port() if mode == "proxy" else gport, env
    )


def play(run: Run, cfg: Config, sc: Scenario, out: Outcome, load_s: float, down_s: float) -> None:
    run.gearmand = start_gearmand_at(run)
    run.tap = start_tap(run)
    run.workers = [
        run.procs.spawn(
            f"worker{i}", php("fault_worker.php", HOST, run.cport, run.function, f"w{i}")
        )
        for i in range(WORKERS)
    ]
    with AdminConn(HOST, run.gport) as admin:
        wait_for_workers(admin, run.function, WORKERS, 20.0, run.workers)
    clients = start_load(run, cfg.rate, load_s)
    run.t0_ns = time.monotonic_ns()
    run.note(f"load started ({len(clients)} PHP clients, {WORKERS} workers)")
    if sc.fault is not fault_none:
        time.sleep(cfg.pick(sc.fault_at_s))
        sc.fault(run, down_s)
    for client in clients:
        client.popen.wait(load_s + 120)
    run.note("clients done")
    out.loadavg = os.getloadavg()[0]
    wait_drained(run, 120)
    run.note("gearmand drained")
    for worker in run.workers:  # idle workers poll every second: the capture's drain
        run.procs.stop(worker)  # waits for 1.5 s of quiet
    out.tap = settle_and_stop_tap(run, 240)
    load = read_load(clients, run.workers)
    out.attempts, out.client_errors = load.attempts, load.client_errors
    out.load = (
        f"{load.bg_attempts / load_s:,.0f}/s bg + "
        f"{(load.attempts - load.bg_attempts) / load_s:,.0f}/s fg"
    )
    classify(out, load, hq_rows(run.services.db_url, run.server), run)
    explain(run.services.db_url, out)


# --------------------------------------------------------------------------- report


def tap_notes(stats: dict[str, Any]) -> str:
    """The tap's own counters that explain a loss (only the non-zero ones)."""
    picks = {
        "writer": (
            "lost_events",
            "spool_dropped_events",
            "quarantined_events",
            "db_errors",
            "spooled_batches",
            "writer_errors",
        ),
        "source": ("kernel_drops", "gaps", "resyncs"),
        "tap": ("gaps", "decode_errors", "tracker_errors"),
        "tracker": ("boots", "forged", "unmatched_created"),
    }
    parts = [
        f"{section}.{key}={stats[section][key]}"
        for section, keys in picks.items()
        for key in keys
        if isinstance(stats.get(section), dict) and stats[section].get(key)
    ]
    if stats.get("child_restarts"):
        parts.append(f"child_restarts={stats['child_restarts']}")
    return ", ".join(parts) or "no loss counters"


def verdict(o: Outcome) -> str:
    if o.error:
        return f"ERROR: {o.error}"
    faults = []
    if o.not_recorded:
        blind = f", {o.not_recorded_blind} while the tap was dead" if o.not_recorded_blind else ""
        faults.append(f"{o.not_recorded} jobs not recorded{blind}")
    for count, what in (
        (o.duplicated, "duplicate rows"),
        (o.stale, "rows left queued/running for jobs that ended"),
        (o.false, "rows with a false outcome"),
        (o.marked_lost, "finished jobs marked lost"),
        (o.invented, "invented rows"),
    ):
        if count:
            faults.append(f"{count} {what}")
    if not faults:
        return "PASS: every job recorded once, in its true state"
    return "LOSS: " + "; ".join(faults)


def print_outcome(o: Outcome) -> None:
    print(
        f"  {o.scenario} ({o.mode}): {o.jobs} jobs ({o.failed} failed, {o.dropped} dropped "
        f"by gearmand), {o.recorded} recorded ({o.partial} without their submit); "
        f"{o.client_errors} client errors of {o.attempts} calls; {o.duration_s:.0f} s; "
        f"load average {o.loadavg:.1f}",
        flush=True,
    )
    print(f"  verdict: {verdict(o)}")
    print(f"  tap: {tap_notes(o.tap)}")
    if o.missing_at:
        print(
            "  not recorded, by second of the load: "
            + " ".join(f"{s}s:{n}" for s, n in sorted(o.missing_at.items()))
        )
    for kind, examples in o.examples.items():
        print(f"  e.g. {kind}: " + "; ".join(examples))


HEADER = (
    "| scenario | mode | fault | load | s | jobs (failed / dropped by gearmand) | "
    "recorded | not recorded (tap dead) | duplicated | wrong state (stale / false) | "
    "marked lost | invented | client errors |"
)


def table(outcomes: Sequence[Outcome]) -> str:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for o in outcomes:
        if o.error:
            lines.append(f"| {o.scenario} | {o.mode} | {o.fault} | ERROR: {o.error[:80]} |")
            continue
        lines.append(
            f"| {o.scenario} | {o.mode} | {o.fault} | {o.load} | {o.load_s:.0f} | "
            f"{o.jobs:,} ({o.failed:,} / {o.dropped:,}) | {o.recorded:,} | "
            f"{o.not_recorded:,} ({o.not_recorded_blind:,}) | {o.duplicated} | "
            f"{o.wrong} ({o.stale} / {o.false}) | {o.marked_lost} | {o.invented} | "
            f"{o.client_errors:,} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


@contextlib.contextmanager
def private_services() -> Iterator[Services]:
    """A Postgres (migrated) and a Redis of our own; both gone on the way out."""
    with contextlib.ExitStack() as stack:
        pg = PrivatePostgres()
        stack.callback(pg.destroy)
        pg.init()
        pg.start()
        db_url = pg.url("gearman_hq_faults")
        print(f"private Postgres on 127.0.0.1:{pg.port} ({pg.home}); migrating", flush=True)
        prepare_database(db_url, migrate=True)
        procs = stack.enter_context(process_set())
        services = Services(pg, db_url, procs, free_port())
        services.redis_up()
        print(f"private Redis on {services.redis_url}", flush=True)
        yield services


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scenarios", default=",".join(BY_NAME), help=f"comma list of {', '.join(BY_NAME)}"
    )
    p.add_argument("--modes", default=",".join(MODES), help="comma list of capture,proxy")
    p.add_argument("--short", action="store_true", help="shorter loads and outages (~6 min)")
    p.add_argument("--rate", type=float, default=2000.0, help="background jobs/s, all clients")
    p.add_argument("--json", type=Path, dest="json_path", help="write every outcome here")
    p.add_argument(
        "--logs", type=Path, dest="logs_dir", help="keep every process's log under this directory"
    )
    a = p.parse_args(argv)
    names = [n.strip() for n in a.scenarios.split(",") if n.strip()]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if unknown := (set(names) - set(BY_NAME)) | (set(modes) - set(MODES)):
        p.error(f"unknown scenarios or modes: {', '.join(sorted(unknown))}")
    return Config([BY_NAME[n] for n in names], modes, a.short, a.rate, a.json_path, a.logs_dir)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if os.geteuid() != 0:
        print("! run as root: capture needs CAP_NET_RAW, the spool scenarios a tmpfs mount")
        return 2
    raise_on_termination_signals()
    info = machine_info()
    started = time.monotonic()
    print(
        f"Gearman HQ faults bench — {info['date']}; {info['nproc']} cores, load average "
        f"{info['loadavg']}; gearmand {info['gearmand']}; php-gearman {info['php_gearman']}"
    )
    outcomes: list[Outcome] = []
    try:
        with private_services() as services:
            for sc in cfg.scenarios:
                for mode in (m for m in cfg.modes if m in sc.modes):
                    outcomes.append(run_scenario(services, cfg, sc, mode))
    except KeyboardInterrupt:
        print("\ninterrupted: everything started has been stopped; partial results:")
    except BenchError as exc:
        print(f"\n! {exc}")
    print(f"\n{table(outcomes)}\n")
    for o in outcomes:
        print(
            f"- {o.scenario} ({o.mode}): {verdict(o)} [{tap_notes(o.tap)}; "
            f"load average {o.loadavg:.1f}]"
        )
    print(
        f"\ntotal bench time {time.monotonic() - started:.0f} s; load average now "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if cfg.json_path:
        cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
        data = {"machine": info, "outcomes": [asdict(o) for o in outcomes]}
        cfg.json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0 if outcomes and not any(o.error for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
