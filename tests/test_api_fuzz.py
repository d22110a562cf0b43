"""Schemathesis drives every operation of ``/api/schema/`` with generated requests (valid
and invalid) against a live server: no request may get a 500, and every 4xx answer is the
JSON error shape ``{"error": {"code", "message", ...}}`` that scripts rely on.

Bounded for CI (a few examples per operation); ``HQ_API_FUZZ_EXAMPLES`` raises it by hand.
The channel test endpoint is left out: it would send notifications to generated URLs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from broker.client import ServerAddress
from hq.models import Role
from hq.services import ensure_user, issue_token
from jobs import services as job_services
from tests.support.stack import Gearmand

EXAMPLES = int(os.environ.get("HQ_API_FUZZ_EXAMPLES", "12"))


@pytest.fixture
def admin_token(transactional_db: None) -> str:
    return issue_token(ensure_user("fuzz-admin", Role.ADMIN))


@pytest.fixture
def api_schema(live_server: Any, admin_token: str, gearmand: Gearmand,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[schemathesis.BaseSchema]:
    # generated submits go to a real gearmand (no worker runs them); a foreground one
    # waits at most half a second for its result (a longer ?wait= is a 400 here)
    monkeypatch.setattr(job_services, "WAIT_MAX_S", 0.5)
    with override_settings(HQ_GEARMAN_SERVERS=[
            ServerAddress("fuzz", "127.0.0.1", gearmand.port)]):
        yield _schema(live_server, admin_token)


def _schema(live_server: Any, admin_token: str) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(
        f"{live_server.url}/api/schema/?format=json",
        headers={"Authorization": f"Bearer {admin_token}"})
    return schema.exclude(path_regex=r"/channels/\{[^}]+\}/test/")


def error_shape(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                case: schemathesis.Case) -> bool | None:
    """A 4xx from the API speaks HQ's JSON error shape, never HTML or DRF's default."""
    if not 400 <= response.status_code < 500 or response.status_code == 405:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} is not JSON: "
                             f"{response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{response.status_code} without an 'error' object: {body}"
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), body
    return True


def test_no_request_gets_a_server_error(api_schema: schemathesis.BaseSchema,
                                        admin_token: str) -> None:
    """Every operation, with valid (positive) and invalid (negative) generated requests."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]  # the schema is whole
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, checks=[not_a_server_error, error_shape])

            try:
                run()
            except Exception as exc:  # one operation's failure must not hide the others'
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
