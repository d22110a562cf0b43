"""Who may reach what: every route needs a session or a token (except /healthz, /login/
and /metrics without HQ_METRICS_TOKEN); viewers read, operators act, admins manage; the
login is rate-limited; the secret key and HTTPS settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.core.cache import cache
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver

from hq.models import ApiToken, Role
from hq.services import issue_token
from tests.support.users import PASSWORD, make_user

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser
    from rest_framework.test import APIClient

ROOT = Path(__file__).resolve().parent.parent
#: reachable without signing in (README "Security")
PUBLIC = {"healthz", "metrics", "login/"}

pytestmark = pytest.mark.django_db


def _routes(patterns: list[Any] | None = None, prefix: str = "") -> Iterator[str]:
    """Every route as an example path: ``<int:pk>`` → 1, other converters and regex groups
    → a word."""
    for p in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(p, URLResolver):
            yield from _routes(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            route = prefix + str(p.pattern)
            route = re.sub(r"<int:\w+>", "1", route)
            route = re.sub(r"<\w+:\w+>|<\w+>", "resize", route)
            route = re.sub(r"\(\?P<\w+>[^)]*\)", "1", route).replace("^", "").replace("$", "")
            yield "/" + route


ROUTES = sorted(set(_routes()))


# ---------------------------------------------------------------- nobody signed in


@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete"])
def test_every_route_needs_a_session_or_a_token(client: Client, method: str,
                                                world: dict[str, Any]) -> None:
    open_to_all = []
    for path in ROUTES:
        if path.lstrip("/") in PUBLIC:
            continue
        r = getattr(client, method)(path)
        if r.status_code < 300 or r.status_code >= 500:
            open_to_all.append(f"{method.upper()} {path}: {r.status_code}")
        elif r.status_code in (301, 302):
            assert r["Location"].startswith("/login/"), (path, r["Location"])
    assert open_to_all == []
    assert len(ROUTES) > 40


def test_the_public_exceptions(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.get("/healthz").status_code in (200, 503)
    assert client.get("/login/").status_code == 200
    assert client.get("/metrics").status_code == 200
    monkeypatch.setenv("HQ_METRICS_TOKEN", "scrape-me")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200


def test_the_api_says_401_in_the_error_shape(client: Client) -> None:
    r = client.get("/api/v1/jobs/")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    r = client.get("/api/v1/jobs/", HTTP_AUTHORIZATION="Bearer hq_not-a-token")
    assert r.status_code == 401 and "Invalid or revoked" in r.json()["error"]["message"]


def test_schema_and_docs_need_sign_in(client: Client, viewer: Client,
                                      api_viewer: APIClient) -> None:
    assert client.get("/api/schema/").status_code == 401
    docs = client.get("/api/docs/")
    assert docs.status_code == 302 and docs["Location"].startswith("/login/")
    assert client.get("/api/docs/?script=").status_code == 302
    schema = api_viewer.get("/api/schema/")
    assert schema.status_code == 200 and b"/api/v1/tokens/" in schema.content
    page = viewer.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    # Swagger UI from the sidecar package (no CDN), its start script a separate request
    assert "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower() and "<style" not in html
    assert not re.search(r"<script>", html)
    script = viewer.get("/api/docs/?script=")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.content.decode()


# ---------------------------------------------------------------- roles


def test_a_viewer_cannot_act(alert_world: dict[str, Any], api_viewer: APIClient,
                             viewer: Client) -> None:
    rule = alert_world["rules"]["deep"]
    critical, slack = alert_world["critical"], alert_world["slack"]
    api = [("post", "/api/v1/alert-rules/"), ("put", f"/api/v1/alert-rules/{rule.pk}/"),
           ("patch", f"/api/v1/alert-rules/{rule.pk}/"),
           ("delete", f"/api/v1/alert-rules/{rule.pk}/"),
           ("post", f"/api/v1/alerts/{critical.pk}/ack/"), ("post", "/api/v1/channels/"),
           ("delete", f"/api/v1/channels/{slack.pk}/"),
           ("post", f"/api/v1/channels/{slack.pk}/test/")]
    for method, url in api:
        r = getattr(api_viewer, method)(url, {}, format="json")
        assert r.status_code == 403, (method, url, r.status_code)
        assert r.json()["error"]["code"] == "permission_denied"
    pages = [f"/alerts/{critical.pk}/ack/", f"/alerts/rules/{rule.pk}/toggle/",
             f"/alerts/rules/{rule.pk}/delete/", "/alerts/rules/new/",
             f"/alerts/channels/{slack.pk}/delete/", "/users/", f"/users/{rule.pk}/role/"]
    for url in pages:
        assert viewer.post(url).status_code == 403, url
    rule.refresh_from_db()  # still there, unchanged
    assert rule.enabled


def test_an_operator_cannot_manage_users_channels_or_others_tokens(
        alert_world: dict[str, Any], api_operator: APIClient, operator: Client,
        vera: AbstractUser) -> None:
    slack = alert_world["slack"]
    assert api_operator.get("/api/v1/channels/").status_code == 403
    assert api_operator.post("/api/v1/channels/", {"name": "x", "url": "json://h/"},
                             format="json").status_code == 403
    assert operator.get("/users/").status_code == 403
    assert operator.post("/users/", {"username": "eve", "role": "admin"}).status_code == 403
    assert operator.post(f"/users/{vera.pk}/role/", {"role": "admin"}).status_code == 403
    assert operator.post(f"/users/{vera.pk}/active/", {"active": "0"}).status_code == 403
    assert operator.post(f"/alerts/channels/{slack.pk}/delete/").status_code == 403
    issue_token(vera)
    theirs = ApiToken.objects.get(user=vera)
    assert api_operator.delete(f"/api/v1/tokens/{theirs.pk}/").status_code == 404
    assert ApiToken.objects.filter(pk=theirs.pk).exists()
    vera.refresh_from_db()
    assert vera.is_active and not vera.is_superuser


def test_the_users_page_creates_changes_role_and_deactivates(
        admin: Client, ada: AbstractUser) -> None:
    r = admin.post("/users/", {"username": "nina", "role": "operator", "password": ""})
    assert r.status_code == 200
    html = r.content.decode()
    password = html.split('id="new-password">')[1].split("<")[0]
    assert "no-store" in r["Cache-Control"]
    nina_client = Client()
    assert nina_client.login(username="nina", password=password)
    assert nina_client.get("/workers/").status_code == 200

    from django.contrib.auth import get_user_model

    nina = get_user_model().objects.get(username="nina")
    page = admin.get("/users/").content.decode()
    assert 'data-user="nina"' in page and password not in page
    assert admin.post(f"/users/{nina.pk}/role/", {"role": "viewer"}).status_code == 302
    from hq.roles import role_of

    assert role_of(nina) == Role.VIEWER
    raw = issue_token(nina)
    assert admin.post(f"/users/{nina.pk}/active/", {"active": "0"}).status_code == 302
    nina.refresh_from_db()
    assert not nina.is_active
    assert nina_client.get("/workers/").status_code == 302  # signed out at the next request
    assert Client().get("/api/v1/jobs/", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401

    # an admin cannot lock themselves out
    admin.post(f"/users/{ada.pk}/active/", {"active": "0"})
    admin.post(f"/users/{ada.pk}/role/", {"role": "viewer"})
    ada.refresh_from_db()
    assert ada.is_active and role_of(ada) == Role.ADMIN
    # and a taken name is refused in the form, nothing created
    r = admin.post("/users/", {"username": "NINA", "role": "viewer"})
    assert r.status_code == 400 and "Taken" in r.content.decode()


# ---------------------------------------------------------------- the login limit


@pytest.fixture
def fresh_limit() -> Iterator[None]:
    cache.clear()  # this run's own prefix only (settings: KEY_PREFIX per test database)
    yield
    cache.clear()


def _fail(client: Client, username: str, **extra: str) -> int:
    return client.post("/login/", {"username": username, "password": "wrong"},
                       **extra).status_code


def test_ten_failed_logins_then_429(fresh_limit: None, db: None) -> None:
    make_user("lena", Role.VIEWER)
    client = Client()
    assert [_fail(client, "lena") for _ in range(10)] == [200] * 10
    r = client.post("/login/", {"username": "lena", "password": PASSWORD})
    assert r.status_code == 429  # even the right password, until the window ends
    assert int(r["Retry-After"]) == 300
    assert "Too many failed sign-ins" in r.content.decode()
    r = client.post("/login/", {"username": "lena", "password": "x"},
                    HTTP_ACCEPT="application/json")
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    # another user name from the same address, or the same name from elsewhere, may try
    make_user("omar", Role.VIEWER)
    assert client.post("/login/", {"username": "omar", "password": PASSWORD}).status_code == 302
    other = Client(REMOTE_ADDR="10.9.8.7")
    assert other.post("/login/", {"username": "lena", "password": PASSWORD}).status_code == 302


def test_a_successful_login_clears_the_count(fresh_limit: None, db: None) -> None:
    make_user("lena", Role.VIEWER)
    client = Client()
    for _ in range(9):
        _fail(client, "lena")
    assert client.post("/login/", {"username": "lena", "password": PASSWORD}).status_code == 302
    client.post("/logout/")
    assert [_fail(client, "LENA ") for _ in range(9)] == [200] * 9


@override_settings(HQ_LOGIN_ATTEMPTS=2)
def test_the_limit_is_a_setting(fresh_limit: None, db: None) -> None:
    client = Client()
    assert [_fail(client, "zed") for _ in range(3)] == [200, 200, 429]


# ---------------------------------------------------------------- settings


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("HQ_SECRET_KEY", "HQ_DEBUG", "HQ_SECURE")}
    base.update(PYTHONPATH=str(ROOT), DJANGO_SETTINGS_MODULE="hq.settings", **env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base, text=True,
                          capture_output=True, timeout=120)


def test_the_web_server_refuses_a_public_secret_key() -> None:
    from hq.security import DEV_SECRET_KEY

    for env in ({}, {"HQ_SECRET_KEY": DEV_SECRET_KEY}, {"HQ_SECRET_KEY": " "}):
        run = _python("import hq.asgi", **env)
        assert run.returncode != 0, env
        assert "ImproperlyConfigured" in run.stderr and "HQ_SECRET_KEY" in run.stderr
    assert _python("import hq.asgi", HQ_SECRET_KEY="s3cret-enough").returncode == 0
    assert _python("import hq.asgi", HQ_DEBUG="1").returncode == 0
    # what mypy's Django plugin and manage.py commands do: set Django up, no key needed
    run = _python("import django; django.setup(); from django.conf import settings; "
                  "print(settings.SECRET_KEY[:8])")
    assert run.returncode == 0, run.stderr


def test_celery_refuses_a_public_secret_key() -> None:
    from hq.celery import _refuse_public_secret_key
    from hq.security import DEV_SECRET_KEY

    with override_settings(SECRET_KEY=DEV_SECRET_KEY, DEBUG=False), \
            pytest.raises(SystemExit, match="HQ_SECRET_KEY"):
        _refuse_public_secret_key()
    with override_settings(SECRET_KEY="long-and-random", DEBUG=False):
        _refuse_public_secret_key()


def test_hq_secure_turns_on_https_settings() -> None:
    code = ("from django.conf import settings as s; print(s.SESSION_COOKIE_SECURE, "
            "s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER)")
    assert _python(code, HQ_SECRET_KEY="k").stdout.split() == ["False", "False", "0", "None"]
    out = _python(code, HQ_SECRET_KEY="k", HQ_SECURE="1").stdout
    assert out.split()[:3] == ["True", "True", "31536000"]
    assert "HTTP_X_FORWARDED_PROTO" in out


@override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
                   SECURE_HSTS_SECONDS=31536000, SESSION_COOKIE_SECURE=True)
def test_behind_a_tls_proxy_responses_carry_hsts(viewer: Client) -> None:
    r = viewer.get("/workers/", HTTP_X_FORWARDED_PROTO="https")
    assert r.status_code == 200 and r["Strict-Transport-Security"].startswith("max-age=")


# ---------------------------------------------------------------- the websocket


@pytest.mark.django_db(transaction=True)
def test_the_websocket_refuses_strangers_and_revoked_tokens(vera: AbstractUser) -> None:
    from asgiref.sync import async_to_sync
    from channels.testing import WebsocketCommunicator

    from hq.asgi import application

    raw = issue_token(vera)

    async def close_code(path: str) -> int | None:
        ws = WebsocketCommunicator(application, path)
        await ws.connect()
        output = await ws.receive_output(timeout=5)
        await ws.disconnect()
        return output.get("code") if output["type"] == "websocket.close" else None

    assert async_to_sync(close_code)("/ws/live/") == 4401
    ApiToken.objects.filter(user=vera).delete()
    assert async_to_sync(close_code)(f"/ws/live/?token={raw}") == 4401
