"""Fixtures for every test: real gearmand on a free port, HQ's tap in front of it, a local
notification endpoint, the worlds the web pages show, and the people who use HQ, each with
a role:

- ``vera`` a viewer, ``opal`` an operator, ``ada`` an admin (users, password
  ``tests.support.users.PASSWORD``);
- ``viewer``, ``operator``, ``admin``: a Django test client signed in as each of them;
- ``api_viewer``, ``api_operator``, ``api_admin``: a REST client with a bearer token of each.

The helpers behind them are in ``tests/support/``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from jobs.ingest import EventWriter, conninfo_from_settings
from tests.receiver import Receiver
from tests.support.stack import ARTIFACTS, Gearmand, Tap, free_port, spawn_gearmand, start_tap
from tests.support.users import api_client, make_user

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser
    from django.test import Client
    from rest_framework.test import APIClient


@pytest.fixture(autouse=True, scope="session")
def _artifacts_dir() -> None:
    ARTIFACTS.mkdir(exist_ok=True)


# ---------------------------------------------------------------- gearmand and the tap


@pytest.fixture
def gearmand_factory(tmp_path: Path) -> Iterator[Callable[..., Gearmand]]:
    """``start(*options)``: a gearmand with these command line options; all stopped at the
    end."""
    started: list[Gearmand] = []

    def start(*extra: str) -> Gearmand:
        port = free_port()
        log = tmp_path / f"gearmand-{port}.log"
        g = Gearmand(port, spawn_gearmand(port, log, extra), log, extra)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


@pytest.fixture
def gearmand(gearmand_factory: Callable[..., Gearmand]) -> Gearmand:
    return gearmand_factory()


@pytest.fixture(params=["capture", "proxy"])
def tap(request: pytest.FixtureRequest, gearmand: Gearmand, tmp_path: Path,
        transactional_db: None) -> Iterator[Tap]:
    """gearmand watched by HQ, once in capture mode and once in proxy mode."""
    t = start_tap(request.param, gearmand, tmp_path)
    yield t
    t.stop()


# ---------------------------------------------------------------- the outside world


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local HTTP endpoint that records what apprise's ``json://`` sends it."""
    r = Receiver()
    yield r
    r.close()


# ---------------------------------------------------------------- worlds


@pytest.fixture
def world(db: None) -> dict[str, object]:
    """Monitoring data: two servers, four queues in four moods, three workers."""
    from tests.support.worlds import build_world

    return build_world()


@pytest.fixture
def alert_world(db: None) -> dict[str, object]:
    """``world`` with alert rules evaluated against it, alerts, history and channels."""
    from tests.support.worlds import build_alert_world

    return build_alert_world()


# ---------------------------------------------------------------- people


@pytest.fixture
def vera(db: None) -> AbstractUser:
    """A viewer."""
    from hq.models import Role

    return make_user("vera", Role.VIEWER)


@pytest.fixture
def opal(db: None) -> AbstractUser:
    """An operator."""
    from hq.models import Role

    return make_user("opal", Role.OPERATOR)


@pytest.fixture
def ada(db: None) -> AbstractUser:
    """An admin."""
    from hq.models import Role

    return make_user("ada", Role.ADMIN)


def _signed_in(user: AbstractUser) -> Client:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer(vera: AbstractUser) -> Client:
    return _signed_in(vera)


@pytest.fixture
def operator(opal: AbstractUser) -> Client:
    return _signed_in(opal)


@pytest.fixture
def admin(ada: AbstractUser) -> Client:
    return _signed_in(ada)


@pytest.fixture
def api_viewer(vera: AbstractUser) -> APIClient:
    return api_client(vera)


@pytest.fixture
def api_operator(opal: AbstractUser) -> APIClient:
    return api_client(opal)


@pytest.fixture
def api_admin(ada: AbstractUser) -> APIClient:
    return api_client(ada)


# ---------------------------------------------------------------- the ingest writer


@pytest.fixture
def writer_server() -> str:
    """A server name no other test uses (the writer creates its row)."""
    return f"w-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_writer(spool_dir: Path, writer_server: str) -> Iterator[Callable[..., EventWriter]]:
    """EventWriters for ``writer_server`` spooling to ``spool_dir`` (to the test database
    unless given a conninfo), stopped at the end of the test."""
    made: list[EventWriter] = []

    def make(conninfo: str | None = None, **kwargs: object) -> EventWriter:
        writer = EventWriter(writer_server, conninfo or conninfo_from_settings(),
                             spool_dir=spool_dir, **kwargs)  # type: ignore[arg-type]
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.stop(timeout=5)
