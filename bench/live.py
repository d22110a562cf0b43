"""Event → websocket message latency of HQ's live stream under a steady job load.

One run, on its own database (default `gearman_hq_bench_live`) and Redis db (`--redis-db`):

  private gearmand ← load (background jobs at --rate for --seconds, asyncio clients in a
  child process) and 2 PHP workers (bench/php/worker.php), so every job is created, started
  and completed; `manage.py gearman_capture` taps gearmand's port → Postgres → the live
  publisher (coalesced, one message per server per HQ_LIVE_INTERVAL_MS) → Redis channel
  layer → the websocket server as make run starts it (``python -m hq.serve ws``: gunicorn
  + uvicorn workers) → websocket clients of `/ws/live/?token=...` (a viewer token).

Measured, all on CLOCK_MONOTONIC (shared by every process of the machine):

  latest jobs         one unfiltered client; for every load job that appears in a `job`
                      message (the coalesced messages carry the latest jobs), the first
                      receive time - the time the bench sent its SUBMIT_JOB_BG.
  subscribed handles  a pool of clients, each subscribed to one exact handle; every Nth job
                      (--sample-every). gearmand numbers handles sequentially, so the bench
                      subscribes to the handle a job *will* get --lead seconds before it is
                      submitted (the tap reloads watched handles every second): the job
                      page case, where a client must see its job whatever the burst. An
                      unbiased sample, unlike "latest jobs", which are the newest of each
                      batch and so the freshest. Every websocket joins the same group and
                      gets every message (its consumer filters), so the pool is kept small
                      (about 20 sockets by default; it grows, up to --handle-conns-max, only
                      while all of them wait for slow jobs, rather than skip those).
  baseline            `monitoring.live.publish()` called in this process → the same
                      unfiltered client: the transport floor (publisher thread, Redis
                      channel layer, websocket server) without capture and ingest; idle before the
                      load, and again during it.

    .venv/bin/python bench/live.py                 # 5,000 jobs/s for 20 s (~40 s)
    .venv/bin/python bench/live.py --quick         # 5 s of load
    .venv/bin/python bench/live.py --rate 2000 --seconds 30 --json var/bench-live.json

This is a benchmark, not a test: it prints figures and the target (p95 < 1 s), and exits 0
whatever they are (1 only when the bench itself failed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import secrets
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # bench/ is a directory of scripts, not a package
    PHP_DIR,
    PROJECT_DIR,
    AdminConn,
    BenchError,
    Proc,
    ProcessSet,
    free_port,
    group_cpu_seconds,
    machine_info,
    percentile,
    prepare_database,
    process_set,
    raise_on_termination_signals,
    start_gearmand,
    wait_exit,
    wait_for_drain,
    wait_for_port,
    wait_for_workers,
)

HOST = "127.0.0.1"
DEFAULT_DB_URL = "postgres://postgres@127.0.0.1:5432/gearman_hq_bench_live"
SERVER = "benchlive"
TARGET_P95_MS = 1000.0
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PING_TYPE = "bench_ping"
#: the tap reloads the watched handles this often (monitoring.live.WATCH_REFRESH_S)
WATCH_REFRESH_S = 1.0
NS = 1_000_000_000
MACHINE = "machine (all processes)"


# --------------------------------------------------------------------------- websocket client


class WebSocketClosed(Exception):
    pass


class WebSocket:
    """A minimal RFC 6455 client on asyncio streams (no extensions, text frames).

    A reader task stamps every message with time.monotonic_ns() as soon as its last byte
    is read, parses the JSON and queues `(recv_ns, message)`.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.messages: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, host: str, port: int, path: str, timeout: float = 10.0) -> WebSocket:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)).decode("latin1")
        status, *lines = head.split("\r\n")
        if status.split(" ")[1:2] != ["101"]:
            writer.close()
            raise BenchError(f"websocket handshake refused: {status}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            writer.close()
            raise BenchError(f"websocket handshake: bad Sec-WebSocket-Accept in {head!r}")
        return cls(reader, writer)

    async def send_json(self, obj: Any) -> None:
        self._send_frame(0x1, json.dumps(obj).encode())
        await self.writer.drain()

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))  # small frames only
        self.writer.write(head + mask + masked)

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", await self.reader.readexactly(8))
        mask = await self.reader.readexactly(4) if b1 & 0x80 else b""
        payload = await self.reader.readexactly(n)
        if mask:
            payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        return bool(b0 & 0x80), b0 & 0x0F, payload

    async def _read_loop(self) -> None:
        parts: list[bytes] = []
        try:
            while True:
                fin, opcode, payload = await self._read_frame()
                if opcode == 0x8:  # close
                    self.close_code = struct.unpack(">H", payload[:2])[0] if payload else 1005
                    return
                if opcode == 0x9:  # ping
                    self._send_frame(0xA, payload)
                    continue
                if opcode == 0xA:
                    continue
                parts.append(payload)
                if fin:
                    recv_ns = time.monotonic_ns()
                    data, parts = b"".join(parts), []
                    try:
                        message = json.loads(data)
                    except ValueError:
                        message = {"type": "?", "raw": data[:200].decode(errors="replace")}
                    self.messages.put_nowait((recv_ns, message))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()

    async def next(self, timeout: float) -> tuple[int, Any] | None:
        """The next message, or None after timeout; WebSocketClosed once closed and empty."""
        if self.messages.empty() and self.closed.is_set():
            raise WebSocketClosed(f"closed ({self.close_code})")
        getter = asyncio.ensure_future(self.messages.get())
        closed = asyncio.ensure_future(self.closed.wait())
        done, _ = await asyncio.wait(
            {getter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        closed.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.closed.is_set() and self.messages.empty():
            raise WebSocketClosed(f"closed ({self.close_code})")
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._send_frame(0x8, struct.pack(">H", 1000))
            await asyncio.wait_for(self.writer.drain(), 1)
        self._task.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1)


async def open_live(port: int, token: str) -> WebSocket:
    """A websocket on /ws/live/, checked to be authenticated (it answers a subscribe)."""
    ws = await WebSocket.connect(HOST, port, f"/ws/live/?token={token}")
    await ws.send_json({"subscribe": {}})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            got = await ws.next(0.5)
        except WebSocketClosed as exc:
            raise BenchError(f"/ws/live/ {exc}: bad token?") from exc
        if got and got[1].get("type") == "subscribed":
            return ws
    raise BenchError("/ws/live/ did not answer a subscribe within 10 s")


# --------------------------------------------------------------------------- load (child)


def load_child(spec: dict[str, Any]) -> int:
    """Submit background jobs at spec['rate']/s from spec['conns'] connections, starting at
    monotonic spec['t0_ns'], until spec['seconds'] are over. Writes "handle sent_ns
    reply_ns" per job to spec['out'], and a JSON summary line to stdout."""
    sys.path.insert(0, str(PROJECT_DIR))
    from broker.client import Client, GearmanError

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    rate, conns, t0 = float(spec["rate"]), int(spec["conns"]), int(spec["t0_ns"])
    total = int(rate * spec["seconds"])
    end_ns = t0 + int(spec["seconds"] * NS)
    step_ns = NS / rate
    records: list[list[tuple[str, int, int]]] = [[] for _ in range(conns)]
    errors: list[str] = []
    behind = [0]  # jobs sent more than 10 ms after their slot

    async def one(i: int) -> None:
        client = Client(spec["host"], int(spec["port"]))
        out = records[i]
        try:
            for k in range(i, total, conns):
                due = t0 + int(k * step_ns)
                now = time.monotonic_ns()
                if now >= end_ns:
                    break
                if due > now:
                    await asyncio.sleep((due - now) / NS)
                elif now - due > 10_000_000:
                    behind[0] += 1
                payload = b'{"seq":%d,"kind":"bench-live","pad":"%s"}' % (k, b"x" * 48)
                sent = time.monotonic_ns()
                job = await client.submit(spec["function"], payload, background=True)
                out.append((job.handle, sent, time.monotonic_ns()))
        except (GearmanError, OSError) as exc:
            errors.append(f"connection {i}: {exc}")
        finally:
            await client.close()

    async def run() -> None:
        await asyncio.gather(*(one(i) for i in range(conns)))

    asyncio.run(run())
    rows = sorted((r for rs in records for r in rs), key=lambda r: r[1])
    with open(spec["out"], "w") as fh:
        fh.writelines(f"{h} {s} {r}\n" for h, s, r in rows)
    summary = {
        "planned": total,
        "submitted": len(rows),
        "first_ns": rows[0][1] if rows else 0,
        "last_ns": rows[-1][2] if rows else 0,
        "late_10ms": behind[0],
        "cpu_s": time.process_time(),
        "errors": errors,
    }
    print(json.dumps(summary), flush=True)
    return 0 if not errors else 1


# --------------------------------------------------------------------------- config, results


@dataclass
class Config:
    rate: float
    seconds: float
    conns: int
    workers: int
    sample_every: int
    handle_conns: int
    handle_conns_max: int
    lead_s: float
    pings_idle: int
    ping_every_s: float
    grace_s: float
    db_url: str
    redis_url: str
    interval_ms: int | None
    interface: str
    gearmand_threads: int
    migrate: bool
    json_path: Path | None

    @property
    def dbname(self) -> str:
        return self.db_url.rsplit("/", 1)[-1].split("?", 1)[0]


@dataclass
class Stats:
    samples: int = 0
    p50: float = float("nan")
    p95: float = float("nan")
    p99: float = float("nan")
    max: float = float("nan")

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Stats:
        if not values_ms:
            return cls()
        return cls(
            len(values_ms),
            percentile(values_ms, 50),
            percentile(values_ms, 95),
            percentile(values_ms, 99),
            max(values_ms),
        )


@dataclass
class Outcome:
    function: str = ""
    interval_ms: int = 0
    planned: int = 0
    submitted: int = 0
    load_s: float = 0.0
    jobs_per_s: float = 0.0
    late_10ms: int = 0
    load_errors: list[str] = field(default_factory=list)
    drained: bool = False
    tap_stats: dict[str, Any] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    jobs_seen: int = 0
    latest: Stats = field(default_factory=Stats)
    latest_to_publish: Stats = field(default_factory=Stats)
    latest_publish_to_client: Stats = field(default_factory=Stats)
    subscribed: Stats = field(default_factory=Stats)
    targets: int = 0
    targets_missed: int = 0
    targets_skipped: int = 0
    handle_websockets: int = 0
    baseline_idle: Stats = field(default_factory=Stats)
    baseline_load: Stats = field(default_factory=Stats)
    baseline_lost: int = 0
    latest_windows: list[tuple[float, Stats]] = field(default_factory=list)
    cpu_window_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # name -> CPUs used (1.0 = one core)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the run


def wait_for_line(proc: Proc, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.output(200_000):
            return
        if not proc.alive():
            raise BenchError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.output(3000)}")
        time.sleep(0.05)
    raise BenchError(f"{proc.name}: no {text!r} after {timeout:.0f} s:\n{proc.output(3000)}")


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"manage.py {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def reset_redis(redis_url: str) -> None:
    """Forget watched handles, tap stats and stale group members from earlier runs (only
    those keys, in the bench's own Redis db)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    client.delete("hq:live:watch", f"hq:tap:{SERVER}", "asgi:group:live")
    client.close()


def _machine_busy_s() -> float:
    """CPU seconds the whole machine was busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _pid_cpu_s(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")  # utime stime


def cpu_snapshot(procs: ProcessSet, dbname: str) -> dict[str, float]:
    """CPU seconds so far: per started process group (PHP workers summed), this process,
    the whole machine; "pid:NAME:PID" for Postgres backends of dbname and redis-server
    (summed per pid by cpu_used: they are not ours to group); and "wall"."""
    snap: dict[str, float] = {"wall": time.monotonic()}
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if argv.startswith("postgres: ") and f" {dbname} " in argv:
                snap[f"pid:postgres (bench db backends):{proc_dir.name}"] = _pid_cpu_s(
                    proc_dir / "stat"
                )
            elif argv.startswith("redis-server"):
                snap[f"pid:redis-server (shared):{proc_dir.name}"] = _pid_cpu_s(proc_dir / "stat")
    for proc in procs.procs:
        if proc.name == "load":
            continue  # reports its own CPU time when it ends
        name = "php workers" if proc.name.startswith("worker") else proc.name
        name = "gearmand" if name.startswith("gearmand") else name
        snap[name] = snap.get(name, 0.0) + group_cpu_seconds(proc.pid)
    snap["bench (websockets, pings)"] = time.process_time()
    snap[MACHINE] = _machine_busy_s()
    return snap


def tap_final_stats(proc: Proc) -> dict[str, Any]:
    text = proc.log_path.read_text(errors="replace")  # also after stop(): the file stays
    for line in reversed(text.splitlines()):
        if "tap stopped: " in line:
            with contextlib.suppress(ValueError):
                return dict(json.loads(line.split("tap stopped: ", 1)[1]))
    return {}


def run(cfg: Config) -> Outcome:
    out = Outcome(function=f"bench_live_{secrets.token_hex(4)}")
    env = {"DATABASE_URL": cfg.db_url, "REDIS_URL": cfg.redis_url}
    if cfg.interval_ms is not None:
        env["HQ_LIVE_INTERVAL_MS"] = str(cfg.interval_ms)
    prepare_database(cfg.db_url, migrate=cfg.migrate)
    reset_redis(cfg.redis_url)
    with process_set() as procs:
        env["HQ_SPOOL_DIR"] = str(procs.workdir / "spool")
        os.environ.update(env)  # for monitoring.live.publish() in this process
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
        sys.path.insert(0, str(PROJECT_DIR))
        import django

        django.setup()
        from django.conf import settings

        out.interval_ms = settings.HQ_LIVE_INTERVAL_MS

        port = free_port()
        start_gearmand(procs, HOST, port, cfg.gearmand_threads)
        tap_argv = [
            sys.executable,
            "manage.py",
            "gearman_capture",
            "--interface",
            cfg.interface,
            "--port",
            str(port),
            "--server",
            SERVER,
        ]
        # the tap and the websocket server as make run starts them
        tap = procs.spawn("capture", tap_argv, cwd=PROJECT_DIR,
                          env={**env, "DJANGO_SETTINGS_MODULE": "hq.tap.settings"})
        wait_for_line(tap, "HQ capture ready", 60)
        web_port = free_port()
        web = procs.spawn(
            "web-ws",
            [sys.executable, "-m", "hq.serve", "ws", "--ws-bind", f"{HOST}:{web_port}"],
            env={**env, "HQ_SECRET_KEY": "bench-only-secret-key-not-for-production-0123456789",
                 "HQ_LOG_LEVEL": "WARNING"},
            cwd=PROJECT_DIR,
        )
        wait_for_port(HOST, web_port, 60, web)
        token = manage(env, "hq_token", "--user", "bench", "--role", "viewer").strip()
        token = token.splitlines()[-1].strip()
        workers = [
            procs.spawn(
                f"worker{i}", ["php", str(PHP_DIR / "worker.php"), HOST, str(port), out.function]
            )
            for i in range(cfg.workers)
        ]
        with AdminConn(HOST, port) as admin:
            wait_for_workers(admin, out.function, cfg.workers, 15, workers)
        print(
            f"gearmand :{port}, capture → {SERVER!r}, websockets (hq.serve ws) :{web_port}, "
            f"{cfg.workers} PHP workers on {out.function}",
            flush=True,
        )
        try:
            asyncio.run(measure(cfg, procs, out, port, web_port, token))
        finally:
            for name, proc in (("capture", tap), ("web-ws", web)):
                if not proc.alive():
                    out.notes.append(f"{name} died during the run: {proc.output(1500)}")
            procs.stop(tap, timeout=60)
            out.tap_stats = tap_final_stats(tap)
    return out


async def measure(
    cfg: Config, procs: ProcessSet, out: Outcome, port: int, web_port: int, token: str
) -> None:
    from broker.client import Client
    from monitoring import live

    main_ws = await open_live(web_port, token)
    log: list[tuple[int, dict[str, Any]]] = []

    async def collect() -> None:
        with contextlib.suppress(WebSocketClosed):
            while True:
                got = await main_ws.next(1.0)
                if got is not None:
                    log.append(got)

    collector = asyncio.create_task(collect())
    pings: dict[int, tuple[str, int]] = {}  # seq -> (phase, sent_ns)

    def ping(phase: str) -> None:
        seq = len(pings)
        pings[seq] = (phase, time.monotonic_ns())
        live.publish({"type": PING_TYPE, "seq": seq, "phase": phase})

    def pinged() -> set[int]:
        return {m["seq"] for _, m in log if m.get("type") == PING_TYPE}

    async def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.02)

    # -- 1. baseline, idle: publish() in this process → the unfiltered client
    ping("warmup")  # starts the publisher thread and its Redis connection
    await wait_until(lambda: 0 in pinged(), 10, "the first published message")
    for _ in range(cfg.pings_idle):
        ping("idle")
        await asyncio.sleep(0.05)
    await wait_until(lambda: len(pinged()) == len(pings), 10, "the idle baseline messages")

    # -- 2. warm-up jobs: the whole path works, and where gearmand's handles stand now
    client = Client(HOST, port)
    warm = [(await client.submit(out.function, b"warmup")).handle for _ in range(20)]
    await client.close()

    def seen_handles() -> set[str]:
        return {j.get("handle") for _, m in log if m.get("type") == "job" for j in m["jobs"]}

    await wait_until(
        lambda: bool(seen_handles() & set(warm)),
        60,
        "a job message about a warm-up job (is the tap recording?)",
    )
    prefix, _, last = warm[-1].rpartition(":")
    first_num = int(last) + 1

    # -- 3. the handle subscribers, the load, the baseline under load
    total = int(cfg.rate * cfg.seconds)
    t0 = time.monotonic_ns() + int(max(1.5, cfg.lead_s + 0.5) * NS)
    step_ns = NS / cfg.rate
    targets = [
        (f"{prefix}:{first_num + k}", t0 + int(k * step_ns))
        for k in range(cfg.sample_every // 2, total, cfg.sample_every)
    ]
    out.targets = len(targets)
    pool_size = cfg.handle_conns or min(
        cfg.handle_conns_max, math.ceil(cfg.rate / cfg.sample_every * (cfg.lead_s + 1.5)) + 2
    )
    pool: asyncio.Queue[WebSocket] = asyncio.Queue()
    conns = list(await asyncio.gather(*(open_live(web_port, token) for _ in range(pool_size))))
    for ws in conns:
        pool.put_nowait(ws)
    finished = asyncio.Event()
    skipped: set[str] = set()  # no websocket free in time: not measured
    hits: dict[str, int] = {}  # target handle -> first receive on its subscribed socket
    watches: list[asyncio.Task[None]] = []

    async def watch(ws: WebSocket, handle: str, due_ns: int) -> None:
        try:
            await ws.send_json({"subscribe": {"handle": handle}})
            while not finished.is_set():
                got = await ws.next(0.25)
                if got is None:
                    if time.monotonic_ns() > due_ns + 60 * NS:
                        return
                    continue
                recv_ns, msg = got
                if msg.get("type") == "job" and any(j.get("handle") == handle for j in msg["jobs"]):
                    hits[handle] = recv_ns
                    return
        except WebSocketClosed:
            out.notes.append(f"a handle websocket closed: {ws.close_code}")
        finally:
            pool.put_nowait(ws)

    opening = [0]  # handle websockets being opened right now

    async def open_and_watch(handle: str, due_ns: int) -> None:
        opening[0] += 1
        try:
            ws = await open_live(web_port, token)
        except (BenchError, OSError) as exc:
            skipped.add(handle)
            out.notes.append(f"could not open one more handle websocket: {exc}")
            return
        finally:
            opening[0] -= 1
        conns.append(ws)
        await watch(ws, handle, due_ns)

    async def dispatch() -> None:
        # a subscription counts only when it is in Redis over a second before the job
        slack_ns = int(max(0.1, cfg.lead_s - WATCH_REFRESH_S - 0.3) * NS)
        for handle, due_ns in targets:
            sub_at = due_ns - int(cfg.lead_s * NS)
            await asyncio.sleep(max(0, sub_at - time.monotonic_ns()) / NS)
            wait_s = (sub_at + slack_ns - time.monotonic_ns()) / NS
            if pool.empty() and len(conns) + opening[0] < cfg.handle_conns_max:
                # all busy (a slow stream): one more, rather than skip the slow periods
                watches.append(asyncio.create_task(open_and_watch(handle, due_ns)))
                await asyncio.sleep(0)  # let it count itself in `opening`
                continue
            try:
                ws = await asyncio.wait_for(pool.get(), max(0.001, wait_s))
            except TimeoutError:
                skipped.add(handle)
                continue
            watches.append(asyncio.create_task(watch(ws, handle, due_ns)))

    async def pinger() -> None:
        while not finished.is_set():
            ping("load")
            await asyncio.sleep(cfg.ping_every_s)

    submit_file = procs.workdir / "submitted.txt"
    spec = {
        "host": HOST,
        "port": port,
        "function": out.function,
        "rate": cfg.rate,
        "seconds": cfg.seconds,
        "conns": cfg.conns,
        "t0_ns": t0,
        "out": str(submit_file),
    }
    loader = procs.spawn(
        "load",
        [sys.executable, str(Path(__file__).resolve()), "--load-child", json.dumps(spec)],
        cwd=PROJECT_DIR,
    )
    cpu_start = cpu_snapshot(procs, cfg.dbname)
    dispatcher = asyncio.create_task(dispatch())
    pinger_task = asyncio.create_task(pinger())
    print(
        f"load: {cfg.rate:.0f} jobs/s for {cfg.seconds:.0f} s over {cfg.conns} connections; "
        f"{len(targets)} handles to subscribe to on {pool_size} websockets",
        flush=True,
    )
    await asyncio.to_thread(wait_exit, loader, cfg.seconds + 120)
    summary: dict[str, Any] = {}
    for line in reversed(loader.output().splitlines()):
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict) and "submitted" in parsed:
                summary = parsed
                break
    if not summary:
        raise BenchError(f"the load process said nothing useful:\n{loader.output(3000)}")
    out.planned, out.submitted = summary["planned"], summary["submitted"]
    out.load_s = max(1e-9, (summary["last_ns"] - summary["first_ns"]) / NS)
    out.jobs_per_s = out.submitted / out.load_s
    out.late_10ms, out.load_errors = summary["late_10ms"], summary["errors"]
    print(
        f"load done: {out.submitted} jobs in {out.load_s:.1f} s = {out.jobs_per_s:.0f} "
        f"jobs/s; waiting for the workers and the stream to catch up",
        flush=True,
    )

    # -- 4. drain: gearmand empty, then no job message for a while (at most 60 s more)
    def drain() -> None:
        with AdminConn(HOST, port) as admin:
            wait_for_drain(admin, out.function, 120, 0.05)

    try:
        await asyncio.to_thread(drain)
        out.drained = True
    except BenchError as exc:
        out.notes.append(str(exc))
    dispatcher.cancel()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        last_job = max((t for t, m in log if m.get("type") == "job"), default=0)
        if (time.monotonic_ns() - last_job) / NS > cfg.grace_s:
            break  # gearmand is empty and the stream quiet: what has not come, won't
        await asyncio.sleep(0.1)
    finished.set()
    cpu_end = cpu_snapshot(procs, cfg.dbname)
    pinger_task.cancel()
    await asyncio.gather(*watches, return_exceptions=True)
    await asyncio.sleep(0.3)  # the last ping
    for ws in [main_ws, *conns]:
        await ws.close()
    collector.cancel()

    # -- 5. figures
    wall = max(1e-9, cpu_end["wall"] - cpu_start["wall"])
    out.cpu_window_s = wall
    out.cpu["load (asyncio clients)"] = summary.get("cpu_s", 0.0) / wall
    for key, secs in cpu_end.items():
        if key != "wall":
            name = key.split(":")[1] if key.startswith("pid:") else key
            used = max(0.0, secs - cpu_start.get(key, 0.0)) / wall
            out.cpu[name] = out.cpu.get(name, 0.0) + used
    submitted: dict[str, int] = {}
    with submit_file.open() as fh:
        for line in fh:
            handle, sent, _reply = line.split()
            submitted[handle] = int(sent)
    offset_ns = time.time_ns() - time.monotonic_ns()  # wall - monotonic, for message "at"
    target_set = {h for h, _ in targets}
    first_seen: dict[str, tuple[int, float]] = {}
    kinds: Counter[str] = Counter()
    for recv_ns, msg in log:
        kinds[str(msg.get("type"))] += 1
        if msg.get("type") != "job":
            continue
        for job in msg["jobs"]:
            handle = job.get("handle")
            if handle in submitted and handle not in first_seen:
                first_seen[handle] = (recv_ns, float(msg.get("at", 0)))
    out.messages = dict(kinds)
    out.jobs_seen = len(first_seen)
    latest = [(h, r, a) for h, (r, a) in first_seen.items() if h not in target_set]
    out.latest = Stats.of([(r - submitted[h]) / 1e6 for h, r, _ in latest])
    if latest:  # does the stream keep up, or does a backlog grow during the load?
        start = min(submitted[h] for h, _, _ in latest)
        width = max(1.0, cfg.seconds / 5)
        buckets: dict[int, list[float]] = {}
        for h, r, _ in latest:
            buckets.setdefault(int((submitted[h] - start) / NS / width), []).append(
                (r - submitted[h]) / 1e6
            )
        out.latest_windows = [(i * width, Stats.of(v)) for i, v in sorted(buckets.items())]
    out.latest_to_publish = Stats.of(
        [(a * 1e9 - offset_ns - submitted[h]) / 1e6 for h, _, a in latest if a]
    )
    out.latest_publish_to_client = Stats.of(
        [(r - (a * 1e9 - offset_ns)) / 1e6 for _, r, a in latest if a]
    )
    sub = [(hits[h] - submitted[h]) / 1e6 for h in target_set if h in hits and h in submitted]
    out.subscribed = Stats.of(sub)
    out.targets = sum(1 for h in target_set if h in submitted)
    out.handle_websockets = len(conns)
    out.targets_skipped = sum(1 for h in skipped if h in submitted)
    out.targets_missed = sum(
        1 for h in target_set if h in submitted and h not in hits and h not in skipped
    )
    ping_recv = {m["seq"]: t for t, m in log if m.get("type") == PING_TYPE}
    for phase, attr in (("idle", "baseline_idle"), ("load", "baseline_load")):
        lat = [
            (ping_recv[s] - sent) / 1e6
            for s, (p, sent) in pings.items()
            if p == phase and s in ping_recv
        ]
        setattr(out, attr, Stats.of(lat))
    out.baseline_lost = sum(1 for s in pings if s not in ping_recv)


# --------------------------------------------------------------------------- report


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def print_report(cfg: Config, info: dict[str, Any], out: Outcome) -> None:
    tap = out.tap_stats
    writer, source = tap.get("writer", {}), tap.get("source", {})
    print("\nGearman HQ live-stream latency —", info["date"])
    for key in ("host", "nproc", "cpu", "loadavg", "gearmand", "php_gearman"):
        print(f"  {key:<12} {info[key]}")
    print(f"  HQ_LIVE_INTERVAL_MS {out.interval_ms}, function {out.function}")
    print(
        f"\nload       target {cfg.rate:.0f} jobs/s x {cfg.seconds:.0f} s ({out.planned} jobs),"
        f" {cfg.conns} asyncio connections, {cfg.workers} PHP workers"
    )
    print(
        f"           achieved {out.jobs_per_s:.0f} jobs/s: {out.submitted} jobs in"
        f" {out.load_s:.2f} s; {out.late_10ms} sent >10 ms behind schedule;"
        f" drained: {'yes' if out.drained else 'NO'}"
        + (f"; errors: {out.load_errors}" if out.load_errors else "")
    )
    if writer:
        print(
            f"tap        events written {writer.get('events_written')}"
            f" (in {writer.get('events_in')}, batches {writer.get('batches')},"
            f" db_errors {writer.get('db_errors')}, spooled {writer.get('spooled_batches')});"
            f" kernel drops {source.get('kernel_drops')}, gaps {source.get('gaps')}"
        )
    else:
        print("tap        n/a (no final stats line from gearman_capture)")
    msgs = ", ".join(f"{k} {v}" for k, v in sorted(out.messages.items()))
    print(f"websocket  messages received on the unfiltered client: {msgs}")
    print(f"           load jobs seen in job messages: {out.jobs_seen} of {out.submitted}")
    print(
        f"           subscribed handles: {out.targets} targets (every {cfg.sample_every}th"
        f" job), {out.targets_missed} never seen, {out.targets_skipped} skipped"
        f" (no free websocket in time); {out.handle_websockets} websockets used"
    )

    print(f"\n{'latency, ms':<40} {'samples':>8} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
    rows = [
        ("latest jobs: submit → client", out.latest),
        ("  of which submit → publish ('at')", out.latest_to_publish),
        ("  of which publish → client", out.latest_publish_to_client),
        ("subscribed handles: submit → client", out.subscribed),
        ("baseline idle: publish() → client", out.baseline_idle),
        ("baseline under load: publish() → client", out.baseline_load),
    ]
    for name, s in rows:
        print(
            f"{name:<40} {s.samples:>8} {_ms(s.p50):>7} {_ms(s.p95):>7} {_ms(s.p99):>7}"
            f" {_ms(s.max):>7}"
        )
    if out.baseline_lost:
        print(f"  ({out.baseline_lost} baseline messages never arrived)")
    if out.latest_windows:
        cells = "  ".join(f"{t:.0f}s: {_ms(st.p50)}/{_ms(st.p95)}" for t, st in out.latest_windows)
        print(f"latest jobs p50/p95 ms by submit time: {cells}")
    if out.cpu:
        machine = out.cpu.get(MACHINE, float("nan"))
        ours = {k: v for k, v in out.cpu.items() if k != MACHINE}
        cells = ", ".join(f"{k} {v:.2f}" for k, v in sorted(ours.items(), key=lambda x: -x[1]))
        print(
            f"CPUs used from the load's start until the stream went quiet"
            f" ({out.cpu_window_s:.1f} s, {info['nproc']} CPUs):\n  {cells}\n"
            f"  whole machine {machine:.2f}, of which outside this bench's processes"
            f" ≈ {machine - sum(ours.values()):.2f}; loadavg at the end {os.getloadavg()[0]:.2f}"
        )
    base = out.baseline_idle.p95
    print()
    for name, s in (("latest jobs", out.latest), ("subscribed handles", out.subscribed)):
        ratio = s.p95 / base if base and not math.isnan(base) else float("nan")
        verdict = "n/a" if math.isnan(s.p95) else "meets" if s.p95 < TARGET_P95_MS else "MISSES"
        print(
            f"{name:<20} p95 {_ms(s.p95)} ms = {ratio:.0f}x baseline idle p95"
            f" ({_ms(base)} ms); {verdict} the target p95 < {TARGET_P95_MS:.0f} ms"
        )
    for note in out.notes:
        print(f"! {note}")


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> Config | dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=5000.0, help="target jobs/s (5000)")
    p.add_argument("--seconds", type=float, help="load duration (20; --quick 5)")
    p.add_argument("--quick", action="store_true", help="5 s of load")
    p.add_argument("--conns", type=int, default=4, help="submitting gearman connections (4)")
    p.add_argument("--workers", type=int, default=2, help="PHP workers (2)")
    p.add_argument(
        "--sample-every",
        type=int,
        default=0,
        help="subscribe to the handle of every Nth job (0: ~100 per run, at most 5/s: every"
        " websocket receives every live message, so many of them perturb the figures)",
    )
    p.add_argument(
        "--handle-conns",
        type=int,
        default=0,
        help="websockets opened for handle subscriptions up front (0: sized from the rate)",
    )
    p.add_argument(
        "--handle-conns-max",
        type=int,
        default=60,
        help="more are opened while all are waiting for their job, up to this many (60)",
    )
    p.add_argument(
        "--lead",
        type=float,
        default=2.0,
        help="subscribe this many seconds before the job's scheduled submit (2)",
    )
    p.add_argument("--pings", type=int, default=100, help="idle baseline messages (100)")
    p.add_argument(
        "--ping-every",
        type=float,
        default=0.25,
        help="baseline message interval during the load, s (0.25)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=3.0,
        help="after the drain, stop once no job message came for this long (3 s)",
    )
    p.add_argument("--database-url", default=DEFAULT_DB_URL)
    p.add_argument("--redis-db", type=int, default=11, help="Redis db index of the run (11)")
    p.add_argument("--interval-ms", type=int, help="HQ_LIVE_INTERVAL_MS (default: settings')")
    p.add_argument("--interface", default="lo")
    p.add_argument("--gearmand-threads", type=int, default=4)
    p.add_argument("--no-migrate", action="store_true")
    p.add_argument("--json", type=Path, dest="json_path", help="write the figures here")
    p.add_argument("--load-child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.load_child:
        return dict(json.loads(a.load_child))
    if a.rate <= 0 or a.sample_every < 0 or a.conns < 1:
        p.error("--rate and --conns must be positive, --sample-every not negative")
    seconds = a.seconds or (5.0 if a.quick else 20.0)
    return Config(
        rate=a.rate,
        seconds=seconds,
        conns=a.conns,
        workers=a.workers,
        # default: ~100 handles, at most ~5 subscriptions/s (about 20 websockets)
        sample_every=a.sample_every or max(1, int(a.rate * seconds) // 100, int(a.rate // 5)),
        handle_conns=a.handle_conns,
        handle_conns_max=max(1, a.handle_conns_max),
        lead_s=a.lead,
        pings_idle=a.pings,
        ping_every_s=a.ping_every,
        grace_s=a.grace,
        db_url=a.database_url,
        redis_url=f"redis://127.0.0.1:6379/{a.redis_db}",
        interval_ms=a.interval_ms,
        interface=a.interface,
        gearmand_threads=a.gearmand_threads,
        migrate=not a.no_migrate,
        json_path=a.json_path,
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if isinstance(cfg, dict):
        return load_child(cfg)
    raise_on_termination_signals()
    info = machine_info()
    started = time.monotonic()
    try:
        out = run(cfg)
    except BenchError as exc:
        print(f"! bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: every process started has been stopped", file=sys.stderr)
        return 1
    print_report(cfg, info, out)
    print(f"\ntotal bench time {time.monotonic() - started:.0f} s")
    if cfg.json_path:
        data = {
            "machine": info,
            "config": {**asdict(cfg), "json_path": str(cfg.json_path)},
            "outcome": asdict(out),
        }
        cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
        cfg.json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"figures written to {cfg.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
