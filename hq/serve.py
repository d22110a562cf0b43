"""The production web server: ``python -m hq.serve [--bind HOST:PORT] [--workers N]
[--ws-bind HOST:PORT] [--ws-workers N]``.

Two servers, each the one that measured fastest for its part (README "Serving many
clients", ``bench/api_load.py``):

- **HTTP** on ``--bind`` (``HQ_HTTP``, 127.0.0.1:8000): granian's WSGI server (HTTP parsed
  in Rust) with ``HQ_WEB_WORKERS`` processes, each calling Django's WSGI handler
  (``hq.wsgi``) on ``HQ_WEB_THREADS`` threads (3 × 2 by default: a thread of a busy
  process waits for the GIL after each database round trip, so more processes with
  fewer threads keep the tail short). Against gunicorn + uvicorn workers, where
  every request crossed from the event loop to a thread and back, it spends about 40 %
  less CPU per API request. granian respawns a worker that dies, and one whose memory
  stays over ``HQ_WEB_MAX_RSS_MB``.
- **The live websocket** ``/ws/live/`` on ``--ws-bind`` (``HQ_WS``, 127.0.0.1:8001):
  gunicorn supervising ``HQ_WS_WORKERS`` uvicorn workers (uvloop, httptools, the
  ``websockets`` library) running ``hq.asgi``, which answers HTTP too, so that port is a
  whole HQ on its own. Pages find it through ``HQ_LIVE_URL`` (set here to ``:PORT``, the
  page's own host on that port, unless you set it: ``/ws/live/`` behind a proxy that routes
  it, or a full ``wss://`` URL).

This process starts both (``python -m hq.serve http|ws`` each), stops both on
SIGTERM/SIGINT, and stops the other when one dies, so that ``make run``, systemd or Docker
see one service. Before a worker imports Django it sets ``HQ_PROCESS=web``, which gives each
process a psycopg pool (hq/settings.py): ``HQ_DB_POOL_MAX`` connections per HTTP worker,
``HQ_WS_DB_POOL_MAX`` per websocket worker; it refuses to start when their sum is over
``HQ_WEB_DB_CONNECTIONS``, the web tier's share of Postgres.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from .env import env_int, env_str

PARTS = ("all", "http", "ws")


def _ws_worker_class() -> type:
    from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

    class HQWorker(UvicornWorker):
        """uvicorn inside gunicorn, set up for HQ: uvloop + httptools, the ``websockets``
        library for ``/ws/live/``, no ASGI lifespan (Django has none)."""

        CONFIG_KWARGS = {
            "loop": "uvloop", "http": "httptools", "ws": "websockets", "lifespan": "off",
            # a browser tab's live stream: pings keep proxies from cutting an idle one; a
            # client message larger than this is refused (the consumer takes small JSON)
            "ws_ping_interval": 20.0, "ws_ping_timeout": 20.0, "ws_max_size": 64 * 1024,
            # no per-message deflate: it compresses every message again for every client
            # (the fan-out encodes each once), 2.5 s instead of 0.9 s of CPU and 500
            # instead of 300 MiB for 1,000 clients in bench/ws_load.py
            "ws_per_message_deflate": False,
            "server_header": False,
        }

    return HQWorker


def budget_problem(workers: int, pool_max: int, budget: int, ws_workers: int = 0,
                   ws_pool_max: int = 0) -> str | None:
    """Why ``workers`` HTTP processes with pools of ``pool_max`` (and ``ws_workers``
    websocket processes with pools of ``ws_pool_max``) do not fit the web tier's Postgres
    budget, or None when they do."""
    if workers < 1:
        return f"HQ_WEB_WORKERS must be at least 1 (got {workers})"
    if ws_workers < 0:
        return f"HQ_WS_WORKERS must be 0 or more (got {ws_workers})"
    total = workers * pool_max + ws_workers * ws_pool_max
    if total > budget:
        ws = (f" + {ws_workers} websocket workers × HQ_WS_DB_POOL_MAX={ws_pool_max}"
              if ws_workers else "")
        return (f"{workers} web workers × HQ_DB_POOL_MAX={pool_max}{ws} = {total} "
                f"Postgres connections, over HQ_WEB_DB_CONNECTIONS={budget}: lower the "
                "workers or pools, or raise the budget (README \"Serving many clients\")")
    return None


def _host_port(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"hq.serve: {bind!r} is not HOST:PORT")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def serve_http(bind: str, workers: int) -> None:
    """granian, WSGI, ``workers`` processes × ``HQ_WEB_THREADS`` threads (blocks)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    host, port = _host_port(bind)
    max_rss = env_int("HQ_WEB_MAX_RSS_MB", 512)
    threads = env_int("HQ_WEB_THREADS", env_int("HQ_DB_POOL_MAX", 2))
    Granian(
        "hq.wsgi:application", address=host, port=port, interface=Interfaces.WSGI,
        workers=workers, blocking_threads=threads,
        http=HTTPModes.http1, websockets=False, backlog=2048,
        http1_settings=HTTP1Settings(keep_alive=True, header_read_timeout=30_000),
        log_level=env_str("HQ_LOG_LEVEL", "INFO").lower(),  # type: ignore[arg-type]
        log_access=env_str("HQ_WEB_ACCESS_LOG", "") == "1",
        respawn_failed_workers=True, respawn_interval=1.0,
        workers_max_rss=max_rss or None, rss_sample_interval=30, rss_samples=3,
        workers_kill_timeout=10,
    ).serve()


