"""The monitoring pages (overview, workers, one queue) through Django's test client, with
rows written straight to the real Postgres the way the poller and the rollups write them.

The ``world`` fixture (``tests.support.worlds.build_world``) is the one the browser tests
see.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Server
from monitoring.models import ServerState
from monitoring.presenters import sparkline
from tests.support.users import make_user
from tests.support.worlds import snapshots


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
    client.force_login(make_user("nobody", None))
    assert client.get(path).status_code == 403


# ---------------------------------------------------------------- overview


def test_overview_servers_and_queues(viewer, world):
    response = viewer.get("/")
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
    # nightly_report is idle (nothing queued or running, no job in 24 h): folded
    assert 'data-function="nightly_report"' not in html
    assert 'data-idle="1">Show 1 idle queue</label>' in html
    idle = _row(viewer.get("/", {"idle": "1"}).content.decode(), "nightly_report")
    assert 'class="queue-row"' in idle
    # the two that need attention are named above the table
    banner = re.search(r'<div class="attention".*?</div>', html, re.S).group(0)
    assert "2 queues need attention" in banner
    assert "send_email" in banner and "transcode_video" in banner
    assert 'data-total="attention">2<' in html
    assert 'data-total="up">1<span class="of"> / 2</span>' in html


def test_overview_live_fragment_is_only_the_fragment(viewer, world):
    response = viewer.get("/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and "topbar" not in html and 'id="overview"' not in html
    assert 'data-function="resize_image"' in html and "server-card" in html
    assert "HX-Request" in response["Vary"]
    full = viewer.get("/").content.decode()
    region = re.search(r'<div id="overview"[^>]*>', full).group(0)
    assert 'data-hq-live="queue worker job"' in region
    assert 'hx-trigger="hq:changed, every 10s"' in region


@pytest.mark.parametrize(("poll", "every"), [("1", "1s"), ("0", "1s"), ("9999", "300s"),
                                             ("soon", "10s"), ("-5", "10s")])
def test_fallback_poll_interval_from_the_url(viewer, poll, every):
    html = viewer.get("/", {"poll": poll}).content.decode()
    assert f'hx-trigger="hq:changed, every {every}"' in html


def test_overview_before_any_server_says_how_to_start_a_tap(viewer):
    html = viewer.get("/").content.decode()
    assert "No gearmand servers known yet" in html
    assert "make run" in html and "gearman_capture" in html
    assert "<table" not in html


def test_a_stale_server_is_not_called_up(viewer, world):
    ServerState.objects.filter(server=world["prod"]).update(
        polled_at=timezone.now() - timedelta(minutes=10))
    html = viewer.get("/").content.decode()
    card = re.search(r'<article class="server-card server-stale" data-server="gm-prod-1".*?'
                     r"</article>", html, re.S)
    assert card and "is its tap running?" in card.group(0)


def test_function_names_that_need_quoting_still_link(viewer, db):
    server = Server.objects.create(name="s1")
    ServerState.objects.create(server=server, up=True, polled_at=timezone.now())
    snapshots(server, "thumbs/v2 big", timezone.now(), [1, 2], running=0, workers=1)
    html = viewer.get("/").content.decode()
    assert 'href="/queues/thumbs/v2%20big/"' in html
    page = viewer.get("/queues/thumbs/v2%20big/")
    assert page.status_code == 200
    assert page.context["function"] == "thumbs/v2 big"


# ---------------------------------------------------------------- workers


def test_workers_busy_and_idle(viewer, world):
    response = viewer.get("/workers/")
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


def test_workers_fragment_and_empty_state(viewer, db):
    html = viewer.get("/workers/").content.decode()
    assert "No workers connected" in html
    fragment = viewer.get("/workers/", HTTP_HX_REQUEST="true").content.decode()
    assert "No workers connected" in fragment and "<html" not in fragment


# ---------------------------------------------------------------- one queue


def test_queue_page_embeds_chart_data_and_failures(viewer, world):
    response = viewer.get("/queues/resize_image/")
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
def test_queue_page_ranges(viewer, world, name, step, count):
    html = viewer.get("/queues/resize_image/", {"range": name}).content.decode()
    stats = json.loads(re.search(r'id="queue-stats" type="application/json">(.*?)</script>',
                                 html, re.S).group(1))
    assert stats["step"] == step and count <= len(stats["points"]) <= count + 1
    assert f'data-range="{name}" class="active"' in html


def test_queue_with_no_jobs_in_range_shows_empty_charts(viewer, world):
    html = viewer.get("/queues/nightly_report/").content.decode()
    assert "No jobs in this range." in html
    assert html.count("chart-card chart-wide is-empty") == 1  # depth has snapshots
    assert "No failed jobs recorded for this function." in html


def test_unknown_queue_shows_an_empty_state(viewer, world):
    response = viewer.get("/queues/no_such_function/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "HQ has not seen a queue called “no_such_function”" in html
    assert 'id="queue-stats"' not in html


def test_bad_range_is_a_400_that_names_the_choices(viewer, world):
    response = viewer.get("/queues/resize_image/", {"range": "2y"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "unknown range &#x27;2y&#x27;" in html
    assert "Choose from: 15m, 1h, 6h, 24h, 7d." in html
    assert 'id="queue-stats"' not in html and 'data-hq-live="queue' not in html
    fragment = viewer.get("/queues/resize_image/", {"range": "2y"}, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 400 and "<html" not in fragment.content.decode()


def test_queue_fragment_has_data_but_not_the_page(viewer, world):
    response = viewer.get("/queues/resize_image/", {"range": "15m"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and "HX-Request" in response["Vary"]
    assert 'id="queue-stats"' in html and "range-picker" not in html and "<html" not in html


def test_queue_on_several_servers_lists_each(viewer, world):
    other = Server.objects.create(name="gm-prod-2")
    ServerState.objects.create(server=other, up=True, polled_at=timezone.now())
    snapshots(other, "resize_image", timezone.now(), [0, 9], running=1, workers=0)
    html = viewer.get("/queues/resize_image/").content.decode()
    assert 'aria-label="Server"' in html and "table-wrap per-server" in html
    assert 'data-now="queued">13<' in html  # 4 + 9
    one = viewer.get("/queues/resize_image/", {"server": "gm-prod-2"}).content.decode()
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
