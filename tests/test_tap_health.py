"""A tap that cannot record says so, and one that breaks is restarted.

Real processes: ``manage.py gearman_capture`` / ``gearman_proxy`` against a real gearmand,
jobs from the ``gearman`` CLI. A tap thread that dies makes the process exit with status 70
(the fault is injected by a small driver that runs the real command); the proxy's decoding
child, killed with SIGKILL, is restarted and records again; a tap started while Postgres is
unreachable (through a relay the test switches on later) stays up, reports itself
unhealthy — ``/healthz``, ``/metrics``, the ``tap_health`` alert metric — and records once
the database is back. The health verdicts on stale and dead taps are checked on reports
written to Redis as a tap writes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.test import Client

from alerts import services
from alerts.check import CRITICAL, OK, check
from alerts.models import Alert
from jobs.models import Server
from monitoring import live
from monitoring import taps as tap_reports
from tests.pg_relay import Relay
from tests.support.alerting import rule
from tests.support.gearman_cli import gearman
from tests.support.stack import (
    MANAGE,
    ROOT,
    Gearmand,
    Tap,
    database_url,
    free_port,
    start_tap,
    wait_for,
    wait_jobs,
    wait_port,
)

pytestmark = pytest.mark.gearmand

# ---------------------------------------------------------------- a tap thread that dies

#: runs the real command after breaking one thread of the tap (1.5 s in, as in production)
DRIVER = r"""
import os, sys, time
sys.path.insert(0, os.environ["HQ_ROOT"])
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hq.settings")
import django
django.setup()
from hq.tap.runner import TapRunner
from jobs.ingest import EventWriter

def writer_loop(self):
    time.sleep(1.5)
    raise KeyboardInterrupt("injected: an error escaped the writer's loop")

def stats_loop(self):
    time.sleep(1.5)
    raise RuntimeError("injected: the stats reporter broke")

def poll_loop(self):
    time.sleep(1.5)  # and return: the thread ends without an exception

fault = sys.argv[1]
if fault == "writer":
    EventWriter._loop = writer_loop
elif fault == "stats":
    TapRunner._log_stats = stats_loop
elif fault == "poller":
    TapRunner._watch_boot = poll_loop
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", *sys.argv[2:]])
"""

THREADS = {"writer": "hq-event-writer", "stats": "hq-tap-stats", "poller": "hq-boot-watch"}


def tap_env(tmp_path: Path, database: str | None = None) -> dict[str, str]:
    return dict(os.environ, DATABASE_URL=database or database_url(), HQ_ROOT=str(ROOT),
                HQ_SPOOL_DIR=str(tmp_path / "spool"), HQ_INGEST_FLUSH_MS="50",
                HQ_POLL_INTERVAL="1", PYTHONUNBUFFERED="1")


@pytest.mark.parametrize(("mode", "fault"), [("proxy", "writer"), ("capture", "writer"),
                                             ("proxy", "stats"), ("capture", "poller")])
def test_a_dead_tap_thread_makes_the_process_exit_non_zero(
    mode: str, fault: str, gearmand: Gearmand, tmp_path: Path, transactional_db: None
) -> None:
    if mode == "capture" and os.geteuid() != 0:
        pytest.skip("capture needs root")
    server = f"td-{uuid.uuid4().hex[:8]}"
    if mode == "proxy":
        command = ["gearman_proxy", "--ship", "inline", "--listen", f"127.0.0.1:{free_port()}",
                   "--upstream", f"127.0.0.1:{gearmand.port}", "--server", server]
    else:
        command = ["gearman_capture", "--interface", "lo", "--port", str(gearmand.port),
                   "--server", server]
    proc = subprocess.run([sys.executable, "-c", DRIVER, fault, *command], cwd=ROOT,
                          env=tap_env(tmp_path), capture_output=True, text=True, timeout=90)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 70, output
    assert f"thread {THREADS[fault]} died" in output
    assert "exits with status 70 so that its supervisor restarts it" in output


# ----------------------------------------------------------- proxy: the decoding child


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (from any of its threads)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def proxy_report(server: str) -> dict[str, Any]:
    stats = tap_reports.read_tap_stats().get(server)
    return dict(stats[0].get("proxy", {})) if stats else {}


@pytest.fixture
def proxy_tap(gearmand: Gearmand, tmp_path: Path, transactional_db: None) -> Iterator[Tap]:
    tap = start_tap("proxy", gearmand, tmp_path)
    yield tap
    tap.stop()
    live.redis_client().delete(tap_reports.TAP_KEY.format(server=tap.server))


def test_proxy_child_killed_is_restarted_and_records_again(proxy_tap: Tap) -> None:
    tap = proxy_tap
    gearman(tap.port, "-b", "-f", "resize", "before")
    wait_jobs(tap.server, 1)
    (child,) = wait_for(lambda: children(tap.proc.pid), message="the decoding child")

    os.kill(child, signal.SIGKILL)
    wait_for(lambda: "restarted (restart 1)" in tap.output(), timeout=30,
             message="the child restarted")
    assert "was killed by SIGKILL" in tap.output()
    (again,) = wait_for(lambda: children(tap.proc.pid), message="the new child")
    assert again != child

    gearman(tap.port, "-b", "-f", "resize", "after")  # forwarded all along, recorded again
    jobs = wait_jobs(tap.server, 2)
    assert [j.payload for j in jobs] == ["before", "after"]
    report = wait_for(lambda: (r := proxy_report(tap.server)).get("child_restarts") == 1
                      and r.get("child_alive") and r, message="the proxy's report")
    assert report["child_pid"] == again and "SIGKILL" in report["child_last_exit"]
    assert tap.proc.poll() is None


# ----------------------------------------------- Postgres unreachable when the tap starts


def start_tap_via(relay: Relay, mode: str, gearmand: Gearmand, tmp_path: Path) -> Tap:
    """Like ``start_tap``, with the tap's database reached through ``relay``."""
    server = f"pd-{uuid.uuid4().hex[:8]}"
    log = tmp_path / f"tap-{server}.log"
    if mode == "capture":
        port = gearmand.port
        cmd = ["gearman_capture", "--interface", "lo", "--port", str(port), "--server", server]
    else:
        port = free_port()
        cmd = ["gearman_proxy", "--listen", f"127.0.0.1:{port}",
               "--upstream", f"127.0.0.1:{gearmand.port}", "--server", server]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(MANAGE), *cmd], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT,
                                env=tap_env(tmp_path, relay_url(relay)), start_new_session=True)
    tap = Tap(mode, server, port, gearmand, proc, log)
    if mode == "capture":
        wait_for(lambda: "HQ capture ready" in log.read_text() or proc.poll() is not None,
                 timeout=30, message="the capture")
    else:
        wait_port(port, timeout=30)
    assert proc.poll() is None, log.read_text()
    return tap


