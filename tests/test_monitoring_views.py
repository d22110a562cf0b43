"""The monitoring pages (overview, workers, one queue) through Django's test client, with
rows written straight to the real Postgres the way the poller and the rollups write them.

``build_world`` is shared with ``tests/browser/test_monitoring_ui.py``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from hq.models import Role
from jobs.models import Boot, Job, Server
from monitoring import histogram
from monitoring.models import QueueSnapshot, Rollup, ServerState, Worker
from monitoring.presenters import sparkline
from tests.conftest import make_user as _make_user

PASSWORD = "monitor-pass-123"


# ---------------------------------------------------------------- a small world


def _snapshots(server: Server, function: str, now: datetime, depths: list[int], *,
               running: int, workers: int, every_s: int = 30) -> None:
    """One poll every ``every_s`` seconds, the last one just now; ``depths`` oldest first."""
    n = len(depths)
    QueueSnapshot.objects.bulk_create([
        QueueSnapshot(server=server, function=function,
                      at=now - timedelta(seconds=every_s * (n - 1 - i)),
                      total=depth + running, running=running, workers=workers)
        for i, depth in enumerate(depths)
    ])


def _rollups(server: Server, function: str, now: datetime, minutes: int, *,
             per_minute: int, failed_every: int = 0, runtime_ms: float = 120.0,
             wait_ms: float = 40.0) -> None:
    start = now.replace(second=0, microsecond=0)
    rows = []
    for m in range(minutes):
        wave = 1 + (m % 17) / 17  # some shape, so the charts are not flat
        count = int(per_minute * wave)
        failed = count // failed_every if failed_every and m % 7 == 0 else 0
        runtimes = [runtime_ms * wave * (1 + (i % 10) / 5) for i in range(count)]
        waits = [wait_ms * (1 + (i % 20) / 4) for i in range(count)]
        rows.append(Rollup(server=server, function=function,
                           minute=start - timedelta(minutes=m), submitted=count,
                           completed=count - failed, failed=failed,
                           runtime_hist=histogram.from_values(runtimes),
                           wait_hist=histogram.from_values(waits)))
    Rollup.objects.bulk_create(rows)


def _job(boot: Boot, handle: str, **fields) -> Job:
    now = timezone.now()
    values = {"function": "resize_image", "state": "completed", "background": True,
              "priority": "normal", "attempts": 1, "submitted_at": now, "updated_at": now}
    values.update(fields)
    return Job.objects.create(server=boot.server, boot=boot, handle=handle, **values)


def build_world() -> dict[str, object]:
    """Two servers (one up, one down), four queues in four moods, three workers."""
    now = timezone.now()
    prod = Server.objects.create(name="gm-prod-1", address="10.0.4.12:4730")
    ServerState.objects.create(server=prod, up=True, version="1.1.20", pid="31337",
                               started_at=now - timedelta(days=3, hours=2), polled_at=now)
    spare = Server.objects.create(name="gm-spare", address="10.0.4.13:4730")
    ServerState.objects.create(server=spare, up=False, version="1.1.20", pid="977",
                               polled_at=now, down_since=now - timedelta(minutes=7),
                               failed_polls=9, last_error="connection refused")
    boot = Boot.objects.create(server=prod, token="31337", first_seen=now - timedelta(days=3))

    # resize_image: healthy, busy; send_email: backed up (oldest job waits 4 min);
    # transcode_video: jobs queued and no worker at all; nightly_report: idle.
    # the chart plots the peak per minute: the last two polls may share the newest minute,
    # so the one before the last stays below it and the newest point reads 4 either way
    _snapshots(prod, "resize_image", now, [(i * 7) % 13 for i in range(118)] + [2, 4],
               running=3, workers=4)
    _snapshots(prod, "send_email", now, [i * 2 for i in range(120)], running=2, workers=2)
    _snapshots(prod, "transcode_video", now, [min(i, 17) for i in range(120)],
               running=0, workers=0)
    _snapshots(prod, "nightly_report", now, [0] * 120, running=0, workers=1)
    _rollups(prod, "resize_image", now, 180, per_minute=40, failed_every=10)
    _rollups(prod, "send_email", now, 60, per_minute=6, runtime_ms=900, wait_ms=60_000)

    for n in range(3):
        _job(boot, f"H:gm-prod-1:{500 + n}", function="send_email", state="queued",
             submitted_at=now - timedelta(minutes=4, seconds=n))
    errors = ["Imagick: corrupt JPEG data in /tmp/upload-8812.jpg",
              "TimeoutError: S3 GET took longer than 30 s\n  at fetch_source (resize.py:88)"]
    failed = [
        _job(boot, f"H:gm-prod-1:{900 + n}", state="failed", error=errors[n % 2],
             worker="img-worker-1", runtime_ms=800, wait_ms=12,
             finished_at=now - timedelta(minutes=3 * n + 1))
        for n in range(3)
    ]
    running = _job(boot, "H:gm-prod-1:4711", state="running", worker="img-worker-1",
                   started_at=now - timedelta(seconds=12), wait_ms=30)
    w_busy = Worker.objects.create(server=prod, fd=33, address="10.0.4.20",
                                   client_id="img-worker-1",
                                   functions=["resize_image", "nightly_report"],
                                   connected_at=now - timedelta(hours=5), last_seen=now)
    Worker.objects.create(server=prod, fd=34, address="10.0.4.21", client_id="img-worker-2",
                          functions=["resize_image"], connected_at=now - timedelta(hours=2),
                          last_seen=now)
    Worker.objects.create(server=prod, fd=35, address="10.0.4.30", client_id="",
                          functions=["send_email"], connected_at=now - timedelta(minutes=9),
                          last_seen=now)
    return {"prod": prod, "spare": spare, "boot": boot, "running": running,
            "failed": failed, "busy_worker": w_busy}


def _user(username: str, role: Role | None):
    return _make_user(username, role, PASSWORD)


@pytest.fixture
def viewer(client, db):
    user = _user("vera", Role.VIEWER)
    client.force_login(user)
    return user


@pytest.fixture
def world(db) -> dict[str, object]:
    return build_world()


def _row(html: str, function: str) -> str:
    """The <tr> of one queue in the overview's table."""
    match = re.search(rf'<tr class="([^"]*)" data-function="{function}".*?</tr>', html, re.S)
    assert match, f"no row for {function}"
    return match.group(0)


