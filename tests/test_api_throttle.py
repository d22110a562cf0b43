"""Per-token rate limits (hq/throttles.py): over ``HQ_API_RATE`` requests in the window the
API answers 429 in the JSON error shape with ``Retry-After``; admins are exempt unless told
otherwise; a limit that cannot be checked (Redis down) refuses nobody."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from django.test import override_settings

from tests.support.users import api_client

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser
    from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def _statuses(client: APIClient, n: int, path: str = "/api/v1/servers/") -> list[int]:
    return [client.get(path).status_code for _ in range(n)]


@override_settings(HQ_API_RATE=3, HQ_API_RATE_WINDOW_S=3600)
def test_over_the_limit_is_a_429_in_the_error_shape_with_retry_after(
        api_viewer: APIClient) -> None:
    assert _statuses(api_viewer, 3) == [200, 200, 200]
    r = api_viewer.get("/api/v1/jobs/")
    assert r.status_code == 429
    assert r["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == "rate_limited"
    assert body["error"]["message"]
    assert 1 <= int(r["Retry-After"]) <= 3600
    assert api_viewer.post("/api/v1/tokens/", {"name": "x"}, format="json").status_code == 429


@override_settings(HQ_API_RATE=2, HQ_API_RATE_WINDOW_S=3600)
def test_each_token_has_its_own_count(vera: AbstractUser) -> None:
    first, second = api_client(vera), api_client(vera)
    assert _statuses(first, 3) == [200, 200, 429]
    assert _statuses(second, 2) == [200, 200]  # the same user's other script is not starved
    assert _statuses(first, 1) == [429]


@override_settings(HQ_API_RATE=2, HQ_API_RATE_WINDOW_S=3600)
def test_admins_are_exempt_unless_the_setting_says_otherwise(ada: AbstractUser) -> None:
    admin = api_client(ada)
    assert _statuses(admin, 5) == [200] * 5
    with override_settings(HQ_API_RATE_ADMINS_EXEMPT=False):
        assert _statuses(admin, 1) == [429]


@override_settings(HQ_API_RATE=0)
def test_a_rate_of_zero_is_no_limit(api_viewer: APIClient) -> None:
    assert _statuses(api_viewer, 30) == [200] * 30


@override_settings(HQ_API_RATE=1, HQ_API_RATE_WINDOW_S=3600,
                   REDIS_URL="redis://127.0.0.1:9/0")  # nothing listens on port 9
def test_redis_down_refuses_nobody(api_viewer: APIClient) -> None:
    assert _statuses(api_viewer, 3) == [200, 200, 200]


@override_settings(HQ_API_RATE=2, HQ_API_RATE_WINDOW_S=3600)
def test_the_web_ui_s_own_api_calls_count_per_user(viewer: object, vera: AbstractUser) -> None:
    from django.test import Client

    assert isinstance(viewer, Client)
    assert [viewer.get("/api/v1/servers/").status_code for _ in range(3)] == [200, 200, 429]
    assert _statuses(api_client(vera), 1) == [200]  # her token is counted apart


@override_settings(HQ_API_RATE=60, HQ_API_RATE_WINDOW_S=3600)
def test_far_from_the_limit_requests_reach_redis_in_batches_and_the_limit_stays_exact(
        vera: AbstractUser) -> None:
    """Each process adds its requests to Redis in batches (hq/throttles.py SYNC_EVERY) while
    the next batch cannot cross the limit, and on every request after that: the 61st of 60
    is refused, not the 61st plus a batch."""
    import time

    from rest_framework.test import APIClient

    from hq.models import hash_token
    from hq.services import issue_token
    from hq.shared_cache import client, redis_key
    from hq.throttles import SYNC_EVERY

    raw = issue_token(vera)
    script = APIClient()
    script.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    key = redis_key(f"rate:t:{hash_token(raw)[:24]}:{int(time.time() // 3600)}")
    assert _statuses(script, 5) == [200] * 5
    assert int(client().get(key) or 0) < 5  # batched: the first request, not every one
    assert _statuses(script, 55) == [200] * 55
    assert _statuses(script, 2) == [429, 429]
    assert int(client().get(key) or 0) >= 60 - SYNC_EVERY
