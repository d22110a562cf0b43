"""Alert metrics on real data: a real gearmand watched by HQ's tap (capture mode), gearman
CLI clients and workers, then ``alerts.services.evaluate()`` as the Celery beat runs it.

Every metric has a firing case (``test_fires``) and a non-firing one
(``test_does_not_fire``): a rule, the data a case makes for it, one evaluation. Each case
names the value the evaluator must have judged for each queue, so "did not fire" never means
"saw nothing"; every rule notifies a local HTTP receiver, which hears of each alert that
fires and of nothing else.

``test_alert_states.py`` drives the rule state machine with a fake clock;
``test_alert_metrics_server.py`` has ``server_down`` (a real gearmand stopped and started)
and ``time_to_complete_p95`` firing and resolving on a fake clock; ``test_tap_health.py``
has ``tap_health``.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alerts import delivery, metric_values, services
from alerts.models import Alert, Rule, RuleState
from jobs.models import Job, Server
from monitoring.models import QueueSnapshot
from tests.receiver import Receiver
from tests.support.alerting import channel_for, rule, state_of
from tests.support.gearman_cli import start_worker, stop_worker, submit_bg
from tests.support.stack import Gearmand, Tap, start_tap, wait_for, wait_jobs

StartWorker = Callable[..., subprocess.Popen]

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def stack(gearmand: Gearmand, tmp_path: Path, transactional_db: None) -> Iterator[Tap]:
    """gearmand + HQ's capture tap writing to the test database."""
    tap = start_tap("capture", gearmand, tmp_path)
    yield tap
    tap.stop()


@pytest.fixture
def workers() -> Iterator[StartWorker]:
    """``start(port, function, *cmd)``: a gearman CLI worker; all stopped at the end (with
    the commands they run, e.g. a ``sleep`` in the middle of a job)."""
    started: list[subprocess.Popen] = []

    def start(port: int, function: str, *cmd: str) -> subprocess.Popen:
        proc = start_worker(port, function, *cmd)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_worker(proc)


def submit(port: int, function: str, count: int) -> None:
    for i in range(count):
        submit_bg(port, function, f"{function} {i}")


def metric(server: str, function: str, key: str) -> float | None:
    """The value the evaluator sees now for one queue (windowed keys: ``name@window``)."""
    windows = {int(key.split("@")[1])} if "@" in key else set()
    sid = Server.objects.filter(name=server).values_list("id", flat=True).first()
    values = metric_values.alert_metrics(windows, complete_windows=windows)
    return values.get((sid, function), {}).get(key)


def wait_metric(server: str, function: str, key: str, check: Callable[[float], bool],
                what: str) -> float:
    def ok() -> float | None:
        v = metric(server, function, key)
        return v if v is not None and check(v) else None

    # a value of 0 is falsy: wrap it so wait_for sees a truthy tuple
    found = wait_for(lambda: (v := ok()) is not None and (v,), message=what)
    return found[0]


def queued(tap: Tap, function: str, count: int) -> None:
    """``count`` background jobs of ``function``, waiting until the evaluator sees them."""
    submit(tap.port, function, count)
    wait_metric(tap.server, function, "queue_depth", lambda v: v == count, f"depth {count}")


def worked(tap: Tap, workers: StartWorker, function: str, count: int, *cmd: str,
           state: str = "completed") -> list[Job]:
    """``count`` jobs of ``function`` done by a worker running ``cmd``, once HQ has them
    in ``state``."""
    workers(tap.port, function, *cmd)
    submit(tap.port, function, count)
    return wait_jobs(tap.server, count, state=state)


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


@dataclass(frozen=True, eq=False)
class Between:
    """Equal to any number strictly between ``low`` and ``high`` (and to nothing else)."""

    low: float
    high: float = math.inf

    def __eq__(self, value: object) -> bool:
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and self.low < value < self.high)

    def __repr__(self) -> str:
        return f"<a number in ({self.low:g}, {self.high:g})>"


