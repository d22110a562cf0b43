"""Alert metrics and the rule state machine.

Part 1, real data: a real gearmand watched by HQ's tap (capture mode), gearman CLI clients
and workers, then ``alerts.services.evaluate()`` as the Celery beat runs it. Every metric
has a firing and a non-firing case, and each non-firing case checks the value the
evaluator judged (so "did not fire" never means "saw nothing").

Part 2, the state machine with a fake clock (``evaluate(now=...)``): queue snapshots written
at the fake times (or a fake metric feed where a value must be fractional), notifications
delivered by ``alerts.delivery.deliver_due`` to a local HTTP receiver and counted there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from alerts import delivery, metric_values, services
from alerts.models import Alert, Channel, Notification, Rule, RuleState, Transition
from jobs.models import Server
from monitoring import selectors
from monitoring.models import QueueSnapshot
from tests.conftest import Gearmand, Tap, start_tap, wait_for, wait_jobs
from tests.receiver import Receiver

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def stack(gearmand: Gearmand, tmp_path: Path, transactional_db: None) -> Iterator[Tap]:
    """gearmand + HQ's capture tap writing to the test database."""
    tap = start_tap("capture", gearmand, tmp_path)
    yield tap
    tap.stop()


@pytest.fixture
def workers() -> Iterator[Callable[..., subprocess.Popen]]:
    """Starts gearman CLI workers, each in its own process group; all killed at the end
    (with the commands they run, e.g. a ``sleep`` in the middle of a job)."""
    started: list[subprocess.Popen] = []

    def start(port: int, function: str, *cmd: str) -> subprocess.Popen:
        proc = subprocess.Popen(["gearman", "-h", "127.0.0.1", "-p", str(port), "-w", "-f",
                                 function, "--", *cmd], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def submit(port: int, function: str, count: int) -> None:
    for i in range(count):
        subprocess.run(["gearman", "-h", "127.0.0.1", "-p", str(port), "-b", "-f", function,
                        f"{function} {i}"], check=True, capture_output=True, timeout=20)


def metric(server: str, function: str, key: str) -> float | None:
    """The value the evaluator sees now for one queue (windowed keys: ``name@window``)."""
    windows = {int(key.split("@")[1])} if "@" in key else set()
    sid = Server.objects.filter(name=server).values_list("id", flat=True).first()
    return metric_values.alert_metrics(windows).get((sid, function), {}).get(key)


def wait_metric(server: str, function: str, key: str, check: Callable[[float], bool],
                what: str) -> float:
    def ok() -> float | None:
        v = metric(server, function, key)
        return v if v is not None and check(v) else None

    # a value of 0 is falsy: wrap it so wait_for sees a truthy tuple
    found = wait_for(lambda: (v := ok()) is not None and (v,), message=what)
    return found[0]  # type: ignore[index]


def rule(metric_name: str, operator: str, threshold: float, function: str = "*",
         **extra: object) -> Rule:
    return Rule.objects.create(name=f"{metric_name} {operator} {threshold:g}",
                               metric=metric_name, function=function, operator=operator,
                               threshold=threshold, for_seconds=extra.pop("for_seconds", 0),
                               **extra)


def state_of(r: Rule, function: str) -> RuleState:
    return RuleState.objects.get(rule=r, function=function)


def assert_fired(r: Rule, function: str, result: services.TickResult) -> Alert:
    alert = Alert.objects.get(rule=r, function=function)
    assert alert.id in result.fired
    assert alert.state == Alert.FIRING and alert.resolved_at is None
    assert state_of(r, function).state == RuleState.FIRING
    return alert


def assert_quiet(r: Rule, function: str, result: services.TickResult) -> RuleState:
    """Evaluated (a state row with a value exists) and did not fire."""
    state = state_of(r, function)
    assert state.state == RuleState.OK
    assert not Alert.objects.filter(rule=r).exists()
    assert not result.fired
    return state


# --------------------------------------------------------------------------- queue_depth


@pytest.mark.gearmand
def test_queue_depth_fires_and_notifies(stack: Tap, receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 5, "thumb*")
    r.channels.add(Channel.objects.create(name="ops", url=receiver.url))
    submit(stack.port, "thumbnail", 20)
    wait_metric(stack.server, "thumbnail", "queue_depth", lambda v: v == 20, "depth 20")
    result = services.evaluate()
    alert = assert_fired(r, "thumbnail", result)
    assert alert.value == 20 and alert.server.name == stack.server
    assert delivery.deliver_due() == (1, 0)
    assert len(receiver.messages) == 1 and "thumbnail" in receiver.messages[0]["title"]


@pytest.mark.gearmand
def test_queue_depth_below_threshold_does_not_fire(stack: Tap, receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 5, "thumb*")
    r.channels.add(Channel.objects.create(name="ops", url=receiver.url))
    submit(stack.port, "thumbnail", 3)
    wait_metric(stack.server, "thumbnail", "queue_depth", lambda v: v == 3, "depth 3")
    state = assert_quiet(r, "thumbnail", services.evaluate())
    assert state.value == 3
    assert delivery.deliver_due() == (0, 0) and receiver.messages == []


# --------------------------------------------------------------------------- oldest_queued_age


@pytest.mark.gearmand
def test_oldest_queued_age_fires(stack: Tap) -> None:
    r = rule("oldest_queued_age", ">", 1)
    submit(stack.port, "waiting", 2)
    wait_jobs(stack.server, 2, state="queued")
    wait_metric(stack.server, "waiting", "oldest_queued_age", lambda v: v > 1.5,
                "oldest job older than 1.5 s")
    alert = assert_fired(r, "waiting", services.evaluate())
    assert alert.value > 1.5


@pytest.mark.gearmand
def test_oldest_queued_age_drained_queue_does_not_fire(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("oldest_queued_age", ">", 1)
    workers(stack.port, "prompt", "cat")
    submit(stack.port, "prompt", 5)
    wait_jobs(stack.server, 5, state="completed")
    wait_metric(stack.server, "prompt", "workers", lambda v: v == 1, "worker listed")
    wait_metric(stack.server, "prompt", "queue_depth", lambda v: v == 0, "drained")
    state = assert_quiet(r, "prompt", services.evaluate())
    assert state.value == 0.0


# --------------------------------------------------------------------------- failure_rate


@pytest.mark.gearmand
def test_failure_rate_fires_when_every_job_fails(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("failure_rate", ">", 0.5, window_seconds=300)
    workers(stack.port, "boom", "false")
    submit(stack.port, "boom", 5)
    wait_jobs(stack.server, 5, state="failed")
    alert = assert_fired(r, "boom", services.evaluate())  # refreshes rollups itself
    assert alert.value == 1.0


@pytest.mark.gearmand
def test_failure_rate_of_succeeding_jobs_does_not_fire(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("failure_rate", ">", 0.5, window_seconds=300)
    workers(stack.port, "fine", "cat")
    submit(stack.port, "fine", 5)
    wait_jobs(stack.server, 5, state="completed")
    state = assert_quiet(r, "fine", services.evaluate())
    assert state.value == 0.0


# --------------------------------------------------------------------------- runtime_p95


@pytest.mark.gearmand
def test_runtime_p95_fires_for_slow_jobs(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("runtime_p95", ">", 1000, window_seconds=300)
    workers(stack.port, "slow", "sh", "-c", "sleep 2; cat")
    submit(stack.port, "slow", 1)
    (job,) = wait_jobs(stack.server, 1, state="completed")
    assert job.runtime_ms >= 2000
    alert = assert_fired(r, "slow", services.evaluate())
    assert alert.value > 1000


@pytest.mark.gearmand
def test_runtime_p95_of_fast_jobs_does_not_fire(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("runtime_p95", ">", 1000, window_seconds=300)
    workers(stack.port, "quick", "cat")
    submit(stack.port, "quick", 5)
    wait_jobs(stack.server, 5, state="completed")
    state = assert_quiet(r, "quick", services.evaluate())
    assert state.value is not None and 0 < state.value < 1000


# --------------------------------------------------------------------------- workers


@pytest.mark.gearmand
def test_workers_below_one_fires_when_jobs_wait_without_workers(stack: Tap) -> None:
    r = rule("workers", "<", 1)
    submit(stack.port, "orphan", 3)
    wait_metric(stack.server, "orphan", "queue_depth", lambda v: v == 3, "depth 3")
    alert = assert_fired(r, "orphan", services.evaluate())
    assert alert.value == 0


@pytest.mark.gearmand
def test_workers_present_does_not_fire(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("workers", "<", 1)
    workers(stack.port, "staffed", "cat")
    submit(stack.port, "staffed", 2)
    wait_jobs(stack.server, 2, state="completed")
    wait_metric(stack.server, "staffed", "workers", lambda v: v == 1, "one worker")
    state = assert_quiet(r, "staffed", services.evaluate())
    assert state.value == 1


@pytest.mark.gearmand
def test_workers_alert_resolves_when_a_worker_comes(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("workers", "<", 1)
    submit(stack.port, "orphan", 3)
    wait_metric(stack.server, "orphan", "queue_depth", lambda v: v == 3, "depth 3")
    assert_fired(r, "orphan", services.evaluate())
    workers(stack.port, "orphan", "cat")
    wait_jobs(stack.server, 3, state="completed")
    wait_metric(stack.server, "orphan", "workers", lambda v: v == 1, "one worker")
    wait_metric(stack.server, "orphan", "queue_depth", lambda v: v == 0, "drained")
    result = services.evaluate()
    alert = Alert.objects.get(rule=r)
    assert result.resolved == [alert.id]
    assert alert.state == Alert.RESOLVED


# --------------------------------------------------------------------------- running_too_long


@pytest.mark.gearmand
def test_running_too_long_fires(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("running_too_long", ">", 1)
    workers(stack.port, "stuck", "sh", "-c", "sleep 30; cat")
    submit(stack.port, "stuck", 1)
    wait_jobs(stack.server, 1, state="running")
    wait_metric(stack.server, "stuck", "running_too_long", lambda v: v > 1.5,
                "job running for 1.5 s")
    alert = assert_fired(r, "stuck", services.evaluate())
    assert alert.value > 1.5


@pytest.mark.gearmand
def test_running_job_under_the_limit_does_not_fire(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("running_too_long", ">", 600)
    workers(stack.port, "stuck", "sh", "-c", "sleep 30; cat")
    submit(stack.port, "stuck", 1)
    wait_jobs(stack.server, 1, state="running")
    wait_metric(stack.server, "stuck", "running_too_long", lambda v: v > 0.5,
                "job running for 0.5 s")
    state = assert_quiet(r, "stuck", services.evaluate())
    assert 0.5 < state.value < 600


# --------------------------------------------------------------------------- stranded


@pytest.mark.gearmand
def test_stranded_fires_for_jobs_no_worker_can_do(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("stranded", ">", 0)
    workers(stack.port, "other", "cat")  # a worker, but not for this function
    submit(stack.port, "nobody", 4)
    wait_metric(stack.server, "nobody", "queue_depth", lambda v: v == 4, "depth 4")
    wait_metric(stack.server, "other", "workers", lambda v: v == 1, "the other worker")
    result = services.evaluate()
    alert = assert_fired(r, "nobody", result)
    assert alert.value == 4
    assert state_of(r, "other").state == RuleState.OK


@pytest.mark.gearmand
def test_queued_behind_a_busy_worker_is_not_stranded(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("stranded", ">", 0)
    workers(stack.port, "busy", "sh", "-c", "sleep 30; cat")
    submit(stack.port, "busy", 3)
    wait_metric(stack.server, "busy", "queue_depth", lambda v: v == 2,
                "one running, two queued")
    state = assert_quiet(r, "busy", services.evaluate())
    assert state.value == 0


# --------------------------------------------------------------------------- drain_time


def _complete(port: int, server: str, function: str, count: int, start_worker) -> None:  # type: ignore[no-untyped-def]
    """``count`` jobs of ``function`` completed by a worker that then disconnects."""
    w = start_worker(port, function, "cat")
    submit(port, function, count)
    wait_jobs(server, count, state="completed")
    stop_group(w)

    def gone() -> bool:
        latest = (QueueSnapshot.objects.filter(server__name=server, function=function)
                  .order_by("-at").first())
        return latest is not None and latest.workers == 0

    wait_for(gone, message="gearmand lists no worker")


@pytest.mark.gearmand
def test_drain_time_forecast_fires(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("drain_time", ">", 600, window_seconds=300)
    _complete(stack.port, stack.server, "drainy", 10, workers)
    submit(stack.port, "drainy", 30)  # 30 queued at 10 per 300 s → 900 s
    submit(stack.port, "stuck", 1)  # nothing ever completed: "never" (a year)
    wait_metric(stack.server, "drainy", "queue_depth", lambda v: v == 30, "depth 30")
    wait_metric(stack.server, "stuck", "queue_depth", lambda v: v == 1, "depth 1")
    result = services.evaluate()
    assert assert_fired(r, "drainy", result).value == pytest.approx(900)
    assert assert_fired(r, "stuck", result).value == metric_values.NEVER_S


@pytest.mark.gearmand
def test_drain_time_of_a_short_queue_does_not_fire(stack: Tap, workers) -> None:  # type: ignore[no-untyped-def]
    r = rule("drain_time", ">", 600, window_seconds=300)
    _complete(stack.port, stack.server, "drainy", 10, workers)
    submit(stack.port, "drainy", 2)  # 2 queued at 10 per 300 s → 60 s
    wait_metric(stack.server, "drainy", "queue_depth", lambda v: v == 2, "depth 2")
    state = assert_quiet(r, "drainy", services.evaluate())
    assert state.value == pytest.approx(60)


# =========================================================================== fake clock

T0 = timezone.now().replace(microsecond=0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def server(db: None) -> Server:
    return Server.objects.create(name="fake")


def snap(server: Server, function: str, queued: int, t: float, *, workers: int = 0,
         running: int = 0) -> None:
    QueueSnapshot.objects.create(server=server, function=function, at=at(t),
                                 total=queued + running, running=running, workers=workers)


def tick(t: float) -> services.TickResult:
    result = services.evaluate(now=at(t), refresh=False)
    delivery.deliver_due(now=at(t))
    return result


def channel_for(receiver: Receiver, *rules: Rule) -> Channel:
    ch = Channel.objects.create(name=f"hook-{receiver.port}", url=receiver.url)
    for r in rules:
        r.channels.add(ch)
    return ch


def test_for_seconds_pending_then_firing_only_after_the_delay(server: Server,
                                                              receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 5, for_seconds=120)
    channel_for(receiver, r)
    for t in (0, 30, 60, 119):
        snap(server, "q", 10, t)
        assert tick(t).fired == []
        state = state_of(r, "q")
        assert state.state == RuleState.PENDING and state.since == at(0)
    assert not Alert.objects.exists() and receiver.messages == []
    snap(server, "q", 10, 120)
    fired = tick(120).fired
    alert = Alert.objects.get()
    assert fired == [alert.id] and alert.started_at == at(120)
    assert state_of(r, "q").state == RuleState.FIRING
    assert len(receiver.messages) == 1


def test_pending_that_clears_starts_the_delay_again(server: Server) -> None:
    r = rule("queue_depth", ">", 5, for_seconds=60)
    snap(server, "q", 10, 0)
    tick(0)
    snap(server, "q", 0, 50)  # cleared before the delay ran out
    tick(50)
    assert state_of(r, "q").state == RuleState.OK
    snap(server, "q", 10, 70)
    tick(70)
    snap(server, "q", 10, 110)  # 110 s after the first breach, only 40 s in this one
    assert tick(110).fired == []
    snap(server, "q", 10, 130)
    assert len(tick(130).fired) == 1


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch, server: Server) -> dict[str, float | None]:
    """A fake metric source for values a queue snapshot cannot hold (fractions): the
    evaluator reads ``queue_depth`` of function ``q`` from ``feed["v"]``."""
    current: dict[str, float | None] = {"v": None}

    def alert_metrics(windows: set[int], now: datetime | None = None) -> dict:
        return {(server.id, "q"): {"queue_depth": current["v"]}}

    monkeypatch.setattr(metric_values, "alert_metrics", alert_metrics)
    return current


def test_hysteresis_value_hovering_on_the_threshold_never_flaps(
        feed: dict[str, float | None], receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 5)
    channel_for(receiver, r)
    feed["v"] = 7
    assert len(tick(0).fired) == 1
    assert len(receiver.messages) == 1
    for i in range(1, 21):
        feed["v"] = 4.99 if i % 2 else 5.01
        result = tick(i * 10)
        assert result.fired == [] and result.resolved == []
    alert = Alert.objects.get()
    assert alert.state == Alert.FIRING and alert.resolved_at is None
    assert state_of(r, "q").state == RuleState.FIRING
    assert len(receiver.messages) == 1
    assert Notification.objects.count() == 1

    feed["v"] = 0  # a clear recovery
    assert tick(300).resolved == [alert.id]
    for t in (310, 320, 330):
        result = tick(t)
        assert result.fired == [] and result.resolved == []
    alert.refresh_from_db()
    assert alert.state == Alert.RESOLVED and alert.resolved_at == at(300) and alert.value == 0
    assert len(receiver.messages) == 2 and "RESOLVED" in receiver.messages[1]["title"]
    assert Notification.objects.filter(kind="resolved").count() == 1


def test_hysteresis_with_snapshots_then_clear_recovery(server: Server,
                                                        receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 100)  # margin 5 %: resolves at 95 or less
    channel_for(receiver, r)
    snap(server, "q", 150, 0)
    assert len(tick(0).fired) == 1
    for i, depth in enumerate([99, 101, 96, 100, 99, 101] * 3, start=1):
        snap(server, "q", depth, i * 10)
        result = tick(i * 10)
        assert result.fired == [] and result.resolved == [], depth
    snap(server, "q", 0, 500)
    assert len(tick(500).resolved) == 1
    snap(server, "q", 0, 510)
    assert tick(510).resolved == []
    assert [m["title"].startswith("[RESOLVED]") for m in receiver.messages] == [False, True]


def test_disabled_rule_never_fires(server: Server, receiver: Receiver) -> None:
    off = rule("queue_depth", ">", 5, enabled=False)
    on = rule("queue_depth", ">", 5)
    channel_for(receiver, off)
    for t in (0, 10, 20):
        snap(server, "q", 50, t)
        tick(t)
    assert not RuleState.objects.filter(rule=off).exists()
    assert not Alert.objects.filter(rule=off).exists()
    assert Alert.objects.filter(rule=on).count() == 1  # the same data fires an enabled rule
    assert receiver.messages == []


def test_disabling_a_firing_rule_sends_nothing_more(server: Server,
                                                     receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 5)
    channel_for(receiver, r)
    snap(server, "q", 50, 0)
    tick(0)
    Rule.objects.filter(pk=r.pk).update(enabled=False)
    snap(server, "q", 0, 10)
    snap(server, "q", 80, 20)
    tick(10)
    tick(20)
    assert len(receiver.messages) == 1


def test_disabled_rule_is_not_repeated(server: Server, receiver: Receiver,
                                       settings) -> None:  # type: ignore[no-untyped-def]
    settings.HQ_ALERT_REPEAT_S = 600
    r = rule("queue_depth", ">", 5)
    channel_for(receiver, r)
    snap(server, "q", 50, 0)
    tick(0)
    Rule.objects.filter(pk=r.pk).update(enabled=False)
    for t in (600, 1200):
        snap(server, "q", 50, t)
        tick(t)
    assert len(receiver.messages) == 1


def test_glob_matches_only_its_functions(server: Server) -> None:
    r = rule("queue_depth", ">", 5, "resize_*")
    names = ["resize_small", "resize_large", "resize_", "resizer", "thumb_resize_x",
             "Resize_big", "xresize_a"]
    for name in names:
        snap(server, name, 10, 0)
    result = tick(0)
    matched = {"resize_small", "resize_large", "resize_"}
    assert set(RuleState.objects.filter(rule=r).values_list("function", flat=True)) == matched
    assert set(Alert.objects.values_list("function", flat=True)) == matched
    assert len(result.fired) == 3


def test_rule_with_a_server_ignores_other_servers(server: Server) -> None:
    other = Server.objects.create(name="other")
    r = rule("queue_depth", ">", 5, server=server)
    snap(server, "resize_a", 10, 0)
    snap(other, "resize_a", 50, 0)
    snap(other, "resize_b", 50, 0)
    assert len(tick(0).fired) == 1
    alert = Alert.objects.get()
    assert alert.server_id == server.id and alert.value == 10
    assert list(RuleState.objects.filter(rule=r).values_list("server_id", "function")) == [
        (server.id, "resize_a")]


def test_queue_that_disappears_resolves(server: Server, receiver: Receiver) -> None:
    """No fresh snapshot (the tap stopped polling): no data, so the alert resolves."""
    r = rule("queue_depth", ">", 5)
    channel_for(receiver, r)
    snap(server, "q", 50, 0)
    tick(0)
    assert len(tick(60).fired) == 0  # the 0 s snapshot is still fresh
    result = tick(0 + selectors.FRESH.total_seconds() + 1)
    assert len(result.resolved) == 1
    assert len(receiver.messages) == 2


def test_unacknowledged_alert_is_repeated_acknowledged_is_not(
        server: Server, receiver: Receiver, settings) -> None:  # type: ignore[no-untyped-def]
    settings.HQ_ALERT_REPEAT_S = 600
    loud = rule("queue_depth", ">", 5, "loud")
    quiet = rule("queue_depth", ">", 5, "quiet")
    channel_for(receiver, loud, quiet)
    for fn in ("loud", "quiet"):
        snap(server, fn, 50, 0)
    tick(0)
    assert len(receiver.messages) == 2
    services.acknowledge(Alert.objects.get(rule=quiet).id, None)
    for t in (300, 600, 900, 1200):
        for fn in ("loud", "quiet"):
            snap(server, fn, 50, t)
        tick(t)
    titles = [m["title"] for m in receiver.messages]
    assert sum("loud" in t for t in titles) == 3  # fired at 0, repeated at 600 and 1200
    assert sum("quiet" in t for t in titles) == 1


def test_disabled_channel_gets_nothing(server: Server, receiver: Receiver) -> None:
    r = rule("queue_depth", ">", 5)
    ch = channel_for(receiver, r)
    Channel.objects.filter(pk=ch.pk).update(enabled=False)
    snap(server, "q", 50, 0)
    assert len(tick(0).fired) == 1
    assert receiver.messages == [] and not Notification.objects.exists()


def test_stranded_above_zero_resolves_when_a_worker_takes_the_queue(server: Server) -> None:
    r = rule("stranded", ">", 0)
    snap(server, "q", 4, 0)
    assert len(tick(0).fired) == 1
    snap(server, "q", 0, 10, workers=1)
    assert state_of(r, "q").value == 4
    result = tick(10)
    assert len(result.resolved) == 1
    assert Alert.objects.get().state == Alert.RESOLVED


def test_transition_table_of_step_directly() -> None:
    """``RuleState.step`` alone, no database: ok → pending → firing → ok."""
    r = Rule(metric="queue_depth", operator=">=", threshold=10, for_seconds=30)
    s = RuleState(state=RuleState.OK, since=at(0), evaluated_at=at(0))
    assert s.step(r, 10, at(0)) == Transition() and s.state == RuleState.PENDING
    assert not s.step(r, 12, at(29)).fired and s.state == RuleState.PENDING
    assert s.step(r, 12, at(30)).fired and s.state == RuleState.FIRING
    assert not s.step(r, 9.6, at(40)).resolved  # within the 5 % band (0.5)
    assert s.step(r, None, at(50)).resolved and s.state == RuleState.OK
    below = Rule(metric="workers", operator="<", threshold=2)
    s = RuleState(state=RuleState.OK, since=at(0), evaluated_at=at(0))
    assert s.step(below, 1, at(0)).fired
    assert not s.step(below, 2.05, at(10)).resolved  # 2.05 < 2 + 0.1
    assert s.step(below, 3, at(20)).resolved
