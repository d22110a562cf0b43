"""A realistic demo workload, so a new user sees a living dashboard at once.

Several functions with different runtimes, progress reports, a few percent failures and
exceptions, a slow low-priority queue that backs up, foreground and background jobs, and
now and then a worker that dies mid-job (gearmand requeues the job: a second attempt).
With several gearmand (``make run`` with ``HQ_GEARMAND_COUNT``) each gets the same workers
and an equal share of the submit rate.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from broker.client import Client, GearmanError, Handler, Job, JobFailed, Worker, WorkFailed


async def resize_image(job: Job) -> bytes:
    spec = json.loads(job.payload)
    for step in range(1, 5):
        await asyncio.sleep(random.uniform(0.01, 0.08))
        await job.status(step, 4)
    if random.random() < 0.03:
        raise ValueError(f"corrupt JPEG header in {spec['path']}")
    return json.dumps({"path": spec["path"], "sizes": [64, 256, 1024]}).encode()


async def send_email(job: Job) -> bytes:
    await asyncio.sleep(random.uniform(0.02, 0.08))
    if random.random() < 0.02:
        raise WorkFailed()
    return b"250 OK queued"


async def generate_report(job: Job) -> bytes:
    total = random.randint(3, 8)
    for step in range(1, total + 1):
        await asyncio.sleep(random.uniform(0.2, 0.6))
        await job.status(step, total)
    return b"report.pdf (%d pages)" % (total * 3)


async def sync_inventory(job: Job) -> bytes:
    await asyncio.sleep(random.uniform(0.005, 0.03))
    return json.dumps({"synced": random.randint(1, 50)}).encode()


class FlakyWorker(Worker):
    """A transcoder that crashes (drops its connection) in the middle of one job in 25."""

    # ``conn`` is broker.client's connection, a class private to broker.client
    async def _work(self, conn: Any, handle: bytes, function: str, payload: bytes) -> None:
        await asyncio.sleep(random.uniform(0.1, 0.4))
        if random.random() < 0.04:
            await conn.close()
            raise GearmanError("simulated worker crash")
        return await super()._work(conn, handle, function, payload)


async def transcode(job: Job) -> bytes:
    return b"ok:" + job.payload[:40]


WORKERS = [
    ("resize", {"resize_image": resize_image}, 2),
    ("mailer", {"send_email": send_email}, 1),
    ("reports", {"generate_report": generate_report}, 1),
    ("inventory", {"sync_inventory": sync_inventory}, 1),
]


async def run_worker(host: str, port: int, name: str, handlers: Mapping[str, Handler],
                     flaky: bool) -> None:
    """Keep one worker connected, reconnecting after crashes or gearmand restarts."""
    while True:
        cls = FlakyWorker if flaky else Worker
        worker = cls(host, port, client_id=name)
        for function, handler in handlers.items():
            worker.register(function, handler)
        try:
            await worker.run()
        except (GearmanError, OSError):
            await asyncio.sleep(1.0 if not flaky else 0.2)


def _payload(function: str, n: int) -> bytes:
    if function == "resize_image":
        return json.dumps({"path": f"/uploads/{n:06d}.jpg", "order": 4000 + n}).encode()
    if function == "send_email":
        return json.dumps({"to": f"user{n % 977}@example.com", "template": "receipt",
                           "order": 4000 + n}).encode()
    if function == "generate_report":
        return json.dumps({"report": "sales", "month": 1 + n % 12}).encode()
    if function == "transcode_video":
        return json.dumps({"video": f"clip-{n}.mov"}).encode()
    return json.dumps({"sku": f"SKU-{n % 500:04d}"}).encode()


async def run_clients(host: str, port: int, rate: float, stop_at: float) -> int:
    client = Client(host, port)
    n = 0
    mix = [("resize_image", "normal", True, 30), ("send_email", "high", True, 30),
           ("generate_report", "low", True, 4), ("transcode_video", "normal", True, 6),
           ("sync_inventory", "normal", False, 10)]
    weights = [m[3] for m in mix]
    while time.monotonic() < stop_at:
        function, priority, background, _ = random.choices(mix, weights)[0]
        n += 1
        try:
            await client.submit(function, _payload(function, n), priority=priority,
                                background=background, unique=f"demo-{function}-{n}")
        except JobFailed:
            pass
        except (GearmanError, OSError):
            await client.close()
            await asyncio.sleep(1.0)
        await asyncio.sleep(random.expovariate(rate))
    await client.close()
    return n


def _workers(host: str, port: int) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(run_worker(host, port, f"{name}-{i}", handlers, False))
             for name, handlers, count in WORKERS for i in range(1, count + 1)]
    tasks.append(asyncio.create_task(
        run_worker(host, port, "transcoder-1", {"transcode_video": transcode}, True)))
    return tasks


async def run_demo(servers: Sequence[tuple[str, int]], rate: float, duration: float) -> int:
    """The workload on every (host, port) in ``servers``: the same workers on each, and
    ``rate`` jobs/s in all, shared equally. Returns the number of jobs submitted."""
    stop_at = time.monotonic() + (duration if duration > 0 else float("inf"))
    tasks = [task for host, port in servers for task in _workers(host, port)]
    share = rate / len(servers)
    try:
        counts = await asyncio.gather(*(run_clients(host, port, share, stop_at)
                                        for host, port in servers))
        return sum(counts)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
