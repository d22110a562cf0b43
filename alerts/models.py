"""Alert rules, their per-queue evaluation state, alerts, channels and the notification
outbox. The state machine (ok → pending → firing → resolved) is :meth:`RuleState.step`."""

from __future__ import annotations

import fnmatch
import operator as op
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from django.conf import settings
from django.db import models

from jobs.models import Server


class Metric(models.TextChoices):
    QUEUE_DEPTH = "queue_depth", "queue depth (jobs)"
    OLDEST_QUEUED_AGE = "oldest_queued_age", "oldest queued job age (s)"
    FAILURE_RATE = "failure_rate", "failure rate (0 to 1, over the window)"
    RUNTIME_P95 = "runtime_p95", "runtime p95 (ms, over the window)"
    WORKERS = "workers", "connected workers"
    RUNNING_TOO_LONG = "running_too_long", "longest running job (s)"
    STRANDED = "stranded", "queued jobs no connected worker can do"
    DRAIN_TIME = "drain_time", "forecast seconds to empty the queue"
    TAP_HEALTH = "tap_health", "tap health (1 healthy, 0 unhealthy; function *)"
    SERVER_DOWN = "server_down", "seconds gearmand has not answered (0 while up; function *)"
    TIME_TO_COMPLETE_P95 = ("time_to_complete_p95",
                            "submit to finish p95 (ms, over the window)")
    DEAD_LETTERS = "dead_letters", "dead letters (jobs whose retries ran out, in the window)"
    JOB_OF_DEATH = "job_of_death", "jobs of death on the dead-letter list"


class Severity(models.TextChoices):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


OPERATORS = {">": op.gt, ">=": op.ge, "<": op.lt, "<=": op.le}
#: a firing alert resolves only once the value is this far (relative to the threshold)
#: on the good side, so a value hovering on the line never flaps
HYSTERESIS = 0.05


class Channel(models.Model):
    """Where notifications go: any apprise URL (mailto://, slack://, json://, …)."""

    name = models.CharField(max_length=100, unique=True)
    url = models.CharField(max_length=2000)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Rule(models.Model):
    name = models.CharField(max_length=200)
    metric = models.CharField(max_length=20, choices=Metric.choices)
    function = models.CharField(max_length=255, default="*")  # a glob
    server = models.ForeignKey(Server, null=True, blank=True, on_delete=models.CASCADE)
    operator = models.CharField(max_length=2, choices=[(k, k) for k in OPERATORS])
    threshold = models.FloatField()
    for_seconds = models.PositiveIntegerField(default=0)
    window_seconds = models.PositiveIntegerField(default=300)
    severity = models.CharField(max_length=10, choices=Severity.choices,
                                default=Severity.WARNING)
    channels = models.ManyToManyField(Channel, blank=True, related_name="rules")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    def describe(self) -> str:
        wait = f" for {self.for_seconds} s" if self.for_seconds else ""
        return f"{self.metric} of {self.function} {self.operator} {self.threshold:g}{wait}"

    def matches(self, function: str) -> bool:
        return self.function == "*" or bool(_glob(self.function).match(function))

    def breached(self, value: float) -> bool:
        return OPERATORS[self.operator](value, self.threshold)

    def recovered(self, value: float) -> bool:
        """On the good side of the threshold by the hysteresis band (5 % of it).

        Where the band is narrower than one whole unit, a whole-number value on the good
        side also counts: counts (workers, queued jobs) cannot sit inside such a band, and
        "workers < 1" must resolve when one worker comes back.
        """
        band = abs(self.threshold) * HYSTERESIS
        if self.operator in (">", ">="):
            past = value <= self.threshold - band
        else:
            past = value >= self.threshold + band
        if past:
            return True
        return band < 1 and value == int(value) and not self.breached(value)


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


@dataclass(frozen=True)
class Transition:
    """What one evaluation changed: ``fired`` or ``resolved`` (or nothing)."""

    fired: bool = False
    resolved: bool = False


class StateMachine:
    """ok → pending → firing → ok for one rule and one queue: :class:`RuleState` (the
    row) and ``alerts.rule_states.TickState`` (what an evaluation tick steps, without a
    model per state) share it. Needs ``state``, ``since``, ``value``, ``evaluated_at``."""

    OK, PENDING, FIRING = "ok", "pending", "firing"
    state: str
    since: datetime
    value: float | None
    evaluated_at: datetime

    def step(self, rule: Rule, value: float | None, now: datetime) -> Transition:
        """Advance the state machine with this tick's value (None: no data → ok side)."""
        self.value, self.evaluated_at = value, now
        breached = value is not None and rule.breached(value)
        if self.state == self.FIRING:
            if value is None or rule.recovered(value):
                self._move(self.OK, now)
                return Transition(resolved=True)
            return Transition()
        if not breached:
            if self.state != self.OK:
                self._move(self.OK, now)
            return Transition()
        if self.state == self.OK:
            self._move(self.PENDING, now)
        if now - self.since >= timedelta(seconds=rule.for_seconds):
            self._move(self.FIRING, now)
            return Transition(fired=True)
        return Transition()

    def _move(self, state: str, now: datetime) -> None:
        self.state, self.since = state, now


class RuleState(StateMachine, models.Model):
    """Evaluation state of one rule for one queue (server + function)."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="states")
    server = models.ForeignKey(Server, null=True, on_delete=models.CASCADE)
    function = models.CharField(max_length=255)
    state = models.CharField(max_length=8, default=StateMachine.OK)
    since = models.DateTimeField()
    value = models.FloatField(null=True)
    evaluated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "server", "function"],
                                               name="rulestate_key")]


class Alert(models.Model):
    FIRING, RESOLVED = "firing", "resolved"

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="alerts")
    server = models.ForeignKey(Server, null=True, on_delete=models.SET_NULL)
    function = models.CharField(max_length=255)
    state = models.CharField(max_length=8, default=FIRING)
    value = models.FloatField()
    peak = models.FloatField()
    started_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                        on_delete=models.SET_NULL)
    acknowledged_at = models.DateTimeField(null=True)
    silenced_until = models.DateTimeField(null=True)
    last_notified_at = models.DateTimeField(null=True)
    snapshot = models.JSONField(default=dict)  # queues and workers when it fired

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["state", "-started_at"], name="alert_state"),
                   models.Index(fields=["rule", "server", "function", "state"],
                                name="alert_open")]

    @property
    def duration_s(self) -> float | None:
        if self.resolved_at is None:
            return None
        return (self.resolved_at - self.started_at).total_seconds()


class Notification(models.Model):
    """The outbox: one row per message per channel, claimed by the delivery task."""

    PENDING, SENT, FAILED = "pending", "sent", "failed"
    KINDS = ("firing", "resolved", "test")

    alert = models.ForeignKey(Alert, null=True, on_delete=models.CASCADE,
                              related_name="notifications")
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE,
                                related_name="notifications")
    kind = models.CharField(max_length=10)
    title = models.CharField(max_length=300)
    body = models.TextField()
    status = models.CharField(max_length=8, default=PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["next_attempt_at"], name="notification_due",
                                condition=models.Q(status="pending"))]
