"""Typed helpers for settings read from the environment (prefix ``HQ_``)."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from exc


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict[str, object]:
    """``postgres://user:pass@host:port/name`` → a Django DATABASES entry."""
    parts = urlparse(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise SystemExit(f"DATABASE_URL must be a postgres:// URL, got {url!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "gearman_hq",
        "USER": unquote(parts.username or "postgres"),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or 5432),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        # a Postgres that does not answer fails a request (503 + Retry-After) or a task
        # in seconds, rather than holding a worker for the OS's TCP timeout (minutes)
        "OPTIONS": {"connect_timeout": 5},
    }


def web_pool(*, min_size: int, max_size: int, timeout_s: int) -> dict[str, object]:
    """What a web server process adds to its DATABASES entry: Django's psycopg pool
    (``psycopg[pool]``) of at most ``max_size`` connections, handed back at the end of every
    request (``CONN_MAX_AGE`` must be 0 with a pool); a request waits ``timeout_s`` seconds
    at most for one. ``max_lifetime``/``max_idle`` let Postgres see old connections renewed."""
    if max_size < 1 or not 0 <= min_size <= max_size:
        raise SystemExit(f"HQ_DB_POOL_MAX must be ≥ 1 and HQ_DB_POOL_MIN between 0 and it "
                         f"(got min {min_size}, max {max_size})")
    return {
        "CONN_MAX_AGE": 0,
        # no round trip before each request: a connection Postgres dropped (a restart)
        # fails its one request with a 503 + Retry-After and the pool discards it
        "CONN_HEALTH_CHECKS": False,
        # named, so pg_stat_activity tells the web tier's connections from the others
        "OPTIONS": {"application_name": "gearman-hq-web", "connect_timeout": 5,
                    "pool": {"min_size": min_size, "max_size": max_size,
                             "timeout": float(timeout_s), "max_lifetime": 1800.0,
                             "max_idle": 300.0}},
    }
