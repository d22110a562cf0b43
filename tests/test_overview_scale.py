"""The overview with 20 servers and 500 functions on each (``tests.support.scale_world``):
queues that need attention first, idle queues folded behind their count, a filter, rows
rendered up to a bound, and servers retired from the pages (hidden, history kept)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from hq.models import AuditEntry
from jobs.models import Server
from monitoring import selectors
from monitoring.models import Rollup, ServerState, Worker
from monitoring.overview import ROW_LIMIT
from tests.support.scale_world import (
    BACKED_UP,
    BUSY,
    DOWN,
    NO_WORKERS,
    QUIET,
    RETIRED,
    SERVERS,
    STALE,
    build_scale_world,
)


@pytest.fixture
def big(db):  # type: ignore[no-untyped-def]
    return build_scale_world()


def _rows(html: str) -> list[tuple[str, str]]:
    """(function, server) of each queue row, in page order."""
    return re.findall(r'<tr class="queue-row[^"]*" data-function="([^"]+)" '
                      r'data-server="([^"]+)"', html)


def _cards(html: str) -> list[str]:
    return re.findall(r'<article class="server-card[^"]*" data-server="([^"]+)"', html)


def test_attention_first_then_active_idle_folded(viewer, big):
    html = viewer.get("/").content.decode()
    rows = _rows(html)
    # most urgent first: no workers (deepest first), backed up (deepest first), failing
    assert rows[:6] == [("ocr_07", "gm-03"), ("transcode_02", "gm-11"), ("mail_03", "gm-05"),
                        ("report_11", "gm-09"), ("export_00", "gm-14"),
                        ("billing_04", "gm-07")]
    assert 'data-total="attention">6<' in html
    assert "6 queues need attention" in html
    assert re.search(r'<tr class="queue-row row-failing" data-function="billing_04"', html)
    # then the active ones, at most ROW_LIMIT of them; the rest is counted, not rendered
    active = rows[6:]
    assert len(active) == ROW_LIMIT
    busy_quiet = len(BUSY) * (len(SERVERS) - 1) + len(QUIET) * (len(SERVERS) - 3)
    assert f"{busy_quiet - ROW_LIMIT} more queues not shown" in html
    assert {f for f, _ in active} <= set(BUSY) | set(QUIET)
    # idle queues (nothing queued or running, no job in 24 h) only as a count
    up = len(SERVERS) - 3  # down, not polled and retired list no fresh status
    idle = up * (500 - len(BUSY) - len(QUIET)) - len(NO_WORKERS) - len(BACKED_UP) - 1
    assert f'data-idle="{idle}">Show {idle:,} idle queues</label>' in html
    assert ("score_19", "gm-01") not in rows


def test_idle_rows_on_request_and_the_filter(viewer, big):
    html = viewer.get("/", {"q": "score_19", "idle": "1"}).content.decode()
    rows = _rows(html)
    assert len(rows) == len(SERVERS) - 3 and {f for f, _ in rows} == {"score_19"}
    assert "Hide 17 idle queues" in html
    # every word must match the function or the server
    html = viewer.get("/", {"q": "OCR gm-03"}).content.decode()
    assert _rows(html) == [("ocr_07", "gm-03")]
    assert _cards(html) == ["gm-03"]
    assert "20 of 8,524 queues" in html  # ocr_00 … ocr_19 on gm-03, 19 of them idle
    nothing = viewer.get("/", {"q": "no such queue"}).content.decode()
    assert "No queue matches the filter" in nothing and _rows(nothing) == []


def test_live_refresh_keeps_the_filter(viewer, big):
    page = viewer.get("/", {"q": "ocr_07"}).content.decode()
    region = re.search(r'<div id="overview"[^>]*>', page).group(0)
    assert 'hx-include="#overview-filter"' in region and 'hx-get="/"' in region
    assert 'id="overview-q" name="q" value="ocr_07"' in page
    fragment = viewer.get("/", {"q": "ocr_07"}, HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in fragment and 'id="overview-filter"' not in fragment
    assert {f for f, _ in _rows(fragment)} == {"ocr_07"}


def test_servers_with_problems_first_retired_hidden(viewer, big):
    html = viewer.get("/").content.decode()
    cards = _cards(html)
    assert cards[:2] == [DOWN, STALE]
    assert RETIRED not in cards and len(cards) == len(SERVERS) - 1
    assert 'class="servers servers-compact"' in html
    assert '1 retired server hidden · <label for="overview-retired"' in html
    assert 'data-total="up">17<span class="of"> / 19</span>' in html
    shown = viewer.get("/", {"retired": "1"}).content.decode()
    card = re.search(rf'<article class="server-card server-stale server-retired" '
                     rf'data-server="{RETIRED}".*?</article>', shown, re.S)
    assert card and ">Retired<" in card.group(0)


def test_retire_a_server_nothing_polls(viewer, operator, big):
    stale = big["servers"][STALE]
    url = f"/servers/{stale.pk}/retire/"
    assert viewer.post(url, {"retired": "1"}).status_code == 403
    before = viewer.get("/", {"q": STALE}).content.decode()
    assert STALE in _cards(before) and any(s == STALE for _, s in _rows(before))
    assert "Retire…" not in before  # viewers do not see the button

    page = operator.get("/").content.decode()
    assert f'action="{url}"' in page and "Retire “gm-18”?" in page
    response = operator.post(url, {"retired": "1"})
    assert response.status_code == 302 and response["Location"] == "/"
    after = operator.get("/").content.decode()
    assert STALE not in _cards(after)
    assert not any(s == STALE for _, s in _rows(operator.get("/", {"q": STALE})
                                                  .content.decode()))  # its queues too
    assert "2 retired servers hidden" in after and f"{STALE} is retired" in after
    assert Rollup.objects.filter(server=stale).exists()  # history kept
    entry = AuditEntry.objects.get(action="server_retire")
    assert entry.target == f"server {STALE}" and entry.username == "opal"

    # a tap polls it again: back on the page by itself
    ServerState.objects.filter(server=stale).update(polled_at=timezone.now())
    assert STALE in _cards(operator.get("/").content.decode())


def test_a_polled_server_cannot_be_retired(operator, big):
    live = big["servers"]["gm-01"]
    response = operator.post(f"/servers/{live.pk}/retire/", {"retired": "1"}, follow=True)
    assert "gm-01 is still polled" in response.content.decode()
    assert ServerState.objects.get(server=live).retired_at is None
    assert not AuditEntry.objects.filter(action="server_retire").exists()


def test_list_a_retired_server_again(operator, big):
    retired = big["servers"][RETIRED]
    response = operator.post(f"/servers/{retired.pk}/retire/", {"retired": "0"})
    assert response.status_code == 302
    assert RETIRED in _cards(operator.get("/").content.decode())
    assert AuditEntry.objects.filter(action="server_unretire").count() == 1


def test_workers_of_a_retired_server_are_hidden(viewer, big):
    now = timezone.now()
    for name in ("gm-01", RETIRED):
        Worker.objects.create(server=big["servers"][name], fd=7, address="10.1.1.1",
                              client_id=f"w-{name}", functions=["resize_00"],
                              connected_at=now, last_seen=now - timedelta(days=3))
    html = viewer.get("/workers/").content.decode()
    assert 'data-worker="w-gm-01"' in html and f'data-worker="w-{RETIRED}"' not in html
    assert f'data-worker="w-{RETIRED}"' in viewer.get("/workers/",
                                                      {"retired": "1"}).content.decode()


def test_idle_means_no_job_in_24_hours(db):
    server = Server.objects.create(name="s1")
    now = timezone.now()
    ServerState.objects.create(server=server, up=True, polled_at=now)
    rows = [{"server": "s1", "function": f, "queued": 0, "running": 0, "completed_1h": 0,
             "failed_1h": 0} for f in ("old", "recent", "never")]
    for function, ago in (("old", timedelta(hours=25)), ("recent", timedelta(hours=23))):
        Rollup.objects.create(server=server, function=function, submitted=1,
                              minute=(now - ago).replace(second=0, microsecond=0))
    assert selectors.idle_queues(rows) == {("s1", "old"), ("s1", "never")}


def test_rollup_windows_add_up_like_rollup_sums(db):
    """One scan for every window gives what one rollup_sums per window gives, malformed
    histograms counted as empty as the SQL sums count them."""
    server = Server.objects.create(name="s1")
    start = timezone.now().replace(second=0, microsecond=0)
    hists = [[0, 3, 1], [2], [], "oops", [0, 0, 0, 0, 5], list(range(300)), {"a": 1}]
    for m in range(30):
        Rollup.objects.create(server=server, function=f"f{m % 3}",
                              minute=start - timedelta(minutes=m), submitted=m,
                              completed=m % 5, failed=m % 2,
                              runtime_hist=hists[m % len(hists)],
                              wait_hist=hists[(m + 3) % len(hists)])
    starts = [start - timedelta(minutes=w) for w in (5, 15, 29)]
    banded = selectors.rollup_windows(starts)
    for since in starts:
        plain = selectors.rollup_sums(since=since)
        assert set(banded[since]) == set(plain)
        for key, agg in plain.items():
            got = banded[since][key]
            assert (got["submitted"], got["completed"], got["failed"]) == (
                agg["submitted"], agg["completed"], agg["failed"])
            assert got["runtime"] == agg["runtime"] and got["wait"] == agg["wait"], key
    one = selectors.rollup_sums(since=starts[0], functions=["f1"])
    assert set(one) == {(server.id, "f1")}
    assert one[(server.id, "f1")] == banded[starts[0]][(server.id, "f1")]


def test_a_firing_alert_puts_its_queue_among_those_needing_attention(viewer, big):
    from alerts.models import Alert, Rule

    rule = Rule.objects.create(name="slow resize", metric="runtime_p95", function="resize_*",
                               operator=">", threshold=50)
    now = timezone.now()
    Alert.objects.create(rule=rule, server=big["servers"]["gm-01"], function="resize_00",
                         value=120, peak=120, started_at=now)
    Alert.objects.create(rule=rule, server=big["servers"]["gm-02"], function="resize_01",
                         value=90, peak=90, started_at=now, state=Alert.RESOLVED,
                         resolved_at=now)
    html = viewer.get("/").content.decode()
    rows = _rows(html)
    # after the stranded and backed-up queues, before the merely failing one
    assert rows[5] == ("resize_00", "gm-01") and rows[6] == ("billing_04", "gm-07")
    row = re.search(r'<tr class="queue-row row-alerting" data-function="resize_00" '
                    r'data-server="gm-01".*?</tr>', html, re.S)
    assert row and "alert firing" in row.group(0)
    assert 'data-total="attention">7<' in html and "resize_00</a> on gm-01 (alert firing)" in html
    assert ("resize_01", "gm-02") not in rows[:7]  # resolved: no longer
