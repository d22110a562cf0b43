"""``GET /healthz``: 200 when Postgres and Redis answer, 503 otherwise (no auth).

The body also says how each tap is (``"taps": {server: {"healthy", "reasons", "text",
"age_s", ...}}``, judged by ``jobs.tap_health`` from what the taps report to Redis): an
unhealthy tap is reported, not turned into a 503, because the web process serving this
is fine; alert on ``hq_tap_healthy`` or the ``tap_health`` rule metric instead.
"""

from __future__ import annotations

import time
from typing import Any

from django.db import connection
from django.http import HttpRequest, JsonResponse

from monitoring import live, selectors


def _check_db() -> str:
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    return "ok"


def _check_redis() -> str:
    live.redis_client().ping()  # the process's pooled client: no new connection per check
    return "ok"


def _taps() -> dict[str, Any]:
    """The taps' health, read from Redis once per ``HQ_SHARED_CACHE_S`` for all requests."""
    try:
        return {server: health.as_json()
                for server, health in sorted(selectors.shared_taps_health().items())}
    except Exception:  # Redis down: the redis check above already says so
        return {}


def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    started = time.monotonic()
    for name, check in (("database", _check_db), ("redis", _check_redis)):
        try:
            checks[name] = check()
        except Exception as exc:  # any failure means "not healthy", reported by name
            checks[name] = f"error: {exc.__class__.__name__}: {exc}".strip()[:200]
    healthy = all(v == "ok" for v in checks.values())
    taps = _taps() if checks["redis"] == "ok" else {}
    body = {"status": "ok" if healthy else "error", "checks": checks,
            "elapsed_ms": round((time.monotonic() - started) * 1000, 1), "taps": taps}
    return JsonResponse(body, status=200 if healthy else 503)