def relay_url(relay: Relay) -> str:
    parts = urlsplit(database_url())
    auth = parts.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{auth}@127.0.0.1:{relay.port}"))


def health_of(server: str) -> dict[str, Any] | None:
    body = Client().get("/healthz").json()
    return body["taps"].get(server)


@pytest.mark.parametrize("mode", ["proxy", "capture"])
def test_tap_started_while_postgres_is_down_reports_it_then_records(
    mode: str, gearmand: Gearmand, tmp_path: Path, transactional_db: None
) -> None:
    if mode == "capture" and os.geteuid() != 0:
        pytest.skip("capture needs root")
    relay = Relay(_db_address())  # down until the test says
    tap = start_tap_via(relay, mode, gearmand, tmp_path)
    try:
        gearman(tap.port, "-b", "-f", "resize", "while-down")
        verdict = wait_for(lambda: (h := health_of(tap.server)) and not h["healthy"] and h,
                           timeout=30, message="the tap reporting itself unhealthy")
        assert "db_down" in verdict["reasons"] and tap.proc.poll() is None
        metrics = Client().get("/metrics").content.decode()
        assert f'hq_tap_healthy{{server="{tap.server}"}} 0.0' in metrics
        assert f'hq_tap_unhealthy{{reason="db_down",server="{tap.server}"}} 1.0' in metrics

        server = Server.objects.create(name=tap.server)  # what the tap could not create yet
        tap_rule = rule("tap_health", "<", 1)
        services.evaluate(refresh=False)
        alert = Alert.objects.get(rule=tap_rule, state=Alert.FIRING)
        assert (alert.server_id, alert.function, alert.value) == (server.id, "*", 0.0)

        relay.up()  # Postgres is back
        (job,) = wait_jobs(tap.server, 1, timeout=60)
        assert job.payload == "while-down"
        wait_for(lambda: (h := health_of(tap.server)) and h["healthy"], timeout=30,
                 message="the tap healthy again")
        services.evaluate(refresh=False)
        alert.refresh_from_db()
        assert alert.state == Alert.RESOLVED
    finally:
        text = tap.stop()
        relay.down()
        live.redis_client().delete(tap_reports.TAP_KEY.format(server=tap.server))
    assert "Postgres unavailable" in text


def _db_address() -> tuple[str, int]:
    from django.db import connection

    s = connection.settings_dict
    return str(s["HOST"]), int(s["PORT"])


# ------------------------------------------------- verdicts on what taps report to Redis


def report(server: str, stats: dict[str, Any], age_s: float = 0.0) -> None:
    """Write ``stats`` as the tap would have, ``age_s`` seconds ago."""
    key = tap_reports.TAP_KEY.format(server=server)
    live.redis_client().hset(key, mapping={"stats": json.dumps(stats),
                                           "updated_at": repr(time.time() - age_s)})
    live.redis_client().expire(key, 600)


