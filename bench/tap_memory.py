"""How much memory does a tap hold with 1,000 client connections and 100,000 open jobs?

The memory target of issue 13: the tap's RSS < 100 MB, and flat over 10 minutes, at speed
with 1,000 client connections and 100,000 open jobs. Starts a Postgres and a Redis of its
own (as ``bench/cost.py`` does), a private gearmand and the tap (``manage.py
gearman_capture``, as ``make run`` starts it; ``--mode proxy`` for the proxy), then:

1. baseline: the tap's RSS once it is ready, idle;
2. open: a load process (this script, ``load`` sub-command: asyncio, Gearman binary
   protocol) opens ``--conns`` connections and submits ``--open-jobs`` background jobs of
   a function no worker serves, so they stay queued in gearmand (and open in the tap);
3. flow: the same connections keep submitting ``--rate`` background jobs/s of a second
   function that ``--workers`` PHP workers (php-gearman) run, for ``--minutes``;

and samples the RSS of the tap and of its children (tcpdump; the proxy's decoding child)
every ``--every`` seconds, printing time, RSS, open jobs (gearmand's ``status``) and
established connections to gearmand. The verdict compares the tap's last RSS with 100 MB
(its children are shown apart: tcpdump's RSS is its kernel capture ring, ``-B``), and
"flat" is the growth over the second half of the run.

``--tracemalloc`` runs the tap under ``python -X tracemalloc`` through a small wrapper
(``tapwrap`` sub-command) that writes the top allocation sites on SIGUSR2, so the table is
followed by what holds the memory (tracemalloc slows the tap: use it to find, not to time).

    .venv/bin/python bench/tap_memory.py                  # 10 minutes, capture
    .venv/bin/python bench/tap_memory.py --minutes 2 --tracemalloc
    .venv/bin/python bench/tap_memory.py --mode proxy --minutes 3
    .venv/bin/python bench/tap_memory.py --settings hq.tap.settings   # as hq-tap runs

Needs root for capture mode (tcpdump). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import runpy
import secrets
import signal
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # bench/ is a directory of scripts, not a package
    PROJECT_DIR,
    AdminConn,
    BenchError,
    Proc,
    ProcessSet,
    descendants,
    free_port,
    start_gearmand,
    wait_for_port,
    wait_for_workers,
)

HOST = "127.0.0.1"
TARGET_MB = 100.0
READY = {"capture": "HQ capture ready", "proxy": "watching gearmand"}
SUBMIT_JOB_BG, JOB_CREATED = 18, 8
HEADER = struct.Struct(">4sII")


# --------------------------------------------------------------------------- load process


def _submit(function: bytes, n: int) -> bytes:
    body = b"\0".join((function, b"", b"payload-%d" % n))
    return HEADER.pack(b"\0REQ", SUBMIT_JOB_BG, len(body)) + body


async def _drain_replies(reader: asyncio.StreamReader, created: list[int]) -> None:
    """Read every reply on one connection, counting JOB_CREATED."""
    while True:
        head = await reader.readexactly(12)
        _, ptype, size = HEADER.unpack(head)
        if size:
            await reader.readexactly(size)
        if ptype == JOB_CREATED:
            created[0] += 1


async def _load(port: int, conns: int, open_jobs: int, rate: float, open_fn: str,
                flow_fn: str) -> None:
    pairs = []
    for _ in range(conns):
        pairs.append(await asyncio.open_connection(HOST, port))
    created = [0]
    readers = [asyncio.create_task(_drain_replies(r, created)) for r, _ in pairs]
    print(f"connected {conns}", flush=True)
    n = 0
    for i in range(open_jobs):
        n += 1
        pairs[i % conns][1].write(_submit(open_fn.encode(), n))
        if i % 1000 == 999:
            await asyncio.gather(*(w.drain() for _, w in pairs))
    while created[0] < open_jobs:
        await asyncio.sleep(0.05)
    print(f"open {open_jobs}", flush=True)
    flow = flow_fn.encode()
    tick = 0.1
    per_tick = rate * tick
    owed = 0.0
    next_at = time.monotonic()
    i = 0
    while True:
        owed += per_tick
        while owed >= 1:
            owed -= 1
            n += 1
            pairs[i % conns][1].write(_submit(flow, n))
            i += 1
        next_at += tick
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if any(t.done() for t in readers):
            raise SystemExit("a connection closed")


def load_main(args: argparse.Namespace) -> None:
    asyncio.run(_load(args.port, args.conns, args.open_jobs, args.rate, args.open_fn,
                      args.flow_fn))


# --------------------------------------------------------------------------- tracemalloc wrapper


def tapwrap_main(args: argparse.Namespace) -> None:
    """Run manage.py (argv after ``--``) with a SIGUSR2 handler that writes tracemalloc's
    top allocation sites to ``--out``. Started under ``python -X tracemalloc=N``."""
    import tracemalloc

    out = Path(args.out)

    def dump(signum: int, frame: object) -> None:
        snap = tracemalloc.take_snapshot()
        lines = [f"traced {tracemalloc.get_traced_memory()[0] / 1e6:.1f} MB"]
        for group in ("filename", "lineno"):
            stats = snap.statistics(group)
            lines.append(f"-- by {group}")
            lines += [str(s) for s in stats[:args.top]]
        out.write_text("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR2, dump)
    sys.argv = list(args.rest)
    os.chdir(PROJECT_DIR)
    sys.path.insert(0, str(PROJECT_DIR))
    runpy.run_path(str(PROJECT_DIR / "manage.py"), run_name="__main__")


# --------------------------------------------------------------------------- the bench


@dataclass
class Sample:
    t: float
    phase: str
    tap_mb: float
    tap_anon_mb: float  # the tap's private memory (RSS less shared libraries and files)
    children_mb: float
    open_jobs: int
    conns: int


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def established(port: int) -> int:
    """Connections established to 127.0.0.1:port (gearmand's side), from /proc/net/tcp."""
    want = f":{port:04X}"
    count = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(want) and fields[3] == "01":
                count += 1
    return count


def queued(admin: AdminConn, function: str) -> int:
    return admin.status().get(function, (0, 0, 0))[0]


def sample(tap: Proc, admin: AdminConn, gport: int, open_fn: str, t0: float,
           phase: str) -> Sample:
    kids = descendants(tap.pid)
    return Sample(time.monotonic() - t0, phase, rss_mb(tap.pid), rss_mb(tap.pid, "RssAnon:"),
                  sum(rss_mb(k) for k in kids),
                  queued(admin, open_fn), established(gport))


def print_sample(s: Sample) -> None:
    print(f"{s.t:7.0f} {s.phase:8} {s.tap_mb:8.1f} {s.tap_anon_mb:8.1f} {s.children_mb:9.1f} "
          f"{s.tap_mb + s.children_mb:8.1f} {s.open_jobs:9d} {s.conns:6d}", flush=True)


def start_tap(procs: ProcessSet, args: argparse.Namespace, env: dict[str, str], gport: int,
              cport: int, dump: Path) -> Proc:
    manage = ["manage.py"]
    if args.mode == "capture":
        manage += ["gearman_capture", "--interface", "lo", "--port", str(gport)]
    else:
        manage += ["gearman_proxy", "--listen", f"{HOST}:{cport}", "--upstream",
                   f"{HOST}:{gport}"]
    manage += ["--server", "mem"]
    if args.tracemalloc:
        argv = [sys.executable, "-X", f"tracemalloc={args.tracemalloc}", __file__, "tapwrap",
                "--out", str(dump), "--", *manage]
    else:
        argv = [sys.executable, *manage]
    tap = procs.spawn(f"tap-{args.mode}", argv, env=env, cwd=PROJECT_DIR)
    deadline = time.monotonic() + 90
    while READY[args.mode] not in tap.output(200_000):
        if not tap.alive():
            raise BenchError(f"the tap exited at start:\n{tap.output(3000)}")
        if time.monotonic() > deadline:
            raise BenchError(f"the tap is not ready after 90 s:\n{tap.output(3000)}")
        time.sleep(0.05)
    if args.mode == "proxy":
        wait_for_port(HOST, cport, 30.0, tap)
    return tap


def wait_line(proc: Proc, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        if not proc.alive():
            raise BenchError(f"{proc.name} exited:\n{proc.output(3000)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name}: no {text!r} after {timeout:.0f} s")
        time.sleep(0.2)


def tracemalloc_report(tap: Proc, dump: Path) -> str:
    with contextlib.suppress(FileNotFoundError):
        dump.unlink()
    os.kill(tap.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 120
    while not dump.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)
    return dump.read_text() if dump.exists() else "(no tracemalloc dump)"


def run(args: argparse.Namespace) -> int:
    from cost import private_services
    from tap import start_workers

    with private_services() as svc:
        procs = svc.procs
        gport = free_port()
        cport = free_port() if args.mode == "proxy" else gport
        start_gearmand(procs, HOST, gport)
        env = {"DATABASE_URL": svc.db_url, "REDIS_URL": svc.redis_url,
               "HQ_SPOOL_DIR": str(procs.workdir / "spool"), "HQ_LOG_LEVEL": "INFO",
               "PYTHONUNBUFFERED": "1", **({"DJANGO_SETTINGS_MODULE": args.settings}
                                           if args.settings else {})}
        dump = procs.workdir / "tracemalloc.txt"
        tag = secrets.token_hex(3)
        open_fn, flow_fn = f"mem_open_{tag}", f"mem_flow_{tag}"
        t0 = time.monotonic()
        tap = start_tap(procs, args, env, gport, cport, dump)
        time.sleep(2.0)
        samples: list[Sample] = []
        print(f"{'t s':>7} {'phase':8} {'tap MB':>8} {'anon MB':>8} {'child MB':>9} "
              f"{'total MB':>8} "
              f"{'open jobs':>9} {'conns':>6}", flush=True)
        with AdminConn(HOST, gport) as admin:
            samples.append(sample(tap, admin, gport, open_fn, t0, "idle"))
            print_sample(samples[-1])
            workers = start_workers(procs, cport, flow_fn, args.workers)
            wait_for_workers(admin, flow_fn, args.workers, 30.0, workers)
            load = procs.spawn("load", [
                sys.executable, __file__, "load", "--port", str(cport), "--conns",
                str(args.conns), "--open-jobs", str(args.open_jobs), "--rate", str(args.rate),
                "--open-fn", open_fn, "--flow-fn", flow_fn])
            wait_line(load, f"open {args.open_jobs}", 600.0)
            samples.append(sample(tap, admin, gport, open_fn, t0, "opened"))
            print_sample(samples[-1])
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                time.sleep(args.every)
                if not tap.alive():
                    raise BenchError(f"the tap died:\n{tap.output(3000)}")
                if not load.alive():
                    raise BenchError(f"the load died:\n{load.output(3000)}")
                samples.append(sample(tap, admin, gport, open_fn, t0, "flow"))
                print_sample(samples[-1])
            flowed = queued(admin, flow_fn)
        report = tracemalloc_report(tap, dump) if args.tracemalloc else ""
        stats = tap_stats(tap)
    summarise(args, samples, flowed)
    if stats:
        print(f"tap stats (last log line): {stats}")
    if report:
        print("tracemalloc top (traced Python allocations in the tap):")
        print(report)
    return 0


def tap_stats(tap: Proc) -> str:
    lines = [ln for ln in tap.output(2_000_000).splitlines() if '"tracker"' in ln]
    if not lines:
        return ""
    text = lines[-1]
    start = text.find('"tracker"')
    return text[start:text.find("}", start) + 1]


def summarise(args: argparse.Namespace, samples: Sequence[Sample], flow_backlog: int) -> None:
    idle = samples[0]
    last = samples[-1]
    flow = [s for s in samples if s.phase == "flow"]
    half = flow[len(flow) // 2] if flow else last
    total = last.tap_mb + last.children_mb
    growth = total - (half.tap_mb + half.children_mb)
    print()
    print(f"mode {args.mode}, settings {args.settings or 'hq.settings'}, {args.conns} "
          f"connections, {args.open_jobs} open jobs, "
          f"{args.rate:.0f} jobs/s flowing for {args.minutes} min "
          f"(flow backlog at the end: {flow_backlog})")
    print(f"baseline (idle, after start): tap {idle.tap_mb:.1f} MB ({idle.tap_anon_mb:.1f} "
          f"anonymous) + children {idle.children_mb:.1f} MB")
    print(f"end: tap {last.tap_mb:.1f} MB ({last.tap_anon_mb:.1f} anonymous) + children "
          f"{last.children_mb:.1f} MB = {total:.1f} MB;"
          f" peak {max(s.tap_mb + s.children_mb for s in samples):.1f} MB;"
          f" second-half growth {growth:+.1f} MB")
    verdict = "MET" if last.tap_mb < TARGET_MB else "NOT MET"
    print(f"target: the tap's RSS < {TARGET_MB:.0f} MB: {verdict} ({last.tap_mb:.1f} MB; with "
          f"its children, whose RSS is mostly tcpdump's kernel capture ring: {total:.1f} MB)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    load = sub.add_parser("load", help="(internal) the load process")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--conns", type=int, required=True)
    load.add_argument("--open-jobs", type=int, required=True)
    load.add_argument("--rate", type=float, required=True)
    load.add_argument("--open-fn", required=True)
    load.add_argument("--flow-fn", required=True)
    wrap = sub.add_parser("tapwrap", help="(internal) run the tap with a tracemalloc dump")
    wrap.add_argument("--out", required=True)
    wrap.add_argument("--top", type=int, default=25)
    wrap.add_argument("rest", nargs=argparse.REMAINDER)
    ap.add_argument("--mode", choices=("capture", "proxy"), default="capture")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--open-jobs", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=2000.0, help="flowing jobs/s")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--settings", default="",
                    help="DJANGO_SETTINGS_MODULE for the tap (e.g. hq.tap.settings, what "
                         "hq-tap uses; default: manage.py's hq.settings)")
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                    help="run the tap under tracemalloc and report its top sites")
    args = ap.parse_args(argv)
    if args.cmd == "tapwrap" and args.rest[:1] == ["--"]:
        args.rest = args.rest[1:]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cmd == "load":
        load_main(args)
        return 0
    if args.cmd == "tapwrap":
        tapwrap_main(args)
        return 0
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
