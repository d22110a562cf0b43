"""Two gearmand in one HQ: one watched by a capture tap, one by a proxy tap, both writing to
the same database under their own server names. gearmand numbers handles from 1 on each,
so the same handle is recorded twice and must stay two jobs, each on its server; queues
and workers of both are listed; an alert rule scoped to one server judges only its queues.
The demo workload spreads over both. Real gearmand, the ``gearman`` CLI as client and
worker, the REST API, one alert tick."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from alerts import services as alerts
from alerts.models import Alert, Rule
from jobs.models import Server
from tests.support.alerting import rule
from tests.support.gearman_cli import start_worker, stop_worker, submit_bg
from tests.support.stack import MANAGE, ROOT, Gearmand, Tap, start_tap, wait_for, wait_jobs

pytestmark = pytest.mark.gearmand


@pytest.fixture
def two_taps(gearmand_factory: Callable[..., Gearmand], tmp_path: Path,
             transactional_db: None) -> Iterator[list[Tap]]:
    tag = uuid.uuid4().hex[:6]
    capture = start_tap("capture", gearmand_factory(), tmp_path, server=f"gm1-{tag}")
    try:
        proxy = start_tap("proxy", gearmand_factory(), tmp_path, server=f"gm2-{tag}")
    except BaseException:
        capture.stop()
        raise
    yield [capture, proxy]
    proxy.stop()
    capture.stop()


def api_rows(api: APIClient, path: str, **params: str) -> list[dict[str, Any]]:
    response = api.get(path, params)
    assert response.status_code == 200, response.content
    return list(response.json()["results"])


def test_the_same_handle_on_two_servers_is_two_jobs_each_on_its_server(
        two_taps: list[Tap], api_viewer: APIClient) -> None:
    gm1, gm2 = two_taps
    # the first job on each gearmand: both get handle H:<host>:1
    submit_bg(gm1.port, "many_same", "on gm1")
    submit_bg(gm2.port, "many_same", "on gm2")
    (one,) = wait_jobs(gm1.server, 1)
    (two,) = wait_jobs(gm2.server, 1)
    assert one.handle == two.handle and one.handle.endswith(":1")
    assert one.pk != two.pk

    rows = api_rows(api_viewer, "/api/v1/jobs/", handle=one.handle)
    assert sorted((r["server"], r["id"]) for r in rows) == sorted(
        [(gm1.server, one.pk), (gm2.server, two.pk)])
    (only,) = api_rows(api_viewer, "/api/v1/jobs/", handle=one.handle, server=gm2.server)
    assert only["id"] == two.pk

    # a worker on gm2 only: its H:<host>:1 completes, gm1's job of that handle stays queued
    worker = start_worker(gm2.port, "many_same", "cat", jobs=1)
    try:
        wait_jobs(gm2.server, 1, state="completed")
    finally:
        stop_worker(worker)
    one.refresh_from_db()
    two.refresh_from_db()
    assert (one.state, two.state) == ("queued", "completed")
    assert one.payload_text == "on gm1" and two.payload_text == "on gm2"
    states = {r["server"]: r["state"] for r in api_rows(api_viewer, "/api/v1/jobs/",
                                                        handle=one.handle)}
    assert states == {gm1.server: "queued", gm2.server: "completed"}


def test_queues_and_workers_of_both_servers_are_listed(
        two_taps: list[Tap], api_viewer: APIClient) -> None:
    gm1, gm2 = two_taps
    for i in range(3):
        submit_bg(gm1.port, "many_backlog", f"gm1 {i}")
    submit_bg(gm2.port, "many_backlog", "gm2 0")
    workers = [start_worker(t.port, "many_worked", "cat") for t in two_taps]
    try:
        def depths() -> dict[str, int] | None:
            got = {r["server"]: r["queued"] for r in api_rows(api_viewer, "/api/v1/queues/")
                   if r["function"] == "many_backlog"}
            return got if got == {gm1.server: 3, gm2.server: 1} else None

        wait_for(depths, message="many_backlog queued 3 on gm1 and 1 on gm2")

        def listed() -> set[str] | None:
            got = {r["server"] for r in api_rows(api_viewer, "/api/v1/workers/")
                   if "many_worked" in r["functions"]}
            return got if got == {gm1.server, gm2.server} else None

        wait_for(listed, message="a many_worked worker listed on each server")
        for tap in two_taps:
            (row,) = [r for r in api_rows(api_viewer, "/api/v1/workers/", server=tap.server)
                      if "many_worked" in r["functions"]]
            assert row["server"] == tap.server
    finally:
        for w in workers:
            stop_worker(w)


def test_an_alert_rule_scoped_to_one_server_fires_only_for_its_queue(
        two_taps: list[Tap], api_viewer: APIClient) -> None:
    gm1, gm2 = two_taps
    for tap in two_taps:  # the same depth on both: only the scope tells them apart
        for i in range(2):
            submit_bg(tap.port, "many_alert", f"{tap.server} {i}")
    wait_for(lambda: {r["server"]: r["queued"] for r in api_rows(api_viewer, "/api/v1/queues/")
                      if r["function"] == "many_alert"} == {gm1.server: 2, gm2.server: 2},
             message="many_alert queued 2 on each server (the admin polls)")
    scoped = rule("queue_depth", ">", 1, "many_alert", server=Server.objects.get(name=gm2.server))
    everywhere = rule("queue_depth", ">", 1, "many_alert")

    result = alerts.evaluate()

    def fired(r: Rule) -> list[tuple[str, str]]:
        return sorted((a.server.name if a.server else "", a.function)
                      for a in Alert.objects.filter(rule=r, state=Alert.FIRING))

    assert fired(scoped) == [(gm2.server, "many_alert")]
    assert fired(everywhere) == sorted([(gm1.server, "many_alert"), (gm2.server, "many_alert")])
    assert len(result.fired) == 3


def test_the_demo_spreads_its_work_over_every_server_it_is_given(
        two_taps: list[Tap]) -> None:
    servers = ",".join(f"{t.server}=127.0.0.1:{t.port}" for t in two_taps)
    done = subprocess.run([sys.executable, str(MANAGE), "hq_demo", "--gearman", servers,
                           "--rate", "20", "--duration", "3"], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "demo workload on " + ", ".join(f"127.0.0.1:{t.port}" for t in two_taps) in done.stderr
    for tap in two_taps:  # submitted to each, and each one's demo workers ran some
        wait_jobs(tap.server, 5)
        wait_jobs(tap.server, 1, state="completed")
