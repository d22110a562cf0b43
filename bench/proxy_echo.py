"""Proxy-mode microbench: latency and throughput through broker.proxy vs direct gearmand.

Prints a table; every ratio is against direct gearmand measured in the same run (the
machines are noisy, so never compare numbers across runs). Not a test: nothing asserts.

    .venv/bin/python bench/proxy_echo.py [--pings 20000] [--jobs 50000] [--conns 4]

* latency: one blocking client, ECHO_REQ -> ECHO_RES ping-pong (foreground request/
  response), direct and through the proxy in alternating blocks; p50/p99 in µs.
* throughput, ``--conns`` clients each, a fresh gearmand per run: "cli" = the real C
  client ``gearman -b -n`` (libgearman, one SUBMIT_JOB_BG per round trip, like PHP's
  doBackground loop: small chunks, the proxy's per-chunk cost shows); "pipelined" =
  Python clients sending batches of 200 (large chunks, the proxy's per-byte cost shows).

The proxy runs in its own process with uvloop, as in production, for each variant:
ship inline/thread x sink noop/list.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.launcher import install_uvloop
from broker.proxy import Proxy
from broker.shippers import ShipMode
from broker.stream import ConnKey

HOST = "127.0.0.1"
ECHO_REQ, SUBMIT_JOB_BG = 16, 18


def req(ptype: int, *args: bytes) -> bytes:
    data = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", ptype, len(data)) + data


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection((HOST, port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def start_gearmand(port: int, tmp: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["/usr/sbin/gearmand", f"--listen={HOST}", f"--port={port}", "--log-file=none",
         f"--pid-file={tmp}/gd-{port}.pid"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), to show what the proxy itself burns."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes] | Any) -> None:
    """Terminate a gearmand (Popen) or a proxy (multiprocessing) process and reap it."""
    proc.terminate()
    if isinstance(proc, subprocess.Popen):
        proc.wait(5)
    else:
        proc.join(5)


# ------------------------------------------------------------------------------ sinks


class NoopSink:
    def on_open(self, conn: ConnKey, ts: float, *, mid_stream: bool = False) -> None:
        pass

    def on_data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        pass

    def on_gap(self, conn: ConnKey, from_peer: bool, ts: float, lost: int) -> None:
        pass

    def on_close(self, conn: ConnKey, ts: float) -> None:
        pass


class ListSink(NoopSink):
    """What the real tap's sink does on the hot path: append, consumed elsewhere."""

    def __init__(self) -> None:
        self.chunks: list[tuple[ConnKey, bool, bytes, float]] = []

    def on_data(self, conn: ConnKey, from_peer: bool, data: bytes, ts: float) -> None:
        self.chunks.append((conn, from_peer, data, ts))
        if len(self.chunks) > 100_000:
            self.chunks.clear()


def proxy_main(listen_port: int, upstream_port: int, ship: ShipMode, sink_name: str) -> None:
    install_uvloop()
    sink = ListSink() if sink_name == "list" else NoopSink()
    proxy = Proxy((HOST, listen_port), (HOST, upstream_port), sink, ship=ship)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await proxy.serve_forever()

    asyncio.run(main())


def start_proxy(upstream: int, ship: ShipMode, sink: str) -> tuple[Any, int]:
    port = free_port()
    proc = multiprocessing.get_context("fork").Process(
        target=proxy_main, args=(port, upstream, ship, sink), daemon=True)
    proc.start()
    wait_port(port)
    return proc, port


# ---------------------------------------------------------------------------- clients


def recv_exact(sock: socket.socket, n: int) -> None:
    while n:
        n -= len(sock.recv(n))


