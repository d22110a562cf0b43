"""Many live-stream clients on one web tier (benchmark, not a test).

Starts the web server the way `make run` does (``python -m hq.serve``, or daphne), opens
N websocket clients of ``/ws/live/?token=…`` (a viewer token; by default no subscription:
every client gets every message, the worst case; ``--filters K`` spreads them over K
function subscriptions), then publishes live messages the way the tap's publisher does
under load (``monitoring.live.send_now``: encoded once, one Redis PUBLISH, fanned out by
each web process): at 2,000 jobs/s the coalescer sends one ``job`` message per server
every ``HQ_LIVE_INTERVAL_MS`` (500 ms) carrying the counts and the latest jobs of each
function, whatever the job rate. Each message carries the time it was published
(CLOCK_MONOTONIC, shared by every process here), so every client's receive time gives a
publish → client latency.

Prints: clients connected, publish → client p50/p95/p99 and messages missed over all
clients, the web tier's memory (RSS of the server's processes) idle, with the clients
connected, and after the run, and its CPU while publishing (also per delivered copy), with
the load average around the run. What it does not run: capture and ingest of real jobs
(``bench/live.py`` measures event → client with one client and the whole pipeline).

    REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/python bench/ws_load.py \
        [--clients 1000] [--seconds 20] [--filters 4] [--server hq.serve] \
        [--database-url postgres://postgres@127.0.0.1:5432/hq_bench_ws]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from api_load import env_for, start_server, token
from common import (
    group_cpu_seconds,
    machine_info,
    percentile,
    prepare_database,
    process_set,
)

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = 4
JOBS_PER_FUNCTION = 10  # SAMPLES_PER_FUNCTION of monitoring.live


def job_message(seq: int, interval_s: float) -> dict[str, object]:
    """A coalesced ``job`` message as the publisher sends it at 2,000 jobs/s."""
    per_function = int(2000 * interval_s / FUNCTIONS)
    functions = {f"fn_{f}": {"changed": per_function,
                             "states": {"completed": per_function - 2, "failed": 2}}
                 for f in range(FUNCTIONS)}
    jobs = [{"id": seq * 1000 + i, "handle": f"H:bench:{seq * 1000 + i}",
             "function": f"fn_{i % FUNCTIONS}", "state": "completed", "server": "bench"}
            for i in range(FUNCTIONS * JOBS_PER_FUNCTION)]
    return {"type": "job", "server": "bench", "at": time.time(), "changed": 2000 * interval_s,
            "functions": functions, "jobs": jobs, "truncated": True, "seq": seq,
            "sent": time.monotonic()}


def rss_mib(pgid: int) -> float:
    """Resident memory of every process in the group ``pgid``, MiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != pgid:  # field 5 (pgrp), after the ")" of comm
                continue
            total += int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


class Clients:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.received: dict[int, int] = {}
        self.connected = 0
        self.failed = 0

    async def one(self, url: str, ready: asyncio.Event, stop: asyncio.Event,
                  function: str | None = None) -> None:
        import websockets

        try:
            async with websockets.connect(url, open_timeout=60, max_size=2**22) as ws:
                if function is not None:
                    await ws.send(json.dumps({"subscribe": {"function": function}}))
                    ack = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    assert ack.get("type") == "subscribed", ack
                self.connected += 1
                ready.set()
                while not stop.is_set():
                    try:
                        raw = await asyncio.wait_for(ws.recv(), timeout=1)
                    except TimeoutError:
                        continue
                    now = time.monotonic()
                    msg = json.loads(raw)
                    if "sent" in msg:
                        self.latencies.append((now - float(msg["sent"])) * 1000)
                        self.received[msg["seq"]] = self.received.get(msg["seq"], 0) + 1
        except Exception as exc:  # refused, reset: counted
            self.failed += 1
            if self.failed <= 3:
                print(f"  client failed: {exc!r}", flush=True)


async def publish(n: int, interval_s: float) -> None:
    """As the publisher thread does: each message encoded once, published once to Redis."""
    from monitoring import live

    for seq in range(n):
        live.send_now(job_message(seq, interval_s))
        await asyncio.sleep(interval_s)


def client_filter(i: int, filters: int) -> str | None:
    """Client ``i``'s function subscription: with ``filters`` = k, one client in k + 1 takes
    everything and the others subscribe to one of k functions, round robin."""
    slot = i % (filters + 1)
    return None if slot == 0 else f"fn_{(slot - 1) % FUNCTIONS}"


