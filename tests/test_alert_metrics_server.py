"""``server_down`` and ``time_to_complete_p95``: rules that fire and resolve on the rows the
admin poller and the tap write, with a controlled clock (``evaluate(now=...)``), and
``server_down`` once more on a real gearmand that is stopped and started under a real tap.

``server_down`` is 0 while gearmand answers the admin poll, else the seconds since it last
answered; it is down once the poller's last word is "down" (``DOWN_AFTER`` failed polls in
a row) or after ``DOWN_AFTER`` poll intervals without an answer. ``time_to_complete_p95``
is submit → finish (ms) of the jobs that completed or failed in the rule's window.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from alerts import check, delivery, metric_values, services
from alerts.models import Alert, RuleState
from alerts.presenters import metric_text
from alerts.serializers import RuleSerializer
from jobs.models import Boot, Job, Server
from monitoring import histogram, selectors
from monitoring.models import ServerState
from monitoring.services import DOWN_AFTER, record_poll, record_poll_failure
from tests.receiver import Receiver
from tests.support.alerting import channel_for, rule, state_of, tick
from tests.support.stack import Gearmand, Tap, start_tap, wait_for
from tests.support.worlds import add_job, snap

T0 = timezone.now().replace(microsecond=0)
HANDLES = itertools.count(1)
POLL_S = 5  # HQ_POLL_INTERVAL in the evaluator for the fake-clock tests


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def tick_at(t: float) -> services.TickResult:
    """One tick of the beat ``t`` seconds into the fake clock, then one delivery round."""
    return tick(at(t), refresh=False)


@pytest.fixture(autouse=True)
def _poll_interval() -> Iterator[None]:
    with override_settings(HQ_POLL_INTERVAL=POLL_S):
        yield


# ------------------------------------------------------------------ server_down, fake clock


def answered(name: str, t: float) -> None:
    """A poll of gearmand ``name`` at ``t`` that it answered, written as the tap writes it."""
    record_poll(name=name, address="127.0.0.1:4730", pid="4242", version="1.1.20",
                statuses=[], workers=[], at=at(t))


def refused(name: str, t: float) -> None:
    record_poll_failure(name=name, address="127.0.0.1:4730",
                        error="[Errno 111] Connection refused", at=at(t))


def server_id(name: str) -> int:
    return Server.objects.get(name=name).id


def down_value(name: str, t: float) -> float | None:
    values = metric_values.alert_metrics(set(), at(t))
    return values.get((server_id(name), "*"), {}).get("server_down")


def test_limit_is_down_after_poll_intervals() -> None:
    assert DOWN_AFTER == 2
    assert metric_values.silence_limit_s() == 2 * POLL_S


def test_server_down_fires_after_two_failed_polls_and_resolves_when_it_answers(
        db: None, receiver: Receiver) -> None:
    for t in (0, 5, 10):
        answered("gm-a", t)
    r = rule("server_down", ">", 0)
    channel_for(receiver, r)
    tick_at(10)
    assert (state_of(r, "*").state, state_of(r, "*").value) == (RuleState.OK, 0.0)

    refused("gm-a", 15)  # one failed poll: not down yet (5 s without an answer)
    assert not tick_at(15).fired
    assert state_of(r, "*").value == 0.0

    refused("gm-a", 20)  # the second in a row: the poller says down
    assert ServerState.objects.get(server__name="gm-a").up is False
    result = tick_at(20)
    alert = Alert.objects.get(rule=r)
    assert result.fired == [alert.id]
    assert (alert.server_id, alert.function, alert.value) == (server_id("gm-a"), "*", 10.0)

    refused("gm-a", 25)
    assert down_value("gm-a", 30) == 20.0  # counting on
    result = tick_at(30)
    assert not result.fired and not result.resolved
    assert state_of(r, "*").state == RuleState.FIRING

    answered("gm-a", 35)
    result = tick_at(36)
    alert.refresh_from_db()
    assert result.resolved == [alert.id]
    assert (alert.state, alert.value) == (Alert.RESOLVED, 0.0)
    assert alert.resolved_at == at(36)
    titles = [m["title"] for m in receiver.messages]
    assert titles == ["[WARNING] server_down > 0: * on gm-a",
                      "[RESOLVED] server_down > 0: * on gm-a"]
    assert "server_down = 10 " in receiver.messages[0]["message"]


def test_a_server_nobody_hears_from_is_down_after_two_poll_intervals(db: None) -> None:
    """The tap that polls it stopped (or cannot write): no failed poll is recorded, but no
    answer either. Down after 2 poll intervals; no value once unwatched for a day."""
    answered("gm-b", 0)
    at_once, after_a_minute = rule("server_down", ">", 0), rule("server_down", ">", 60)
    assert down_value("gm-b", 2 * POLL_S) == 0.0  # the limit itself is not past it
    assert down_value("gm-b", 2 * POLL_S + 0.5) == 2 * POLL_S + 0.5
    tick_at(11)
    assert state_of(at_once, "*").state == RuleState.FIRING
    assert state_of(after_a_minute, "*").state == RuleState.OK
    tick_at(61)
    assert state_of(after_a_minute, "*").state == RuleState.FIRING
    assert Alert.objects.get(rule=after_a_minute).value == 61.0

    gone = metric_values.UNWATCHED_S + 1
    assert down_value("gm-b", gone) is None
    result = tick_at(gone)
    assert sorted(result.resolved) == sorted(Alert.objects.values_list("id", flat=True))


def test_a_server_that_never_answered_counts_from_when_hq_first_heard_of_it(
        db: None) -> None:
    refused("gm-c", 0)
    refused("gm-c", 5)
    created = Server.objects.get(name="gm-c").created_at
    now = created + timedelta(seconds=42)
    values = metric_values.alert_metrics(set(), now)
    assert values[(server_id("gm-c"), "*")]["server_down"] == pytest.approx(42.0)


def test_server_down_is_per_server_only(db: None) -> None:
    """A rule on it is judged once per server (function ``*``), never per queue; a rule
    bound to a server judges only that one; a function other than ``*`` is refused."""
    answered("gm-d", 0)
    answered("gm-e", 0)
    refused("gm-e", 5)
    refused("gm-e", 10)
    for name in ("gm-d", "gm-e"):
        snap(Server.objects.get(name=name), "resize", 3, at=at(10))
    everywhere = rule("server_down", ">", 0)
    only_d = rule("server_down", ">", 0, server=Server.objects.get(name="gm-d"))
    tick_at(10)
    assert sorted(RuleState.objects.filter(rule=everywhere)
                  .values_list("server__name", "function", "state")) == [
        ("gm-d", "*", RuleState.OK), ("gm-e", "*", RuleState.FIRING)]
    assert list(RuleState.objects.filter(rule=only_d)
                .values_list("server__name", "function", "value")) == [("gm-d", "*", 0.0)]

    data = {"name": "x", "metric": "server_down", "function": "resize", "operator": ">",
            "threshold": 0}
    s = RuleSerializer(data=data)
    assert not s.is_valid()
    assert "measured per server" in str(s.errors["function"][0])
    assert RuleSerializer(data={**data, "function": "*"}).is_valid()
    s = RuleSerializer(everywhere, data={"function": "resize"}, partial=True)
    assert not s.is_valid() and "function" in s.errors


# ------------------------------------------------------------------ server_down, real gearmand


@pytest.fixture
def watched(gearmand: Gearmand, tmp_path: Path, transactional_db: None) -> Iterator[Tap]:
    """gearmand watched by HQ's capture tap (it polls the admin port every second)."""
    tap = start_tap("capture", gearmand, tmp_path)
    yield tap
    tap.stop()


