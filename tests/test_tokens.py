"""API tokens: ``/api/v1/tokens/``, expiry and last use, the Tokens page, ``hq_token
--list/--revoke`` and ``hq_setup``'s one "make-run" token."""

from __future__ import annotations

import io
import stat
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from hq import auth as hq_auth
from hq.models import ApiToken, Role, hash_token
from hq.services import issue_token
from tests.support.users import make_user

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser
    from django.test import Client

pytestmark = pytest.mark.django_db


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


class Clock:
    """The monotonic clock hq.auth reads, moved by the test (the outside edge)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(hq_auth.time, "monotonic", lambda: self.now)

    def after_the_cache(self) -> None:
        self.now += hq_auth.TOKEN_CACHE_S + 0.1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- the REST contract


def test_create_shows_the_token_once_and_it_works(vera: AbstractUser) -> None:
    client = bearer(issue_token(vera))
    r = client.post("/api/v1/tokens/", {"name": "nightly export"}, format="json")
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"id", "name", "user", "prefix", "created_at", "last_used_at",
                         "expires_at", "token"}
    assert body["name"] == "nightly export" and body["user"] == "vera"
    assert body["token"].startswith(body["prefix"]) and body["expires_at"] is None
    assert bearer(body["token"]).get("/api/v1/jobs/").status_code == 200
    # never again: neither the list nor the detail carries it
    listed = client.get("/api/v1/tokens/").json()["results"]
    assert all("token" not in t for t in listed)
    assert "token" not in client.get(f"/api/v1/tokens/{body['id']}/").json()


def test_stored_tokens_are_hashes(vera: AbstractUser) -> None:
    raw = issue_token(vera, name="x")
    row = ApiToken.objects.get(user=vera)
    assert row.digest == hash_token(raw) and raw not in (row.digest, row.prefix, row.name)
    assert len(row.prefix) < len(raw) // 3


def test_list_is_yours_and_an_admin_sees_all(vera: AbstractUser, opal: AbstractUser,
                                             ada: AbstractUser) -> None:
    issue_token(vera, name="vera's script")
    opal_client = bearer(issue_token(opal, name="opal's"))
    names = {t["name"] for t in opal_client.get("/api/v1/tokens/").json()["results"]}
    assert names == {"opal's"}
    admin_seen = bearer(issue_token(ada)).get("/api/v1/tokens/").json()["results"]
    assert {t["user"] for t in admin_seen} == {"vera", "opal", "ada"}


def test_revoke_own_yes_others_no_admin_any(vera: AbstractUser, opal: AbstractUser,
                                            ada: AbstractUser) -> None:
    vera_raw = issue_token(vera)
    vera_token = ApiToken.objects.get(user=vera)
    opal_client = bearer(issue_token(opal))
    r = opal_client.delete(f"/api/v1/tokens/{vera_token.pk}/")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert bearer(vera_raw).get("/api/v1/jobs/").status_code == 200

    admin = bearer(issue_token(ada))
    assert admin.delete(f"/api/v1/tokens/{vera_token.pk}/").status_code == 204
    r = bearer(vera_raw).get("/api/v1/jobs/")
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]

    own = opal_client.post("/api/v1/tokens/", {"name": "tmp"}, format="json").json()
    assert opal_client.delete(f"/api/v1/tokens/{own['id']}/").status_code == 204
    assert bearer(own["token"]).get("/api/v1/jobs/").status_code == 401


def test_an_expired_token_is_401_with_a_clear_message(opal: AbstractUser, clock: Clock) -> None:
    client = bearer(issue_token(opal))
    soon = timezone.now() + timedelta(days=1)
    body = client.post("/api/v1/tokens/", {"name": "short", "expires_at": soon.isoformat()},
                       format="json").json()
    assert body["expires_at"]
    assert bearer(body["token"]).get("/api/v1/jobs/").status_code == 200
    ApiToken.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(1))
    clock.after_the_cache()  # changed behind the web process's back (no signal)
    r = bearer(body["token"]).get("/api/v1/jobs/")
    assert r.status_code == 401
    assert r["WWW-Authenticate"].startswith("Bearer")
    error = r.json()["error"]
    assert error["code"] == "unauthenticated" and "expired" in error["message"]
    assert body["prefix"] in error["message"]


def test_expiry_must_be_in_the_future(opal: AbstractUser) -> None:
    client = bearer(issue_token(opal))
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    r = client.post("/api/v1/tokens/", {"expires_at": past}, format="json")
    assert r.status_code == 400 and "expires_at" in r.json()["error"]["fields"]
    r = client.post("/api/v1/tokens/", {"name": "n" * 101}, format="json")
    assert r.status_code == 400 and "name" in r.json()["error"]["fields"]


def test_last_used_is_written_at_most_once_a_minute(vera: AbstractUser, clock: Clock) -> None:
    raw = issue_token(vera)
    token = ApiToken.objects.get(user=vera)
    assert token.last_used_at is None
    bearer(raw).get("/api/v1/jobs/")
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    recently = timezone.now() - timedelta(seconds=30)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=recently)
    clock.after_the_cache()
    bearer(raw).get("/api/v1/jobs/")
    token.refresh_from_db()
    assert token.last_used_at == recently  # not written again within the minute
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=recently - timedelta(minutes=1))
    clock.after_the_cache()
    bearer(raw).get("/api/v1/jobs/")
    token.refresh_from_db()
    assert token.last_used_at > recently


def test_a_deactivated_users_token_stops_working(vera: AbstractUser) -> None:
    raw = issue_token(vera)
    vera.is_active = False
    vera.save()
    r = bearer(raw).get("/api/v1/jobs/")
    assert r.status_code == 401 and "deactivated" in r.json()["error"]["message"]


def test_a_session_may_use_the_tokens_api_with_csrf(viewer: Client) -> None:
    r = viewer.get("/api/v1/tokens/")
    assert r.status_code == 200 and r.json()["results"] == []


# ---------------------------------------------------------------- the Tokens page


def test_tokens_page_creates_shows_once_and_revokes(opal: AbstractUser, operator: Client,
                                                   vera: AbstractUser) -> None:
    issue_token(vera, name="vera's secret script")
    r = operator.post("/tokens/", {"name": "cron on box-7", "expires_in": "30"})
    assert r.status_code == 200
    html = r.content.decode()
    token = ApiToken.objects.get(user=opal, name="cron on box-7")
    secret = html.split('id="new-token">')[1].split("<")[0]
    assert token.digest == hash_token(secret)
    assert "no-store" in r["Cache-Control"]
    assert token.expires_at is not None
    page = operator.get("/tokens/").content.decode()
    assert secret not in page and token.prefix in page
    assert "vera&#x27;s secret script" not in page and "vera's secret script" not in page

    vera_token = ApiToken.objects.get(user=vera)
    assert operator.post(f"/tokens/{vera_token.pk}/revoke/").status_code == 404
    assert ApiToken.objects.filter(pk=vera_token.pk).exists()
    assert operator.post(f"/tokens/{token.pk}/revoke/").status_code == 302
    assert not ApiToken.objects.filter(pk=token.pk).exists()


def test_an_admin_sees_and_revokes_anyones_token_on_the_page(admin: Client,
                                                            vera: AbstractUser) -> None:
    issue_token(vera, name="vera's script")
    token = ApiToken.objects.get(user=vera)
    page = admin.get("/tokens/").content.decode()
    assert "vera" in page and token.prefix in page
    assert admin.post(f"/tokens/{token.pk}/revoke/").status_code == 302
    assert not ApiToken.objects.filter(pk=token.pk).exists()


def test_tokens_page_needs_sign_in(client: Client) -> None:
    assert client.get("/tokens/")["Location"].startswith("/login/")
    assert client.post("/tokens/", {"name": "x"}).status_code == 302
    assert not ApiToken.objects.exists()


# ---------------------------------------------------------------- manage.py hq_token


def test_hq_token_prints_a_named_expiring_token_last(db: None) -> None:
    out, _ = run("hq_token", "--user", "ci", "--role", "operator", "--name", "deploys",
                 "--expires-days", "7")
    raw = out.strip().splitlines()[-1]
    token = ApiToken.objects.get(digest=hash_token(raw))
    assert token.name == "deploys" and token.expires_at is not None
    assert token.user.username == "ci"


def test_hq_token_list_and_revoke_by_id_or_prefix(vera: AbstractUser, opal: AbstractUser) -> None:
    raw1 = issue_token(vera, name="one")
    raw2 = issue_token(opal, name="two")
    t1, t2 = ApiToken.objects.get(name="one"), ApiToken.objects.get(name="two")
    out, _ = run("hq_token", "--list")
    assert t1.prefix in out and t2.prefix in out and "one" in out and "vera" in out
    assert raw1 not in out and raw2 not in out
    only_vera, _ = run("hq_token", "--list", "--user", "vera")
    assert t1.prefix in only_vera and t2.prefix not in only_vera

    out, _ = run("hq_token", "--revoke", str(t1.pk))
    assert "revoked" in out and not ApiToken.objects.filter(pk=t1.pk).exists()
    run("hq_token", "--revoke", t2.prefix)
    assert not ApiToken.objects.exists()
    with pytest.raises(CommandError, match="No token"):
        run("hq_token", "--revoke", "hq_nothing")


def test_hq_token_refuses_an_ambiguous_prefix(vera: AbstractUser) -> None:
    for _ in range(2):
        ApiToken.objects.create(user=vera, digest=hash_token(str(_)), prefix="hq_same")
    with pytest.raises(CommandError, match="Several"):
        run("hq_token", "--revoke", "hq_same")
    assert ApiToken.objects.count() == 2


# ---------------------------------------------------------------- manage.py hq_setup


def _setup(token_file: Path | None = None, *extra: str) -> tuple[dict[str, str], str]:
    args = ["hq_setup", *(["--token-file", str(token_file)] if token_file else []), *extra]
    out, err = run(*args)
    lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return lines, err


def test_hq_setup_mints_one_make_run_token_and_reuses_it(tmp_path: Path) -> None:
    token_file = tmp_path / "var" / "api_token"
    first, _ = _setup(token_file)
    raw = first["HQ_API_TOKEN"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == raw
    assert bearer(raw).get("/api/v1/jobs/").status_code == 200

    second, err = _setup(token_file)
    assert second["HQ_API_TOKEN"] == raw and "reusing" in err
    assert second["HQ_ADMIN_PASSWORD"] != first["HQ_ADMIN_PASSWORD"]
    assert ApiToken.objects.filter(name="make-run").count() == 1


def test_hq_setup_without_the_file_says_where_the_token_went(tmp_path: Path) -> None:
    token_file = tmp_path / "api_token"
    raw = _setup(token_file)[0]["HQ_API_TOKEN"]
    token_file.unlink()
    lines, err = _setup(token_file)
    assert "HQ_API_TOKEN" not in lines
    assert str(token_file) in err and "--new-token" in err and raw[:10] in err
    assert ApiToken.objects.filter(name="make-run").count() == 1
    assert bearer(raw).get("/api/v1/jobs/").status_code == 200  # still valid

    renewed = _setup(token_file, "--new-token")[0]["HQ_API_TOKEN"]
    assert renewed != raw and token_file.read_text().strip() == renewed
    assert ApiToken.objects.filter(name="make-run").count() == 1
    assert bearer(raw).get("/api/v1/jobs/").status_code == 401


def test_hq_setup_without_a_token_file_prints_it_only_the_first_time(db: None) -> None:
    assert "HQ_API_TOKEN" in _setup()[0]
    lines, err = _setup()
    assert "HQ_API_TOKEN" not in lines and "cannot be shown again" in err


def test_an_expired_make_run_token_is_replaced(tmp_path: Path) -> None:
    token_file = tmp_path / "api_token"
    raw = _setup(token_file)[0]["HQ_API_TOKEN"]
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert _setup(token_file)[0]["HQ_API_TOKEN"] != raw


def test_make_user_role_helper_still_gives_tokens(db: None) -> None:
    # the shared test helper keeps working with the named-token signature
    user = make_user("tess", Role.VIEWER)
    assert bearer(issue_token(user)).get("/api/v1/tokens/").status_code == 200


def test_a_token_is_looked_up_once_per_cache_period_and_changes_here_apply_at_once(
    vera: AbstractUser, clock: Clock, django_assert_num_queries: Any
) -> None:
    raw = issue_token(vera)
    client = bearer(raw)
    assert client.get("/api/v1/servers/").status_code == 200  # token, role, last used...
    with django_assert_num_queries(1):  # only the servers: token and role remembered
        assert client.get("/api/v1/servers/").status_code == 200
    # changed elsewhere (another process, no signal here): seen once the period is over
    ApiToken.objects.filter(user=vera).update(expires_at=timezone.now() - timedelta(1))
    assert client.get("/api/v1/servers/").status_code == 200
    clock.after_the_cache()
    assert client.get("/api/v1/servers/").status_code == 401
    # revoked in this process: at once
    raw2 = issue_token(vera)
    assert bearer(raw2).get("/api/v1/servers/").status_code == 200
    ApiToken.objects.get(digest=hash_token(raw2)).delete()
    assert bearer(raw2).get("/api/v1/servers/").status_code == 401