def test_between_is_equal_only_to_numbers_inside() -> None:
    assert Between(1.5) == 1.6 and Between(0.5, 600) == 599.9 and Between(0, 1000) == 1
    assert Between(1.5) != 1.5 and Between(0.5, 600) != 600 and Between(0, 1000) != 0
    assert Between(0) != None and Between(0) != "1" and Between(0) != True  # noqa: E711, E712


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """A rule, what ``arrange(tap, workers)`` makes happen for it, and what the evaluator
    must judge then: ``judged`` maps each queue to its value (a number, ``pytest.approx``
    or ``Between``); ``ok`` lists queues it evaluates and leaves OK alongside."""

    metric: str
    operator: str
    threshold: float
    arrange: Callable[[Tap, StartWorker], object]
    judged: dict[str, object]
    function: str = "*"
    window_seconds: int | None = None
    ok: tuple[str, ...] = ()

    def rule(self, receiver: Receiver) -> Rule:
        extra = {"window_seconds": self.window_seconds} if self.window_seconds else {}
        r = rule(self.metric, self.operator, self.threshold, self.function, **extra)
        channel_for(receiver, r)
        return r


def oldest_waits(tap: Tap, workers: StartWorker) -> None:
    submit(tap.port, "waiting", 2)
    wait_jobs(tap.server, 2, state="queued")
    wait_metric(tap.server, "waiting", "oldest_queued_age", lambda v: v > 1.5,
                "oldest job older than 1.5 s")


def drained(tap: Tap, workers: StartWorker) -> None:
    worked(tap, workers, "prompt", 5, "cat")
    wait_metric(tap.server, "prompt", "workers", lambda v: v == 1, "worker listed")
    wait_metric(tap.server, "prompt", "queue_depth", lambda v: v == 0, "drained")


def slow_job(tap: Tap, workers: StartWorker) -> None:
    (job,) = worked(tap, workers, "slow", 1, "sh", "-c", "sleep 2; cat")
    assert job.runtime_ms >= 2000


def waited_for_a_worker(tap: Tap, workers: StartWorker) -> None:
    """A job that waits 1.5 s for a worker, then runs in a moment: a long time to complete,
    a short runtime."""
    submit(tap.port, "late", 1)
    wait_metric(tap.server, "late", "oldest_queued_age", lambda v: v > 1.5,
                "the job waiting 1.5 s")
    workers(tap.port, "late", "cat")
    (job,) = wait_jobs(tap.server, 1, state="completed")
    assert job.runtime_ms is not None and job.runtime_ms < 1000
    assert (job.finished_at - job.submitted_at).total_seconds() > 1.5


def staffed(tap: Tap, workers: StartWorker) -> None:
    worked(tap, workers, "staffed", 2, "cat")
    wait_metric(tap.server, "staffed", "workers", lambda v: v == 1, "one worker")


def running_for(seconds: float) -> Callable[[Tap, StartWorker], None]:
    """A job that runs (for 30 s), once it has run for ``seconds``."""
    def arrange(tap: Tap, workers: StartWorker) -> None:
        workers(tap.port, "stuck", "sh", "-c", "sleep 30; cat")
        submit(tap.port, "stuck", 1)
        wait_jobs(tap.server, 1, state="running")
        wait_metric(tap.server, "stuck", "running_too_long", lambda v: v > seconds,
                    f"job running for {seconds:g} s")

    return arrange


def stranded(tap: Tap, workers: StartWorker) -> None:
    workers(tap.port, "other", "cat")  # a worker, but not for this function
    queued(tap, "nobody", 4)
    wait_metric(tap.server, "other", "workers", lambda v: v == 1, "the other worker")


def behind_a_busy_worker(tap: Tap, workers: StartWorker) -> None:
    workers(tap.port, "busy", "sh", "-c", "sleep 30; cat")
    submit(tap.port, "busy", 3)
    wait_metric(tap.server, "busy", "queue_depth", lambda v: v == 2, "one running, two queued")


def completed_then_left(tap: Tap, workers: StartWorker, function: str, count: int) -> None:
    """``count`` jobs of ``function`` completed by a worker that then disconnects."""
    w = workers(tap.port, function, "cat")
    submit(tap.port, function, count)
    wait_jobs(tap.server, count, state="completed")
    stop_worker(w)

    def gone() -> bool:
        latest = (QueueSnapshot.objects.filter(server__name=tap.server, function=function)
                  .order_by("-at").first())
        return latest is not None and latest.workers == 0

    wait_for(gone, message="gearmand lists no worker")


def drain_900s_and_never(tap: Tap, workers: StartWorker) -> None:
    completed_then_left(tap, workers, "drainy", 10)
    queued(tap, "drainy", 30)  # 30 queued at 10 per 300 s → 900 s
    queued(tap, "stuck", 1)  # nothing ever completed: "never" (a year)


def drain_60s(tap: Tap, workers: StartWorker) -> None:
    completed_then_left(tap, workers, "drainy", 10)
    queued(tap, "drainy", 2)  # 2 queued at 10 per 300 s → 60 s