def poller_says(server: str, up: bool) -> bool:
    state = ServerState.objects.filter(server__name=server).first()
    return state is not None and state.up is up and state.polled_at is not None


@pytest.mark.gearmand
def test_server_down_on_a_real_gearmand_stopped_then_started(
        watched: Tap, receiver: Receiver) -> None:
    wait_for(lambda: poller_says(watched.server, True), message="gearmand polled")
    r = rule("server_down", ">", 0)
    channel_for(receiver, r)
    services.evaluate(refresh=False)
    assert (state_of(r, "*").state, state_of(r, "*").value) == (RuleState.OK, 0.0)

    watched.gearmand.stop()
    wait_for(lambda: poller_says(watched.server, False), message="the poller saying down")
    result = services.evaluate(refresh=False)
    alert = Alert.objects.get(rule=r)
    assert result.fired == [alert.id] and alert.server_id == server_id(watched.server)
    assert 1.0 <= alert.value < 60  # at least the two failed polls a second apart
    nagios = check.check("*", "server_down", 0, 3600, server=watched.server)
    assert nagios.code == check.WARNING
    assert nagios.line.startswith(
        f"HQ SERVER_DOWN WARNING - server {watched.server} server_down is ")

    watched.gearmand.start()
    wait_for(lambda: poller_says(watched.server, True), message="gearmand answering again")
    result = services.evaluate(refresh=False)
    alert.refresh_from_db()
    assert result.resolved == [alert.id] and alert.value == 0.0
    assert delivery.deliver_due() == (2, 0)
    assert [m["title"].split("]")[0] for m in receiver.messages] == ["[WARNING", "[RESOLVED"]


# ------------------------------------------------------------------ time_to_complete_p95


@pytest.fixture
def boot(db: None) -> Boot:
    return Boot.objects.create(server=Server.objects.create(name="gm-jobs"), token="77",
                               first_seen=at(-86400))


