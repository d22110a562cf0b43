"""``manage.py hq_check`` as Nagios/Icinga run it: a subprocess against the test database,
one status line with perfdata on stdout, exit 0 OK / 1 WARNING / 2 CRITICAL / 3 UNKNOWN.

The data are queue snapshots, rollups, jobs and the poller's server states written by the
test (committed, hence ``transactional_db``: the command is another process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from alerts.check import num
from jobs.models import Boot, Server
from monitoring import histogram
from monitoring.models import Rollup, ServerState
from tests.support import stack
from tests.support.stack import MANAGE, ROOT, free_port
from tests.support.worlds import add_job, snap

pytestmark = pytest.mark.usefixtures("transactional_db")

#: Nagios plugin guidelines: 'label'=value[UOM];[warn];[crit];[min];[max], value in [-0-9.]
PERFDATA = re.compile(r"^'?[^'=]+'?=(-?[0-9.]+)[a-zA-Z%]*;(-?[0-9.]*);(-?[0-9.]*)(;[-0-9.]*){0,2}$")


def run_hq_check(*args: str, database_url: str | None = None,
                 **env_vars: str) -> subprocess.CompletedProcess:
    """``manage.py hq_check`` in its own process, against the test database by default."""
    env = dict(os.environ, DATABASE_URL=database_url or stack.database_url(),
               PYTHONWARNINGS="ignore", **env_vars)
    return subprocess.run([sys.executable, str(MANAGE), "hq_check", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def hq_check(*args: str, database_url: str | None = None, **env_vars: str) -> tuple[int, str]:
    """Exit code and the status line (the first line; Nagios reads any further lines as
    long output, so only an error message may add some)."""
    out = run_hq_check(*args, database_url=database_url, **env_vars)
    lines = out.stdout.strip().splitlines()
    assert lines and not out.stderr.strip(), (out.stdout, out.stderr)
    if database_url is None:
        assert len(lines) == 1, out.stdout
    return out.returncode, lines[0]


def ago(seconds: float) -> datetime:
    return timezone.now() - timedelta(seconds=seconds)


@pytest.fixture
def gm1() -> Server:
    return Server.objects.create(name="gm1")


@pytest.mark.parametrize(("warning", "critical", "code", "status"), [
    ("100", "500", 0, "OK"),
    ("10", "500", 1, "WARNING"),
    ("5", "10", 2, "CRITICAL"),
    ("12", "500", 0, "OK"),  # equal to the limit is not over it
])
def test_queue_depth_exit_codes_and_perfdata(gm1: Server, warning: str, critical: str,
                                             code: int, status: str) -> None:
    snap(gm1, "thumbs", 40, at=ago(30))  # older poll: the latest one counts
    snap(gm1, "thumbs", 12)
    rc, line = hq_check("--function", "thumbs", "--metric", "queue_depth",
                        "--warning", warning, "--critical", critical)
    assert rc == code
    assert line == (f"HQ QUEUE_DEPTH {status} - thumbs queue_depth is 12 "
                    f"| queue_depth=12;{warning};{critical}")
    assert PERFDATA.match(line.split(" | ")[1])


def test_default_metric_and_the_exact_perfdata_of_the_brief(gm1: Server) -> None:
    snap(gm1, "thumbs", 12)
    rc, line = hq_check("--function", "thumbs", "--warning", "100", "--critical", "500")
    assert rc == 0 and line.endswith("| queue_depth=12;100;500")


def test_glob_reports_the_worst_queue(gm1: Server) -> None:
    snap(gm1, "resize_small", 3)
    snap(gm1, "resize_large", 700)
    snap(gm1, "thumbs", 9000)  # does not match the glob
    rc, line = hq_check("--function", "resize_*", "--warning", "100", "--critical", "500")
    assert rc == 2
    assert line == "HQ QUEUE_DEPTH CRITICAL - resize_large queue_depth is 700 " \
                   "| queue_depth=700;100;500"


@pytest.mark.parametrize(("workers", "code", "status"), [
    (0, 2, "CRITICAL"), (1, 1, "WARNING"), (2, 0, "OK"), (5, 0, "OK")])
def test_workers_below(gm1: Server, workers: int, code: int, status: str) -> None:
    snap(gm1, "resize", 4, workers=workers)
    rc, line = hq_check("--function", "resize", "--metric", "workers", "--below",
                        "--warning", "2", "--critical", "1")
    assert rc == code
    assert line == f"HQ WORKERS {status} - resize workers is {workers} | workers={workers};2;1"


def test_below_picks_the_worst_of_a_glob(gm1: Server) -> None:
    snap(gm1, "resize_a", 4, workers=3)
    snap(gm1, "resize_b", 4, workers=0)
    rc, line = hq_check("--function", "resize_*", "--metric", "workers", "--below",
                        "--warning", "2", "--critical", "1")
    assert rc == 2 and "resize_b workers is 0" in line


def test_server_option(gm1: Server) -> None:
    gm2 = Server.objects.create(name="gm2")
    snap(gm1, "thumbs", 12)
    snap(gm2, "thumbs", 900)
    rc, line = hq_check("--function", "thumbs", "--server", "gm1",
                        "--warning", "100", "--critical", "500")
    assert rc == 0 and "is 12 " in line
    rc, line = hq_check("--function", "thumbs", "--server", "gm2",
                        "--warning", "100", "--critical", "500")
    assert rc == 2 and "is 900 " in line
    rc, line = hq_check("--function", "thumbs", "--server", "gm9",
                        "--warning", "100", "--critical", "500")
    assert rc == 3 and line.startswith("HQ QUEUE_DEPTH UNKNOWN - ") and "gm9" in line


def test_windowed_failure_rate_from_rollups(gm1: Server) -> None:
    minute = timezone.now().replace(second=0, microsecond=0)
    Rollup.objects.create(server=gm1, function="mail", minute=minute, submitted=10,
                          completed=7, failed=3, runtime_hist=histogram.from_values([5] * 10))
    Rollup.objects.create(server=gm1, function="mail", minute=minute - timedelta(minutes=30),
                          completed=0, failed=90)  # outside a 5 minute window
    snap(gm1, "mail", 0, workers=1)
    rc, line = hq_check("--function", "mail", "--metric", "failure_rate", "--window", "300",
                        "--warning", "0.1", "--critical", "0.5")
    assert rc == 1
    assert line == "HQ FAILURE_RATE WARNING - mail failure_rate is 0.3 " \
                   "| failure_rate=0.3;0.1;0.5"
    rc, line = hq_check("--function", "mail", "--metric", "failure_rate", "--window", "3600",
                        "--warning", "0.1", "--critical", "0.5")
    assert rc == 2 and "failure_rate is 0.93" in line


def jobs_took(server: Server, function: str, took_ms: float, *, n: int,
              finished_ago: float) -> None:
    """``n`` jobs of ``function`` that finished ``finished_ago`` seconds ago, ``took_ms``
    after their submit."""
    boot, _ = Boot.objects.get_or_create(server=server, token="1",
                                         defaults={"first_seen": ago(86400)})
    done = ago(finished_ago)
    for i in range(n):
        add_job(boot, f"H:{function}:{finished_ago}:{i}", function=function,
                submitted_at=done - timedelta(milliseconds=took_ms), finished_at=done,
                started_at=done - timedelta(milliseconds=30), runtime_ms=30)


def test_time_to_complete_p95_over_the_window(gm1: Server) -> None:
    jobs_took(gm1, "render", 3000, n=10, finished_ago=60)
    jobs_took(gm1, "render", 60_000, n=3, finished_ago=1000)  # outside a 5 minute window
    jobs_took(gm1, "mail", 90_000, n=1, finished_ago=30)  # not the function asked about
    p95 = num(histogram.percentile(histogram.from_values([3000] * 10), 95) or 0)
    rc, line = hq_check("--function", "render", "--metric", "time_to_complete_p95",
                        "--window", "300", "--warning", "1000", "--critical", "5000")
    assert rc == 1
    assert line == (f"HQ TIME_TO_COMPLETE_P95 WARNING - render time_to_complete_p95 is {p95} "
                    f"| time_to_complete_p95={p95};1000;5000")
    assert PERFDATA.match(line.split(" | ")[1])
    rc, line = hq_check("--function", "render", "--metric", "time_to_complete_p95",
                        "--window", "3600", "--warning", "1000", "--critical", "5000")
    slow = num(histogram.percentile(histogram.from_values([3000] * 10 + [60_000] * 3), 95)
               or 0)
    assert rc == 2 and f"render time_to_complete_p95 is {slow} |" in line
    rc, line = hq_check("--function", "r*", "--metric", "time_to_complete_p95",
                        "--window", "60", "--warning", "1000", "--critical", "5000")
    assert rc == 3 and line == "HQ TIME_TO_COMPLETE_P95 UNKNOWN - no data for 'r*'"


def test_server_down_names_the_server(gm1: Server) -> None:
    """0 while gearmand answers the poll; the seconds since its last answer once the
    poller says it is down. The function glob does not apply to a per-server metric."""
    gm2 = Server.objects.create(name="gm2")
    Server.objects.filter(pk=gm1.pk).update(last_seen=timezone.now())
    ServerState.objects.create(server=gm1, up=True, polled_at=timezone.now())
    Server.objects.filter(pk=gm2.pk).update(last_seen=ago(300))
    ServerState.objects.create(server=gm2, up=False, polled_at=timezone.now(),
                               down_since=ago(290), failed_polls=58)
    # a poll interval of 60 s: the check's own start-up never makes gm1 look silent
    rc, line = hq_check("--metric", "server_down", "--warning", "30", "--critical", "120",
                        HQ_POLL_INTERVAL="60")
    assert rc == 2, line
    assert re.fullmatch(r"HQ SERVER_DOWN CRITICAL - server gm2 server_down is (3\d\d(\.\d+)?) "
                        r"\| server_down=\1;30;120", line), line
    rc, line = hq_check("--metric", "server_down", "--server", "gm1", "--function", "resize",
                        "--warning", "30", "--critical", "120", HQ_POLL_INTERVAL="60")
    assert (rc, line) == (0, "HQ SERVER_DOWN OK - server gm1 server_down is 0 "
                             "| server_down=0;30;120")


def test_unknown_metric_is_3(gm1: Server) -> None:
    snap(gm1, "thumbs", 12)
    rc, line = hq_check("--function", "thumbs", "--metric", "queue_length",
                        "--warning", "1", "--critical", "2")
    assert rc == 3
    assert line == "HQ QUEUE_LENGTH UNKNOWN - unknown metric 'queue_length'"


def test_no_data_is_3(gm1: Server) -> None:
    snap(gm1, "thumbs", 12)
    rc, line = hq_check("--function", "nothing_*", "--warning", "1", "--critical", "2")
    assert rc == 3 and line == "HQ QUEUE_DEPTH UNKNOWN - no data for 'nothing_*'"
    # a windowed metric with no finished jobs in the window has no value either
    rc, line = hq_check("--function", "thumbs", "--metric", "runtime_p95",
                        "--warning", "1", "--critical", "2")
    assert rc == 3 and "UNKNOWN - no data" in line


def test_stale_snapshot_is_no_data(gm1: Server) -> None:
    snap(gm1, "thumbs", 12, at=ago(600))  # the tap stopped polling ten minutes ago
    rc, line = hq_check("--function", "thumbs", "--warning", "1", "--critical", "2")
    assert rc == 3 and "no data" in line


def test_database_down_is_3() -> None:
    port = free_port()  # bound and released: nothing listens there
    rc, line = hq_check("--warning", "1", "--critical", "2",
                        database_url=f"postgres://postgres@127.0.0.1:{port}/nope")
    assert rc == 3 and line.startswith("HQ UNKNOWN - ")


def test_large_values_keep_valid_perfdata(gm1: Server) -> None:
    snap(gm1, "stuck", 1234567)
    rc, line = hq_check("--function", "stuck", "--warning", "1000000",
                        "--critical", "2000000")
    assert rc == 1
    assert line.endswith("| queue_depth=1234567;1000000;2000000")
    rc, line = hq_check("--function", "stuck", "--metric", "drain_time",
                        "--warning", "600", "--critical", "3600")
    assert rc == 2
    assert PERFDATA.match(line.split(" | ")[1]), line


def test_bad_arguments_are_unknown() -> None:
    for args in (["--warning", "1"], ["--warning", "abc", "--critical", "2"]):
        out = run_hq_check(*args)
        assert out.returncode == 3, (args, out.returncode, out.stderr)
