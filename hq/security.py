"""Refusing to serve with a secret key everyone knows.

``hq/settings.py`` falls back to :data:`DEV_SECRET_KEY` so that imports without any
environment work (``mypy``'s Django plugin, ``manage.py`` commands, tests). The processes
that sign anything — the web server (``hq/asgi.py``: daphne, ``runserver``) and Celery
(``hq/celery.py``: worker, beat) — call :func:`require_secret_key` when they start, and
refuse to run without a real key unless ``HQ_DEBUG`` is on.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

#: the public fallback in hq/settings.py: fine for a laptop with HQ_DEBUG=1, nowhere else
DEV_SECRET_KEY = "dev-only-insecure-key-set-HQ_SECRET_KEY-in-production"
#: keys that are published (in this repository) and so protect nothing
KNOWN_KEYS = frozenset({DEV_SECRET_KEY, ""})


def secret_key_problem(*, key: str, debug: bool) -> str | None:
    """Why ``key`` may not be used (None when it may)."""
    if debug:
        return None
    if key.strip() in KNOWN_KEYS:
        return ("HQ_SECRET_KEY is not set (or is the public development default), so "
                "sessions and CSRF tokens could be forged. Set HQ_SECRET_KEY to a long random "
                "string, e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(50))' "
                "(make run keeps one in var/secret_key), or set HQ_DEBUG=1 on a development "
                "machine.")
    return None


def require_secret_key() -> None:
    problem = secret_key_problem(key=settings.SECRET_KEY, debug=settings.DEBUG)
    if problem:
        raise ImproperlyConfigured(problem)