FIRES = [
    Case("queue_depth", ">", 5, lambda tap, w: queued(tap, "thumbnail", 20),
         {"thumbnail": 20}, function="thumb*"),
    Case("oldest_queued_age", ">", 1, oldest_waits, {"waiting": Between(1.5)}),
    Case("failure_rate", ">", 0.5, lambda tap, w: worked(tap, w, "boom", 5, "false",
                                                          state="failed"),
         {"boom": 1.0}, window_seconds=300),
    Case("runtime_p95", ">", 1000, slow_job, {"slow": Between(1000)}, window_seconds=300),
    Case("workers", "<", 1, lambda tap, w: queued(tap, "orphan", 3), {"orphan": 0}),
    Case("running_too_long", ">", 1, running_for(1.5), {"stuck": Between(1.5)}),
    Case("stranded", ">", 0, stranded, {"nobody": 4}, ok=("other",)),
    Case("drain_time", ">", 600, drain_900s_and_never,
         {"drainy": pytest.approx(900), "stuck": metric_values.NEVER_S}, window_seconds=300),
    Case("time_to_complete_p95", ">", 1000, waited_for_a_worker, {"late": Between(1000)},
         window_seconds=300),
]

QUIET = [
    Case("queue_depth", ">", 5, lambda tap, w: queued(tap, "thumbnail", 3),
         {"thumbnail": 3}, function="thumb*"),
    Case("oldest_queued_age", ">", 1, drained, {"prompt": 0.0}),
    Case("failure_rate", ">", 0.5, lambda tap, w: worked(tap, w, "fine", 5, "cat"),
         {"fine": 0.0}, window_seconds=300),
    Case("runtime_p95", ">", 1000, lambda tap, w: worked(tap, w, "quick", 5, "cat"),
         {"quick": Between(0, 1000)}, window_seconds=300),
    Case("workers", "<", 1, staffed, {"staffed": 1}),
    Case("running_too_long", ">", 600, running_for(0.5), {"stuck": Between(0.5, 600)}),
    Case("stranded", ">", 0, behind_a_busy_worker, {"busy": 0}),
    Case("drain_time", ">", 600, drain_60s, {"drainy": pytest.approx(60)},
         window_seconds=300),
    Case("time_to_complete_p95", ">", 1000, lambda tap, w: worked(tap, w, "quick", 5, "cat"),
         {"quick": Between(0, 1000)}, window_seconds=300),
]


def _id(case: Case) -> str:
    return case.metric


# --------------------------------------------------------------------------- the tests


@pytest.mark.gearmand
@pytest.mark.parametrize("case", FIRES, ids=_id)
def test_fires(case: Case, stack: Tap, workers: StartWorker, receiver: Receiver) -> None:
    r = case.rule(receiver)
    case.arrange(stack, workers)
    result = services.evaluate()  # refreshes rollups itself
    for function, value in case.judged.items():
        alert = assert_fired(r, function, result)
        assert alert.value == value
        assert alert.server.name == stack.server
    for function in case.ok:
        assert state_of(r, function).state == RuleState.OK
    assert delivery.deliver_due() == (len(case.judged), 0)
    assert len(receiver.messages) == len(case.judged)
    named = sorted(f for m in receiver.messages for f in case.judged if f in m["title"])
    assert named == sorted(case.judged)


@pytest.mark.gearmand
@pytest.mark.parametrize("case", QUIET, ids=_id)
def test_does_not_fire(case: Case, stack: Tap, workers: StartWorker,
                       receiver: Receiver) -> None:
    r = case.rule(receiver)
    case.arrange(stack, workers)
    ((function, value),) = case.judged.items()
    state = assert_quiet(r, function, services.evaluate())
    assert state.value == value
    assert delivery.deliver_due() == (0, 0) and receiver.messages == []


@pytest.mark.gearmand
def test_workers_alert_resolves_when_a_worker_comes(stack: Tap, workers: StartWorker) -> None:
    r = rule("workers", "<", 1)
    queued(stack, "orphan", 3)
    assert_fired(r, "orphan", services.evaluate())
    workers(stack.port, "orphan", "cat")
    wait_jobs(stack.server, 3, state="completed")
    wait_metric(stack.server, "orphan", "workers", lambda v: v == 1, "one worker")
    wait_metric(stack.server, "orphan", "queue_depth", lambda v: v == 0, "drained")
    result = services.evaluate()
    alert = Alert.objects.get(rule=r)
    assert result.resolved == [alert.id]
    assert alert.state == Alert.RESOLVED