def finished(boot: Boot, function: str, end: float, took_ms: float, *,
             state: str = "completed", n: int = 1, submitted: bool = True) -> list[Job]:
    """``n`` jobs of ``function`` that finished at ``end`` (fake clock seconds), ``took_ms``
    after they were submitted, having run for the last 40 ms of it."""
    done = at(end)
    return [add_job(boot, f"H:gm-jobs:{next(HANDLES)}", function=function,
                    state=state, submitted_at=done - timedelta(milliseconds=took_ms)
                    if submitted else None, started_at=done - timedelta(milliseconds=40),
                    finished_at=done, runtime_ms=40, wait_ms=max(int(took_ms) - 40, 0))
            for i in range(n)]


def p95(*values: float) -> float | None:
    return histogram.percentile(histogram.from_values(values), 95)


def test_time_to_complete_fires_and_resolves_over_its_window(
        boot: Boot, receiver: Receiver) -> None:
    for i in range(16):
        finished(boot, "render", -60 + i, 3000)
    finished(boot, "render", -30, 3000, state="failed", n=4)  # failures finished too
    finished(boot, "render", -20, 600_000, state="lost", n=2)  # never answered
    finished(boot, "render", -20, 600_000, state="cancelled", n=2)
    finished(boot, "render", -20, 600_000, submitted=False, n=2)  # before HQ watched
    finished(boot, "render", 5, 600_000, n=2)  # after now
    finished(boot, "render", -400, 60_000, n=3)  # before a 300 s window
    counted = selectors.time_to_complete(windows=[300], until=at(0))[300]
    assert sum(counted[(boot.server_id, "render")]) == 20
    slow = rule("time_to_complete_p95", ">", 2000, "render", window_seconds=300)
    runtime = rule("runtime_p95", ">", 2000, "render", window_seconds=300)
    channel_for(receiver, slow, runtime)

    result = tick(at(0))  # refreshes the rollups too: runtime_p95 is judged on real sums
    alert = Alert.objects.get(rule=slow)
    assert result.fired == [alert.id]
    assert alert.value == p95(*[3000] * 20) == pytest.approx(3000, rel=0.2)
    assert state_of(runtime, "render").state == RuleState.OK  # each run took 40 ms

    finished(boot, "render", 350, 200, n=20)  # the slow ones leave the window
    result = tick_at(400)
    alert.refresh_from_db()
    assert result.resolved == [alert.id]
    assert alert.state == Alert.RESOLVED and alert.value == p95(200)
    assert [m["title"] for m in receiver.messages] == [
        "[WARNING] time_to_complete_p95 > 2000: render on gm-jobs",
        "[RESOLVED] time_to_complete_p95 > 2000: render on gm-jobs"]


def test_windows_are_read_in_one_scan_each_with_its_own_jobs(boot: Boot) -> None:
    finished(boot, "render", -60, 3000, n=20)
    finished(boot, "render", -400, 60_000, n=3)
    finished(boot, "mail", -10, 12, n=2)
    values = metric_values.alert_metrics(set(), at(0), complete_windows={300, 3600})
    render, mail = values[(boot.server_id, "render")], values[(boot.server_id, "mail")]
    assert render["time_to_complete_p95@300"] == p95(*[3000] * 20)
    assert render["time_to_complete_p95@3600"] == p95(*[3000] * 20, *[60_000] * 3)
    assert mail["time_to_complete_p95@300"] == p95(12, 12)
    # not asked for: not read (the evaluator asks only for the windows of its rules)
    assert "time_to_complete_p95@300" not in metric_values.alert_metrics({300}, at(0)).get(
        (boot.server_id, "render"), {})


def test_sql_buckets_are_the_histogram_buckets(boot: Boot) -> None:
    took = [0, 0.5, 1, 1.5, 2, 3, 16, 999, 1000, 3000, 86_400_000, 10**9]
    for i, ms in enumerate(took):
        finished(boot, f"f{i}", -1, ms)
    finished(boot, "skewed", -1, -250)  # finished "before" its submit: clocks apart
    hists = selectors.time_to_complete(windows=[60], until=at(0))[60]
    for i, ms in enumerate(took):
        assert hists[(boot.server_id, f"f{i}")] == histogram.from_values([ms]), ms
    assert hists[(boot.server_id, "skewed")] == histogram.from_values([0])


def test_the_scan_uses_the_finished_at_index(boot: Boot) -> None:
    finished(boot, "render", -60, 3000, n=3)
    with connection.cursor() as cur:
        cur.execute("SET LOCAL enable_seqscan = off")  # an empty table is otherwise scanned
        cur.execute("EXPLAIN " + selectors.TIME_TO_COMPLETE_SQL,
                    {"since": at(-300), "until": at(0), "windows": [300]})
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert "job_finished" in plan, plan


def test_values_read_in_their_units() -> None:
    assert metric_text("server_down", 0) == "0 s"
    assert metric_text("server_down", 312) == "5 min 12 s"
    assert metric_text("time_to_complete_p95", 2896.3) == "2.9 s"
    assert metric_text("time_to_complete_p95", 12) == "12 ms"
