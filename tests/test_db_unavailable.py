"""A database that does not answer is a 503 with ``Retry-After`` — the JSON error shape on the
API, the standalone 503 page in the UI — never an HTML 500 (hq/errors.py, hq/middleware.py).

Two real failures, in-process and without touching the shared Postgres: the connection
pointed at a port where nothing listens (Postgres down), and a psycopg pool of one
connection that another thread holds (every connection busy: the pool times out).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from django.db import connection
from django.test import RequestFactory, override_settings

from hq.middleware import ServiceErrorsMiddleware
from tests.support.stack import free_port

if TYPE_CHECKING:
    from django.test import Client
    from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def settings_dict(**changes: Any) -> Iterator[None]:
    """The default connection, closed and reopened with ``changes`` for the block."""
    saved = {key: connection.settings_dict.get(key) for key in changes}
    connection.close()
    connection.settings_dict.update(changes)
    try:
        yield
    finally:
        connection.close()
        if connection.pool is not None:
            connection.close_pool()
        connection.settings_dict.update(saved)
        connection.ensure_connection()


@contextlib.contextmanager
def postgres_down() -> Iterator[None]:
    with settings_dict(PORT=str(free_port())):
        yield


@contextlib.contextmanager
def pool_exhausted() -> Iterator[None]:
    """A pool of one connection, held by somebody else: a request times out waiting."""
    options = {"pool": {"min_size": 0, "max_size": 1, "timeout": 0.5}}
    with settings_dict(OPTIONS=options, CONN_MAX_AGE=0):
        pool = connection.pool
        assert pool is not None
        pool.open()
        held = pool.getconn()
        try:
            yield
        finally:
            pool.putconn(held)


def _assert_json_503(r: Any) -> None:
    assert r.status_code == 503
    assert r["Content-Type"] == "application/json"
    assert r.json()["error"]["code"] == "unavailable"
    assert r.json()["error"]["message"]
    assert int(r["Retry-After"]) >= 1


@pytest.mark.parametrize("failure", [postgres_down, pool_exhausted])
@override_settings(HQ_DB_RETRY_AFTER_S=7)
def test_the_api_answers_503_json_with_retry_after(api_viewer: APIClient,
                                                   failure: Any) -> None:
    with failure():
        for path in ("/api/v1/jobs/?handle=H:x:1", "/api/v1/queues/", "/api/v1/workers/",
                     "/api/v1/jobs/1/"):
            r = api_viewer.get(path)
            _assert_json_503(r)
            assert r["Retry-After"] == "7"
    assert api_viewer.get("/api/v1/jobs/").status_code == 200  # and back when it answers


@pytest.mark.parametrize("failure", [postgres_down, pool_exhausted])
def test_the_ui_shows_the_503_page(viewer: Client, failure: Any) -> None:
    with failure():
        for path in ("/", "/workers/", "/jobs/"):
            r = viewer.get(path)
            assert r.status_code == 503, path
            assert r["Content-Type"].startswith("text/html")
            assert int(r["Retry-After"]) >= 1
            assert b"The database is not answering" in r.content
        # a script on a UI address that asks for JSON gets JSON
        _assert_json_503(viewer.get("/workers/", HTTP_ACCEPT="application/json"))
    assert viewer.get("/workers/").status_code == 200


def test_healthz_says_which_check_failed(client: Client) -> None:
    with postgres_down():
        r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["checks"]["database"].startswith("error")


def test_any_other_error_under_the_api_is_a_json_500() -> None:
    request = RequestFactory().get("/api/v1/jobs/")
    middleware = ServiceErrorsMiddleware(lambda r: None)  # type: ignore[arg-type, return-value]
    r = middleware.process_exception(request, RuntimeError("a bug"))
    assert r is not None and r.status_code == 500
    assert r["Content-Type"] == "application/json"
    assert r.content.startswith(b'{"error": {"code": "server_error"')
    # outside the API Django's own 500 handling stays
    assert middleware.process_exception(RequestFactory().get("/"), RuntimeError("x")) is None