def writer(**fields: Any) -> dict[str, Any]:
    base = {"state": "running", "writer_alive": True, "db_up": True, "lag_ms": 120,
            "spool_bytes": 0, "spool_max": 1 << 30, "queue_events": 3, "queued": 3,
            "quarantined_events": 0, "last_quarantine_at": 0, "db_errors": 0}
    return {**base, **fields}


def cases(now: float) -> dict[str, tuple[dict[str, Any], float, list[str]]]:
    """case -> (what the tap reports, how long ago, the reasons it is unhealthy)."""
    return {
        "healthy": ({"writer": writer()}, 0, []),
        "writer dead": ({"writer": writer(state="dead", writer_alive=False),
                         "process": {"dead_thread": "thread hq-event-writer died (KeyError: 1)"}},
                        0, ["thread_dead", "writer_dead"]),
        "stale": ({"writer": writer()}, 120, ["stale"]),
        "lagging": ({"writer": writer(lag_ms=45_000)}, 0, ["lagging"]),
        "spool filling": ({"writer": writer(spool_bytes=900, spool_max=1000)}, 0,
                          ["spool_full"]),
        "quarantined": ({"writer": writer(quarantined_events=4, last_quarantine_at=now)}, 0,
                        ["quarantined"]),
        "child down": ({"writer": writer(), "proxy": {"child_alive": False, "updated_at": now}},
                       0, ["child_down"]),
    }


CASES = cases(0.0)


@pytest.fixture
def taps() -> Iterator[dict[str, str]]:
    """One reporting tap per case, named uniquely (Redis is shared by test runs)."""
    names = {case: f"th-{case.replace(' ', '-')}-{uuid.uuid4().hex[:6]}" for case in CASES}
    for case, (stats, age, _) in cases(time.time()).items():
        report(names[case], stats, age)
    yield names
    live.redis_client().delete(*(tap_reports.TAP_KEY.format(server=n) for n in names.values()))


def test_healthz_and_metrics_say_which_taps_are_unhealthy_and_why(
    taps: dict[str, str], db: None
) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and set(body["checks"]) == {"database", "redis"}
    metrics = Client().get("/metrics").content.decode()
    for case, (_, _, reasons) in CASES.items():
        server = taps[case]
        assert server in body["taps"], (case, body)
        assert body["taps"][server]["reasons"] == reasons, case
        assert body["taps"][server]["healthy"] is (not reasons)
        assert f'hq_tap_healthy{{server="{server}"}} {0.0 if reasons else 1.0}' in metrics
        for reason in reasons:
            assert f'hq_tap_unhealthy{{reason="{reason}",server="{server}"}} 1.0' in metrics
    assert body["taps"][taps["lagging"]]["text"] == "lagging 45 s"
    assert body["taps"][taps["spool filling"]]["text"] == "spool 90 % full"
    assert f'hq_tap_writer_alive{{server="{taps["writer dead"]}"}} 0.0' in metrics


def test_overview_card_shows_an_unhealthy_tap(taps: dict[str, str], viewer: Client) -> None:
    sick, fine = taps["writer dead"], taps["healthy"]
    Server.objects.create(name=sick)
    Server.objects.create(name=fine)
    html = viewer.get("/").content.decode()
    sick_card = html[html.index(f'data-server="{sick}"'):]
    sick_card = sick_card[:sick_card.index("</article>")]
    assert "tap: unhealthy (thread hq-event-writer died (KeyError: 1) / writer dead)" in sick_card
    fine_card = html[html.index(f'data-server="{fine}"'):]
    assert "tap: unhealthy" not in fine_card[:fine_card.index("</article>")]


def test_tap_health_alert_fires_for_a_stale_or_dead_tap_only(
    taps: dict[str, str], transactional_db: None
) -> None:
    servers = {case: Server.objects.create(name=name) for case, name in taps.items()}
    tap_rule = rule("tap_health", "<", 1)
    services.evaluate(refresh=False)
    firing = {a.server_id for a in Alert.objects.filter(rule=tap_rule, state=Alert.FIRING)}
    unhealthy = {servers[c].id for c, (_, _, reasons) in CASES.items() if reasons}
    assert firing == unhealthy
    assert servers["healthy"].id not in firing
    assert set(Alert.objects.filter(rule=tap_rule).values_list("function", flat=True)) == {"*"}


def test_nagios_check_names_the_server_whose_tap_is_unhealthy(
    taps: dict[str, str], transactional_db: None
) -> None:
    for name in taps.values():
        Server.objects.create(name=name)
    sick, fine = taps["writer dead"], taps["healthy"]
    bad = check("*", "tap_health", 1, 1, below=True, server=sick)
    assert bad.code == CRITICAL and f"server {sick} tap_health is 0" in bad.line
    good = check("*", "tap_health", 1, 1, below=True, server=fine)
    assert good.code == OK and "tap_health=1;1;1" in good.line