def ws_options(bind: str, workers: int) -> dict[str, Any]:
    return {
        "bind": [bind],
        "workers": workers,
        # seconds: a worker that misses its heartbeat this long is restarted; the time a
        # stopping worker gets to finish; an idle keep-alive connection's life
        "timeout": 60,
        "graceful_timeout": 10,  # make run waits 15 s before SIGKILL
        "keepalive": env_int("HQ_WEB_KEEPALIVE_S", 30),
        "backlog": 2048,
        "max_requests": env_int("HQ_WEB_MAX_REQUESTS", 100_000),
        "max_requests_jitter": env_int("HQ_WEB_MAX_REQUESTS", 100_000) // 10,
        "accesslog": "-" if env_str("HQ_WEB_ACCESS_LOG", "") == "1" else None,
        "errorlog": "-",
        "loglevel": env_str("HQ_LOG_LEVEL", "INFO").lower(),
        "proc_name": "hq-live",
        "forwarded_allow_ips": env_str("HQ_FORWARDED_ALLOW_IPS", "127.0.0.1"),
    }


def serve_ws(bind: str, workers: int) -> None:
    """gunicorn + uvicorn workers running hq.asgi (blocks)."""
    from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

    worker_class = _ws_worker_class()

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in ws_options(bind, workers).items():
                self.cfg.set(key, value)
            self.cfg.set("worker_class", worker_class)

        def load(self) -> Any:
            from hq.asgi import application

            return application

    Server().run()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hq.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("part", nargs="?", choices=PARTS, default="all",
                   help="both servers (default), or only one of them")
    p.add_argument("--bind", default=env_str("HQ_HTTP", "127.0.0.1:8000"),
                   help="HTTP HOST:PORT (default HQ_HTTP, else 127.0.0.1:8000)")
    p.add_argument("--workers", type=int, default=env_int("HQ_WEB_WORKERS", 3),
                   help="HTTP server processes (default HQ_WEB_WORKERS, else 3)")
    p.add_argument("--ws-bind", default=env_str("HQ_WS", "127.0.0.1:8001"),
                   help="live websocket HOST:PORT (default HQ_WS, else 127.0.0.1:8001)")
    p.add_argument("--ws-workers", type=int, default=env_int("HQ_WS_WORKERS", 2),
                   help="websocket server processes (default HQ_WS_WORKERS, else 2; 0: none)")
    return p.parse_args(argv)


def raise_open_files_limit() -> None:
    """Every websocket is a file descriptor: take the hard limit (a thousand live clients
    would not fit the usual soft limit of 1024 with Postgres, Redis and log files)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _child_env(part: str, args: argparse.Namespace) -> dict[str, str]:
    env = {**os.environ, "HQ_PROCESS": "web", "DJANGO_SETTINGS_MODULE":
           os.environ.get("DJANGO_SETTINGS_MODULE", "hq.settings")}
    if part == "http":
        env["HQ_WEB_WORKERS"] = str(args.workers)
        if args.ws_workers and "HQ_LIVE_URL" not in os.environ:
            env["HQ_LIVE_URL"] = f":{_host_port(args.ws_bind)[1]}"
    else:
        pool = env_int("HQ_WS_DB_POOL_MAX", 2)
        env.update(HQ_DB_POOL_MAX=str(pool), HQ_DB_POOL_MIN="1", HQ_WEB_THREADS=str(pool))
    return env


def _become_subreaper() -> None:
    """Orphans of our children (the workers of a server whose master was killed) become
    ours, so they can be stopped rather than left serving (Linux PR_SET_CHILD_SUBREAPER)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def _children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return pids


def _stop_orphans(grace_s: float = 10.0) -> None:
    """SIGTERM every process left with us, SIGKILL what is still there after ``grace_s``."""
    left = _children()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if os.waitpid(pid, os.WNOHANG) == (0, 0)]
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def supervise(args: argparse.Namespace) -> int:
    """Both servers as children; the first to end ends the other."""
    _become_subreaper()
    parts = ["http"] + (["ws"] if args.ws_workers else [])
    children = {part: subprocess.Popen(
        [sys.executable, "-m", "hq.serve", part, "--bind", args.bind, "--workers",
         str(args.workers), "--ws-bind", args.ws_bind, "--ws-workers", str(args.ws_workers)],
        env=_child_env(part, args)) for part in parts}
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM if signum != signal.SIGINT else signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while children:
        for part, child in list(children.items()):
            if child.poll() is None:
                continue
            del children[part]
            if not stopping:
                print(f"hq.serve: the {part} server exited with {child.returncode}; "
                      "stopping the other", file=sys.stderr, flush=True)
                code = child.returncode or 1
                stop(signal.SIGTERM, None)
        time.sleep(0.2)
    _stop_orphans()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files_limit()
    os.environ["HQ_PROCESS"] = "web"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
    from django.conf import settings

    _host_port(args.bind)
    if args.ws_workers:
        _host_port(args.ws_bind)
    problem = budget_problem(args.workers, settings.HQ_DB_POOL_MAX,
                             settings.HQ_WEB_DB_CONNECTIONS, args.ws_workers,
                             env_int("HQ_WS_DB_POOL_MAX", 2))
    if problem:
        print(f"hq.serve: {problem}", file=sys.stderr)
        return 2
    if args.part == "http":
        serve_http(args.bind, args.workers)
    elif args.part == "ws":
        serve_ws(args.ws_bind, max(args.ws_workers, 1))
    else:
        return supervise(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