async def run(url: str, clients: int, seconds: float, interval_s: float, pgid: int,
              filters: int = 0) -> dict[str, float]:
    c, stop = Clients(), asyncio.Event()
    figures = {"rss_idle_mib": rss_mib(pgid), "load_before": os.getloadavg()[0]}
    started = time.monotonic()
    tasks = []
    for i in range(clients):  # in waves, as browsers would arrive, not one SYN flood
        tasks.append(asyncio.create_task(c.one(url, asyncio.Event(), stop,
                                               client_filter(i, filters))))
        if i % 50 == 49:
            await asyncio.sleep(0.2)
    while c.connected + c.failed < clients and time.monotonic() - started < 120:
        await asyncio.sleep(0.2)
    figures["connect_s"] = time.monotonic() - started
    await asyncio.sleep(2)
    figures["rss_connected_mib"] = rss_mib(pgid)
    messages = int(seconds / interval_s)
    cpu_web, cpu_self = group_cpu_seconds(pgid), time.process_time()
    await publish(messages, interval_s)
    await asyncio.sleep(3)
    figures["cpu_web_s"] = group_cpu_seconds(pgid) - cpu_web
    figures["cpu_bench_s"] = time.process_time() - cpu_self
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    figures["rss_after_mib"] = rss_mib(pgid)
    lat = sorted(c.latencies)
    expected = messages * c.connected
    figures.update(connected=c.connected, failed=c.failed, messages=messages,
                   delivered=len(lat), missed=expected - len(lat),
                   p50_ms=percentile(lat, 50) if lat else float("nan"),
                   p95_ms=percentile(lat, 95) if lat else float("nan"),
                   p99_ms=percentile(lat, 99) if lat else float("nan"))
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url",
                   default="postgres://postgres@127.0.0.1:5432/hq_bench_api")
    p.add_argument("--server", choices=["hq.serve", "asgi", "daphne"], default="hq.serve")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20.0, help="of publishing")
    p.add_argument("--interval-ms", type=int, default=500, help="HQ_LIVE_INTERVAL_MS")
    p.add_argument("--filters", type=int, default=0, choices=range(FUNCTIONS + 1),
                   help="clients subscribe to one of this many functions (one in N+1 to "
                        "none); 0 = no subscription, every client gets every message")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.clients * 2 + 256)),
                                                hard))
    info = machine_info()
    print(f"# bench/ws_load.py  {info.get('cpu', '')}  server={args.server}  "
          f"clients={args.clients}")
    prepare_database(args.database_url, migrate=True)
    os.environ.update({k: v for k, v in env_for(args.database_url).items()
                       if k in ("DATABASE_URL", "HQ_SECRET_KEY", "DJANGO_SETTINGS_MODULE")})
    import django

    django.setup()
    tok = token(args.database_url)
    with process_set() as procs:
        _http_port, port = start_server(procs, args.server, args.database_url)
        pgid = procs.procs[-1].pid
        url = f"ws://127.0.0.1:{port}/ws/live/?token={tok}"
        f = asyncio.run(run(url, args.clients, args.seconds, args.interval_ms / 1000, pgid,
                            args.filters))
    print("\n| server | clients connected / failed | messages | delivered / missed | "
          "publish → client p50 / p95 / p99 ms | web RSS idle / connected / after MiB |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.server} | {f['connected']:.0f} / {f['failed']:.0f} | {f['messages']:.0f} | "
          f"{f['delivered']:,.0f} / {f['missed']:,.0f} | {f['p50_ms']:.0f} / {f['p95_ms']:.0f} / "
          f"{f['p99_ms']:.0f} | {f['rss_idle_mib']:.0f} / {f['rss_connected_mib']:.0f} / "
          f"{f['rss_after_mib']:.0f} |")
    per_copy_us = f["cpu_web_s"] / f["delivered"] * 1e6 if f["delivered"] else float("nan")
    print(f"(connected in {f['connect_s']:.1f} s; CPU while publishing: web tier "
          f"{f['cpu_web_s']:.1f} s = {per_copy_us:.0f} µs per delivered copy, this bench's "
          f"clients and publisher {f['cpu_bench_s']:.1f} s; load average before "
          f"{f['load_before']:.2f}, after {os.getloadavg()[0]:.2f})")
    return 0 if f["failed"] == 0 and f["missed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
