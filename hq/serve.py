"""The production web server: ``python -m hq.serve [--bind HOST:PORT] [--workers N]``.

gunicorn supervises ``HQ_WEB_WORKERS`` uvicorn worker processes (``uvicorn-worker``), each
serving HTTP and the ``/ws/live/`` websockets of ``hq.asgi:application`` on its own event
loop (uvloop, httptools). gunicorn restarts a worker that dies or stops answering its
heartbeat, and recycles each after ``HQ_WEB_MAX_REQUESTS`` requests (with jitter) so a
slow leak cannot grow without bound. README "Serving many clients" says why this server.

Before a worker imports Django this sets ``HQ_PROCESS=web``, which gives each worker a
psycopg pool of ``HQ_DB_POOL_MAX`` connections (hq/settings.py); it refuses to start when
``workers × HQ_DB_POOL_MAX`` is over ``HQ_WEB_DB_CONNECTIONS``, the web tier's share of
Postgres.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Sequence
from typing import Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

from .env import env_int, env_str


class HQWorker(UvicornWorker):
    """uvicorn inside gunicorn, set up for HQ: uvloop + httptools, the ``websockets``
    library for ``/ws/live/``, no ASGI lifespan (Django has none)."""

    CONFIG_KWARGS = {
        "loop": "uvloop", "http": "httptools", "ws": "websockets", "lifespan": "off",
        # a browser tab's live stream: pings keep proxies from cutting an idle one; a
        # client message larger than this is refused (the consumer takes small JSON only)
        "ws_ping_interval": 20.0, "ws_ping_timeout": 20.0, "ws_max_size": 64 * 1024,
        # no per-message deflate: it compresses every message again for every client
        # (the fan-out encodes each once), 2.5 s instead of 0.9 s of CPU and 500 instead of
        # 300 MiB for 1,000 clients in bench/ws_load.py; a message is a few KB of JSON
        "ws_per_message_deflate": False,
        "server_header": False,
    }


class Server(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from hq.asgi import application

        return application


def budget_problem(workers: int, pool_max: int, budget: int) -> str | None:
    """Why ``workers`` processes with pools of ``pool_max`` do not fit the web tier's
    Postgres budget, or None when they do."""
    if workers < 1:
        return f"HQ_WEB_WORKERS must be at least 1 (got {workers})"
    if workers * pool_max > budget:
        return (f"{workers} web workers × HQ_DB_POOL_MAX={pool_max} = {workers * pool_max} "
                f"Postgres connections, over HQ_WEB_DB_CONNECTIONS={budget}: lower one of "
                "the first two or raise the budget (README \"Serving many clients\")")
    return None


def options(bind: str, workers: int) -> dict[str, Any]:
    return {
        "bind": [bind],
        "workers": workers,
        "worker_class": "hq.serve.HQWorker",
        # seconds: a worker that misses its heartbeat this long is restarted; the time a
        # stopping worker gets to finish its requests; an idle keep-alive connection's life
        "timeout": 60,
        "graceful_timeout": 10,  # make run waits 15 s before SIGKILL
        "keepalive": env_int("HQ_WEB_KEEPALIVE_S", 30),
        "backlog": 2048,
        "max_requests": env_int("HQ_WEB_MAX_REQUESTS", 100_000),
        "max_requests_jitter": env_int("HQ_WEB_MAX_REQUESTS", 100_000) // 10,
        "accesslog": "-" if env_str("HQ_WEB_ACCESS_LOG", "") == "1" else None,
        "errorlog": "-",
        "loglevel": env_str("HQ_LOG_LEVEL", "INFO").lower(),
        "proc_name": "hq-web",
        "forwarded_allow_ips": env_str("HQ_FORWARDED_ALLOW_IPS", "127.0.0.1"),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hq.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--bind", default=env_str("HQ_HTTP", "127.0.0.1:8000"),
                   help="HOST:PORT (default HQ_HTTP, else 127.0.0.1:8000)")
    p.add_argument("--workers", type=int, default=env_int("HQ_WEB_WORKERS", 2),
                   help="server processes (default HQ_WEB_WORKERS, else 2)")
    return p.parse_args(argv)


def raise_open_files_limit() -> None:
    """Every websocket is a file descriptor: take the hard limit (a thousand live clients
    would not fit the usual soft limit of 1024 with Postgres, Redis and log files)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files_limit()
    os.environ["HQ_PROCESS"] = "web"
    os.environ["HQ_WEB_WORKERS"] = str(args.workers)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
    from django.conf import settings

    problem = budget_problem(args.workers, settings.HQ_DB_POOL_MAX,
                             settings.HQ_WEB_DB_CONNECTIONS)
    if problem:
        print(f"hq.serve: {problem}", file=sys.stderr)
        return 2
    Server(options(args.bind, args.workers)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