def _cells(row: str) -> list[str]:
    """The text of each cell, whitespace collapsed."""
    return [" ".join(re.sub(r"<[^>]+>", " ", cell).split())
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


# ---------------------------------------------------------------- access

PAGES = ["/", "/workers/", "/queues/resize_image/"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_pages_need_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={path}"


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_live_refresh_without_session_sends_the_browser_to_login(client, path):
    response = client.get(path, HTTP_HX_REQUEST="true")
    assert response["HX-Redirect"] == f"/login/?next={path}"


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_a_user_without_role_is_refused(client, path):
    client.force_login(_user("nobody", None))
    assert client.get(path).status_code == 403


# ---------------------------------------------------------------- overview


def test_overview_servers_and_queues(client, viewer, world):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<title>Overview · Gearman HQ</title>" in html
    assert 'class="active">Overview</a>' in html

    prod = re.search(r'<article class="server-card server-up" data-server="gm-prod-1".*?'
                     r"</article>", html, re.S).group(0)
    assert "1.1.20" in prod and "31337" in prod and "3 d 2 h" in prod
    assert re.search(r"Polled\s+<time[^>]*>just now</time>", prod)
    spare = re.search(r'<article class="server-card server-down" data-server="gm-spare".*?'
                      r"</article>", html, re.S).group(0)
    assert ">Down<" in spare and "Down since" in spare and "7 min ago" in spare
    assert "connection refused" in spare

    healthy = _row(html, "resize_image")
    assert 'class="queue-row"' in healthy  # no flag
    assert '<a class="fn-name" href="/queues/resize_image/">resize_image</a>' in healthy
    cells = _cells(healthy)
    # function, queued, depth, running, workers, oldest, completed, failed, rate, p50,
    # p95, wait p95
    assert cells[1:2] == ["4"] and cells[3:5] == ["3", "4"]
    assert cells[5] == "—"  # nothing queued in HQ's jobs: no age
    completed, failed = int(cells[6].replace(",", "")), int(cells[7].replace(",", ""))
    assert completed > 2000 and 0 < failed < completed
    assert cells[8].endswith("%") and cells[9].endswith("ms") and cells[11].endswith("ms")
    assert '<polyline class="spark-line"' in healthy
    assert "now 4, peak 12" in healthy

    backed = _row(html, "send_email")
    assert "row-backed-up" in backed and "backed up" in backed
    assert _cells(backed)[5] == "4 min 0 s" or _cells(backed)[5].startswith("4 min")
    stranded = _row(html, "transcode_video")
    assert "row-no-workers" in stranded and "no workers" in stranded
    assert "bad-text" in stranded
    idle = _row(html, "nightly_report")
    assert 'class="queue-row"' in idle
    # the two that need attention are named above the table
    banner = re.search(r'<div class="attention".*?</div>', html, re.S).group(0)
    assert "2 queues need attention" in banner
    assert "send_email" in banner and "transcode_video" in banner
    assert 'data-total="attention">2<' in html
    assert 'data-total="up">1<span class="of"> / 2</span>' in html


def test_overview_live_fragment_is_only_the_fragment(client, viewer, world):
    response = client.get("/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and "topbar" not in html and 'id="overview"' not in html
    assert 'data-function="resize_image"' in html and "server-card" in html
    assert "HX-Request" in response["Vary"]
    full = client.get("/").content.decode()
    region = re.search(r'<div id="overview"[^>]*>', full).group(0)
    assert 'data-hq-live="queue worker job"' in region
    assert 'hx-trigger="hq:changed, every 10s"' in region


@pytest.mark.parametrize(("poll", "every"), [("1", "1s"), ("0", "1s"), ("9999", "300s"),
                                             ("soon", "10s"), ("-5", "10s")])
def test_fallback_poll_interval_from_the_url(client, viewer, poll, every):
    html = client.get("/", {"poll": poll}).content.decode()
    assert f'hx-trigger="hq:changed, every {every}"' in html


def test_overview_before_any_server_says_how_to_start_a_tap(client, viewer):
    html = client.get("/").content.decode()
    assert "No gearmand servers known yet" in html
    assert "make run" in html and "gearman_capture" in html
    assert "<table" not in html


def test_a_stale_server_is_not_called_up(client, viewer, world):
    ServerState.objects.filter(server=world["prod"]).update(
        polled_at=timezone.now() - timedelta(minutes=10))
    html = client.get("/").content.decode()
    card = re.search(r'<article class="server-card server-stale" data-server="gm-prod-1".*?'
                     r"</article>", html, re.S)
    assert card and "is its tap running?" in card.group(0)


def test_function_names_that_need_quoting_still_link(client, viewer, db):
    server = Server.objects.create(name="s1")
    ServerState.objects.create(server=server, up=True, polled_at=timezone.now())
    _snapshots(server, "thumbs/v2 big", timezone.now(), [1, 2], running=0, workers=1)
    html = client.get("/").content.decode()
    assert 'href="/queues/thumbs/v2%20big/"' in html
    page = client.get("/queues/thumbs/v2%20big/")
    assert page.status_code == 200
    assert page.context["function"] == "thumbs/v2 big"


# ---------------------------------------------------------------- workers


def test_workers_busy_and_idle(client, viewer, world):
    response = client.get("/workers/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="active">Workers</a>' in html
    rows = re.findall(r'<tr class="worker-row (is-busy|is-idle)" data-worker="([^"]+)"(.*?)</tr>',
                      html, re.S)
    assert [(state, who) for state, who, _ in rows] == [
        ("is-idle", "10.0.4.30"), ("is-busy", "img-worker-1"), ("is-idle", "img-worker-2")]
    busy = rows[1][2]
    job = world["running"]
    assert f'href="/jobs/{job.pk}/">H:gm-prod-1:4711</a>' in busy
    assert re.search(r"running 1[2-9] s", busy)
    assert '<span class="chip chip-active">resize_image</span>' in busy
    assert '<span class="chip">nightly_report</span>' in busy
    assert "idle" in rows[0][2] and "—" in rows[0][2]  # no client id
    assert 'data-total="busy">1<' in html and 'data-total="idle">2<' in html


def test_workers_fragment_and_empty_state(client, viewer, db):
    html = client.get("/workers/").content.decode()
    assert "No workers connected" in html
    fragment = client.get("/workers/", HTTP_HX_REQUEST="true").content.decode()
    assert "No workers connected" in fragment and "<html" not in fragment


# ---------------------------------------------------------------- one queue


def test_queue_page_embeds_chart_data_and_failures(client, viewer, world):
    response = client.get("/queues/resize_image/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="active">Overview</a>' in html
    stats = json.loads(re.search(r'<script id="queue-stats" type="application/json">(.*?)'
                                 r"</script>", html, re.S).group(1))
    assert stats["function"] == "resize_image" and stats["step"] == 60
    assert 60 <= len(stats["points"]) <= 62
    assert sum(p["completed"] for p in stats["points"]) > 2000
    assert any(p["queue_depth"] is not None for p in stats["points"])
    for name in ("depth", "throughput", "runtime", "wait", "failure"):
        assert f'data-chart="{name}" hx-preserve="true"' in html
    assert "is-empty" not in html
    assert '<a href="?range=1h" data-range="1h" class="active" aria-current="true">' in html
    assert "vendor/uplot/uPlot.iife.min.js" in html and "js/charts.js" in html
    # the latest failures, newest first, linked, with their error text
    failures = re.findall(r'<a href="/jobs/(\d+)/">(H:gm-prod-1:\d+)</a>', html)
    assert [int(pk) for pk, _ in failures] == sorted((j.pk for j in world["failed"]),
                                                      reverse=True)
    assert "Imagick: corrupt JPEG data" in html and "TimeoutError: S3 GET" in html
    assert "Alert on this queue" in html


@pytest.mark.parametrize(("name", "step", "count"), [("15m", 60, 15), ("6h", 300, 72),
                                                     ("24h", 900, 96), ("7d", 3600, 168)])
def test_queue_page_ranges(client, viewer, world, name, step, count):
    html = client.get("/queues/resize_image/", {"range": name}).content.decode()
    stats = json.loads(re.search(r'id="queue-stats" type="application/json">(.*?)</script>',
                                 html, re.S).group(1))
    assert stats["step"] == step and count <= len(stats["points"]) <= count + 1
    assert f'data-range="{name}" class="active"' in html


def test_queue_with_no_jobs_in_range_shows_empty_charts(client, viewer, world):
    html = client.get("/queues/nightly_report/").content.decode()
    assert "No jobs in this range." in html
    assert html.count("chart-card chart-wide is-empty") == 1  # depth has snapshots
    assert "No failed jobs recorded for this function." in html


def test_unknown_queue_shows_an_empty_state(client, viewer, world):
    response = client.get("/queues/no_such_function/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "HQ has not seen a queue called “no_such_function”" in html
    assert 'id="queue-stats"' not in html


def test_bad_range_is_a_400_that_names_the_choices(client, viewer, world):
    response = client.get("/queues/resize_image/", {"range": "2y"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "unknown range &#x27;2y&#x27;" in html
    assert "Choose from: 15m, 1h, 6h, 24h, 7d." in html
    assert 'id="queue-stats"' not in html and 'data-hq-live="queue' not in html
    fragment = client.get("/queues/resize_image/", {"range": "2y"}, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 400 and "<html" not in fragment.content.decode()


def test_queue_fragment_has_data_but_not_the_page(client, viewer, world):
    response = client.get("/queues/resize_image/", {"range": "15m"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and "HX-Request" in response["Vary"]
    assert 'id="queue-stats"' in html and "range-picker" not in html and "<html" not in html


def test_queue_on_several_servers_lists_each(client, viewer, world):
    other = Server.objects.create(name="gm-prod-2")
    ServerState.objects.create(server=other, up=True, polled_at=timezone.now())
    _snapshots(other, "resize_image", timezone.now(), [0, 9], running=1, workers=0)
    html = client.get("/queues/resize_image/").content.decode()
    assert 'aria-label="Server"' in html and "table-wrap per-server" in html
    assert 'data-now="queued">13<' in html  # 4 + 9
    one = client.get("/queues/resize_image/", {"server": "gm-prod-2"}).content.decode()
    assert 'data-now="queued">9<' in one and "No workers" in one


# ---------------------------------------------------------------- sparkline geometry


def test_sparkline_spans_the_box_and_peaks_at_the_top():
    s = sparkline([0, 5, 10])
    points = [tuple(map(float, p.split(","))) for p in s["line"].split()]
    assert points[0] == (0.0, 22.0) and points[-1] == (96.0, 2.0)
    assert s["now"] == 10 and s["max"] == 10 and s["rising"]
    flat = sparkline([0, 0, 0])
    assert {p.split(",")[1] for p in flat["line"].split()} == {"22.0"}
    assert sparkline([3]) is None and sparkline([]) is None