def ping_pong(port: int, count: int) -> list[float]:
    """Foreground round trips; returns per-request µs."""
    packet = req(ECHO_REQ, b"x" * 64)
    out: list[float] = []
    with socket.create_connection((HOST, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(200):  # warm up
            s.sendall(packet)
            recv_exact(s, len(packet))
        clock = time.perf_counter
        for _ in range(count):
            t0 = clock()
            s.sendall(packet)
            recv_exact(s, len(packet))
            out.append((clock() - t0) * 1e6)
    return out


def submitter(port: int, jobs: int, batch: int, func: bytes, start: Any, result: Any) -> None:
    """Pipeline SUBMIT_JOB_BG in batches, two batches in flight; count JOB_CREATED."""
    pid = os.getpid()
    batches = [
        b"".join(req(SUBMIT_JOB_BG, func, b"", b"job %d %d" % (pid, b * batch + i))
                 for i in range(batch))
        for b in range(jobs // batch)
    ]
    with socket.create_connection((HOST, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start.wait()
        t0 = time.perf_counter()
        pending, tail = 0, b""
        for data in batches:
            s.sendall(data)
            pending += batch
            while pending > batch:  # keep one more batch in flight
                chunk = tail + s.recv(1 << 20)
                pending -= chunk.count(b"\0RES")
                tail = chunk[-3:]
        while pending > 0:
            chunk = tail + s.recv(1 << 20)
            pending -= chunk.count(b"\0RES")
            tail = chunk[-3:]
        result.put(time.perf_counter() - t0)


def cli_throughput(port: int, conns: int, jobs: int, func: bytes, tmp: str) -> float:
    """``gearman -b -n``: the C client (libgearman), one job per line, one at a time."""
    lines = Path(tmp) / "lines.txt"
    lines.write_bytes(b"".join(b"%d\n" % i for i in range(jobs)))
    cmd = ["gearman", "-h", HOST, "-p", str(port), "-f", func.decode(), "-b", "-n"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdin=lines.open("rb"), stdout=subprocess.DEVNULL)
             for _ in range(conns)]
    for p in procs:
        p.wait()
    return conns * jobs / (time.perf_counter() - t0)


def pipelined_throughput(port: int, conns: int, jobs: int, func: bytes, tmp: str) -> float:
    """Python clients pipelining SUBMIT_JOB_BG in batches of 200 (large chunks)."""
    ctx = multiprocessing.get_context("fork")
    start, result = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=submitter, args=(port, jobs, 200, func, start, result))
             for _ in range(conns)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every client build its batches and connect
    t0 = time.perf_counter()
    start.set()
    for _ in procs:
        result.get(timeout=300)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    return conns * jobs / elapsed


# ------------------------------------------------------------------------------- main

VARIANTS: list[tuple[ShipMode, str]] = [
    ("inline", "noop"), ("inline", "list"), ("thread", "noop"), ("thread", "list")]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def bench_latency(pings: int, tmp: str) -> None:
    gd_port = free_port()
    gd = start_gearmand(gd_port, tmp)
    try:
        print(f"\nlatency: {pings} ECHO round trips each, alternating blocks of 2000")
        print(f"{'path':<22}{'p50 µs':>10}{'p99 µs':>10}{'+p50':>8}{'+p99':>8}")
        for ship, sink in VARIANTS:
            proxy, port = start_proxy(gd_port, ship, sink)
            direct: list[float] = []
            proxied: list[float] = []
            for _ in range(max(1, pings // 2000)):
                direct += ping_pong(gd_port, 2000)
                proxied += ping_pong(port, 2000)
            stop(proxy)
            d50, d99, p50, p99 = (pct(direct, 50), pct(direct, 99), pct(proxied, 50),
                                  pct(proxied, 99))
            print(f"{'direct':<22}{d50:>10.1f}{d99:>10.1f}")
            print(f"{'proxy ' + ship + '/' + sink:<22}{p50:>10.1f}{p99:>10.1f}"
                  f"{p50 - d50:>8.1f}{p99 - d99:>8.1f}")
    finally:
        stop(gd)


def bench_throughput(load: str, jobs: int, conns: int, rounds: int, tmp: str) -> None:
    run = cli_throughput if load == "cli" else pipelined_throughput
    print(f"\nthroughput ({load}): {conns} connections x {jobs} SUBMIT_JOB_BG; "
          f"best of {rounds} alternating runs, fresh gearmand each")
    print(run.__doc__)
    print(f"{'path':<22}{'jobs/s':>10}{'ratio':>8}{'gearmand µs/job':>17}{'proxy µs/job':>14}")
    best: dict[str, float] = {}
    cpu: dict[str, tuple[float, float]] = {}
    for r in range(rounds):
        for name in ["direct"] + [f"{s}/{k}" for s, k in VARIANTS]:
            gd_port = free_port()
            gd = start_gearmand(gd_port, tmp)
            proxy = None
            port = gd_port
            if name != "direct":
                ship, sink = name.split("/")
                proxy, port = start_proxy(gd_port, ship, sink)  # type: ignore[arg-type]
            gd0 = cpu_seconds(gd.pid)
            px0 = cpu_seconds(proxy.pid) if proxy is not None else 0.0
            rate = run(port, conns, jobs, b"bench%d" % r, tmp)
            per_job = 1e6 / (conns * jobs)
            used = ((cpu_seconds(gd.pid) - gd0) * per_job,
                    (cpu_seconds(proxy.pid) - px0) * per_job if proxy is not None else 0.0)
            if rate > best.get(name, 0.0):
                best[name], cpu[name] = rate, used
            if proxy is not None:
                stop(proxy)
            stop(gd)
    for name, rate in best.items():
        gd_us, px_us = cpu[name]
        print(f"{name:<22}{rate:>10.0f}{rate / best['direct']:>8.2f}{gd_us:>17.1f}{px_us:>14.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pings", type=int, default=20000)
    ap.add_argument("--jobs", type=int, default=50000, help="per connection, pipelined")
    ap.add_argument("--cli-jobs", type=int, default=20000, help="per connection, cli")
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_latency:
            bench_latency(args.pings, tmp)
        if not args.skip_throughput:
            bench_throughput("cli", args.cli_jobs, args.conns, args.rounds, tmp)
            bench_throughput("pipelined", args.jobs, args.conns, args.rounds, tmp)


if __name__ == "__main__":
    main()
