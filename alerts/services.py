"""Where a rule fires: evaluation of every enabled rule against the monitoring metrics.

One tick (:func:`evaluate`) reads every metric once (``alerts.metric_values.alert_metrics``),
steps each (rule, queue) state machine (``StateMachine.step``), opens or resolves alerts, and
writes one outbox row per channel for each change (``alerts/delivery.py`` sends them).
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.db.models import JSONField, Value, prefetch_related_objects
from django.utils import timezone

from hq.errors import Conflict, NotFound
from jobs.models import Server
from monitoring import live
from monitoring import selectors as monitoring
from monitoring.services import refresh_rollups

from . import metric_values, rule_states
from .models import Alert, Channel, Metric, Notification, Rule, RuleState
from .rule_states import TickState

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from .delivery import SendResult

log = logging.getLogger(__name__)
M = TypeVar("M", Rule, Channel)


@dataclass
class TickResult:
    rules: int = 0
    states: int = 0
    fired: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)


def evaluate(now: datetime | None = None, *, refresh: bool = True) -> TickResult:
    """One evaluation tick over every enabled rule."""
    now = now or timezone.now()
    if refresh:  # fold the last minutes' jobs into rollups so rates are current
        refresh_rollups(since=now - timedelta(minutes=2))
    rules = list(Rule.objects.filter(enabled=True))  # channels: only of rules that fire
    windows = {r.window_seconds for r in rules if r.metric in metric_values.WINDOWED}
    complete = {r.window_seconds for r in rules if r.metric == Metric.TIME_TO_COMPLETE_P95}
    values = metric_values.alert_metrics(windows, now)
    metric_values.add_time_to_complete(values, complete, now)  # read from jobs: only if asked
    states = rule_states.load([r.id for r in rules])
    matcher = QueueMatcher(values)
    by_rule: dict[int, dict[tuple[int | None, str], TickState]] = {}
    for (rid, sid, function), rule_state in states.items():
        by_rule.setdefault(rid, {})[(sid, function)] = rule_state
    result = TickResult(rules=len(rules))
    new_states: list[TickState] = []
    dirty: list[TickState] = []
    fired: list[tuple[Rule, TickState, float]] = []
    with transaction.atomic():
        for rule in rules:
            key = metric_values.metric_key(rule.metric, rule.window_seconds)
            seen: set[tuple[int | None, str]] = set()
            for sid, function in _judged(rule, matcher):
                metrics = values[(sid, function)]
                seen.add((sid, function))
                state = states.get((rule.id, sid, function))
                if state is None:
                    state = TickState(None, rule.id, sid, function, RuleState.OK, now)
                    new_states.append(state)
                if _apply(rule, state, metrics.get(key), now, result, fired):
                    dirty.append(state)
            for (sid, function), state in by_rule.get(rule.id, {}).items():
                gone = (sid, function) not in seen  # the queue went away: no data
                if gone and _apply(rule, state, None, now, result, fired):
                    dirty.append(state)
        _fire_all(fired, now, result)
        _close_disabled(now)
        rule_states.insert(new_states)
        # only states that moved are written: a steady tick over thousands costs nothing
        rule_states.update([s for s in dirty if s.pk])
        _repeat_notifications(now)
    result.states = len(states) + len(new_states)
    return result


def _judged(rule: Rule, matcher: QueueMatcher) -> list[tuple[int, str]]:
    """The (server, function) keys a rule judges: those its glob matches, on its server
    when it names one; a per-server metric (``server_down``) only at function ``*``."""
    keys = matcher.keys(rule.function)
    if rule.server_id:
        keys = [key for key in keys if key[0] == rule.server_id]
    if rule.metric in metric_values.PER_SERVER:
        keys = [key for key in keys if key[1] == metric_values.SERVER_FUNCTION]
    return keys


def _close_disabled(now: datetime) -> None:
    """A rule switched off stops alerting: its firing alerts end (without a message) and
    its states start over if it is switched on again."""
    Alert.objects.filter(state=Alert.FIRING, rule__enabled=False).update(
        state=Alert.RESOLVED, resolved_at=now)
    RuleState.objects.filter(rule__enabled=False).delete()


def _apply(rule: Rule, state: TickState, value: float | None, now: datetime,
           result: TickResult, fired: list[tuple[Rule, TickState, float]]) -> bool:
    """Step one state machine; True when its state changed (it must be saved). Alerts
    that fire are collected in ``fired`` and written together by :func:`_fire_all`."""
    before = (state.state, state.since)
    transition = state.step(rule, value, now)
    if transition.fired and value is not None:
        fired.append((rule, state, value))
    elif transition.resolved:
        alert = _resolve(rule, state, now)
        if alert is not None:
            result.resolved.append(alert.id)
    return (state.state, state.since) != before


#: an alert's snapshot keeps its own queue plus this many of the deepest others, and at
#: most this many workers: enough to see the state of things, small enough to store often
SNAPSHOT_QUEUES = 25
SNAPSHOT_WORKERS = 100


def _snapshots(fired: list[tuple[Rule, TickState, float]]) -> list[dict[str, Any]]:
    """What the queues and workers looked like when each alert fired (JSON-safe): its
    own queue plus the ``SNAPSHOT_QUEUES`` deepest others, and the first workers. The
    last hour's figures are read once per server for just the queues kept (the deepest
    and the ones firing), not for every queue."""
    by_server: dict[int | None, set[str]] = {}
    for _, state, _ in fired:
        by_server.setdefault(state.server_id, set()).add(state.function)
    names = dict(Server.objects.filter(pk__in=[s for s in by_server if s is not None])
                 .values_list("id", "name"))
    views = {sid: _server_view(names.get(sid) if sid is not None else None, own)
             for sid, own in by_server.items()}
    out = []
    for _, state, _ in fired:
        view = views[state.server_id]
        own = [q for q in view["queues"] if q["function"] == state.function]
        others = [q for q in view["queues"] if q["function"] != state.function]
        kept = sorted(own + others[:SNAPSHOT_QUEUES], key=lambda q: (q["server"], q["function"]))
        out.append({"queues": kept, "queues_total": view["queues_total"],
                    "workers": view["workers"][:SNAPSHOT_WORKERS],
                    "workers_total": view["workers_total"]})
    return out


def _server_view(name: str | None, firing: set[str]) -> dict[str, Any]:
    """One server's queues (the deepest first) and workers for :func:`_snapshots`; no
    server: every server's."""
    every = monitoring.queue_depths(name)
    deepest = sorted(every, key=lambda f: (-every[f], f))[:SNAPSHOT_QUEUES + 1]
    queues = sorted(({k: v for k, v in row.items() if k != "sparkline"}
                     for row in monitoring.queues(name, functions=set(deepest) | firing,
                                                  sparklines=False)),
                    key=lambda q: -(q["queued"] or 0))
    workers = [{**w, "connected_at": w["connected_at"].isoformat(),
                "last_seen": w["last_seen"].isoformat()} for w in monitoring.workers(name)]
    return {"queues": queues, "queues_total": len(every), "workers": workers,
            "workers_total": len(workers)}


class QueueMatcher:
    """Which (server, function) keys a rule's glob matches, each distinct glob worked out
    once per tick: exact names by lookup, ``prefix*`` by bisecting the sorted names,
    anything else by its regex."""

    def __init__(self, values: dict[tuple[int, str], Any]) -> None:
        self._by_function: dict[str, list[tuple[int, str]]] = {}
        for key in values:
            self._by_function.setdefault(key[1], []).append(key)
        self._names = sorted(self._by_function)
        self._cache: dict[str, list[tuple[int, str]]] = {}

    def keys(self, glob: str) -> list[tuple[int, str]]:
        found = self._cache.get(glob)
        if found is None:
            found = self._cache[glob] = [
                key for name in self._matching(glob) for key in self._by_function[name]]
        return found

    def _matching(self, glob: str) -> list[str]:
        if glob == "*":
            return self._names
        if not any(c in glob for c in "*?["):
            return [glob] if glob in self._by_function else []
        prefix = glob[:-1]
        if glob.endswith("*") and not any(c in prefix for c in "*?["):
            start = bisect.bisect_left(self._names, prefix)
            end = bisect.bisect_left(self._names, prefix + "\U0010ffff")
            return self._names[start:end]
        probe = Rule(function=glob)
        return [name for name in self._names if probe.matches(name)]


def _fire_all(fired: list[tuple[Rule, TickState, float]], now: datetime,
              result: TickResult) -> None:
    """Open the alerts of this tick in one INSERT, their notifications in another."""
    if not fired:
        return
    servers = Server.objects.in_bulk({state.server_id for _, state, _ in fired} - {None})
    prefetch_related_objects(list({rule.id: rule for rule, _, _ in fired}.values()),
                             "channels")
    snapshots = _snapshots(fired)
    # each snapshot as one JSON literal: Django's UNNEST bulk insert would escape the
    # JSON of every alert character by character in Python (0.3-0.6 s for 200 alerts)
    alerts = [Alert(rule=rule, server=servers.get(state.server_id), function=state.function,
                    state=Alert.FIRING, value=value, peak=value, started_at=now,
                    last_notified_at=now, snapshot=Value(snapshot, output_field=JSONField()))
              for (rule, state, value), snapshot in zip(fired, snapshots, strict=True)]
    Alert.objects.bulk_create(alerts)
    for alert, snapshot in zip(alerts, snapshots, strict=True):
        alert.snapshot = snapshot
    Notification.objects.bulk_create(
        [note for alert in alerts for note in _notes(alert, "firing", now)])
    for alert in alerts:
        _announce(alert, alert.rule)
        result.fired.append(alert.id)
        log.warning("alert fired: %s on %s = %g", alert.rule.name, alert.function, alert.value)


def _resolve(rule: Rule, state: TickState, now: datetime) -> Alert | None:
    alert = (Alert.objects.filter(rule=rule, server=state.server_id,
                                  function=state.function, state=Alert.FIRING)
             .order_by("-started_at").first())
    if alert is None:
        return None
    alert.state, alert.resolved_at = Alert.RESOLVED, now
    if state.value is not None:
        alert.value = state.value
    alert.save(update_fields=["state", "resolved_at", "value"])
    _notify(alert, "resolved", now)
    _announce(alert, rule)
    log.info("alert resolved: %s on %s", rule.name, state.function)
    return alert


def _announce(alert: Alert, rule: Rule) -> None:
    """Live pages hear of it once the transaction that made it commits."""
    transaction.on_commit(partial(
        live.alert, rule=rule.name, state=alert.state, function=alert.function,
        server=alert.server.name if alert.server else "", value=alert.value, id=alert.id,
        severity=rule.severity))


def _message(alert: Alert, kind: str) -> tuple[str, str]:
    rule = alert.rule
    where = f"{alert.function}" + (f" on {alert.server.name}" if alert.server else "")
    if kind == "firing":
        title = f"[{rule.severity.upper()}] {rule.name}: {where}"
        body = (f"{rule.describe()} is true: {rule.metric} = {alert.value:g} "
                f"(since {alert.started_at:%Y-%m-%d %H:%M:%S} UTC).")
    else:
        title = f"[RESOLVED] {rule.name}: {where}"
        body = (f"{rule.metric} is back to {alert.value:g} "
                f"after {alert.duration_s or 0:.0f} s.")
    return title, f"{body}\n{settings.HQ_PUBLIC_URL}/alerts/{alert.id}/"


def _notes(alert: Alert, kind: str, now: datetime) -> list[Notification]:
    title, body = _message(alert, kind)
    return [Notification(alert=alert, channel=ch, kind=kind, title=title, body=body,
                         next_attempt_at=now)
            for ch in alert.rule.channels.all() if ch.enabled]


def _notify(alert: Alert, kind: str, now: datetime) -> None:
    Notification.objects.bulk_create(_notes(alert, kind, now))


def _repeat_notifications(now: datetime) -> None:
    """A firing alert nobody acknowledged is announced again every HQ_ALERT_REPEAT_S."""
    every = settings.HQ_ALERT_REPEAT_S
    if every <= 0:
        return
    due = (Alert.objects.filter(state=Alert.FIRING, acknowledged_at__isnull=True,
                                rule__enabled=True,
                                last_notified_at__lte=now - timedelta(seconds=every))
           .exclude(silenced_until__gt=now).select_related("rule", "server"))
    for alert in due:
        _notify(alert, "firing", now)
        Alert.objects.filter(pk=alert.pk).update(last_notified_at=now)


def acknowledge(*, alert_id: int, user: User | None, silence_s: int = 0) -> Alert:
    alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None:
        raise NotFound(f"No alert with id {alert_id}.")
    if alert.state != Alert.FIRING:
        raise Conflict("Only a firing alert can be acknowledged.")
    now = timezone.now()
    alert.acknowledged_by, alert.acknowledged_at = user, now
    if silence_s > 0:
        alert.silenced_until = now + timedelta(seconds=silence_s)
    alert.save(update_fields=["acknowledged_by", "acknowledged_at", "silenced_until"])
    return alert


def test_channel(*, channel: Channel) -> tuple[Notification, SendResult]:
    """Send a test message now and record it (already sent or failed, never pending, so
    the delivery task does not send it a second time)."""
    from .delivery import send

    note = Notification(
        channel=channel, kind="test", title="Gearman HQ test notification",
        body=f"This is a test of channel {channel.name!r}. If you read it, it works.",
        next_attempt_at=timezone.now(), attempts=1)
    result = send(channel.url, note.title, note.body)
    note.status = Notification.SENT if result.ok else Notification.FAILED
    note.sent_at = timezone.now() if result.ok else None
    note.last_error = result.error
    note.save()
    return note, result


def set_enabled(model: type[M], *, pk: int, enabled: bool | None) -> M:
    """Enable or disable a rule or a channel (``None`` flips it). A disabled rule goes
    quiet at the next tick; a disabled channel is no longer notified."""
    obj = _get(model, pk)
    obj.enabled = (not obj.enabled) if enabled is None else enabled
    obj.save(update_fields=["enabled"])
    return obj


def delete(model: type[M], *, pk: int) -> str:
    """Delete a rule (with its alerts) or a channel; returns its name."""
    obj = _get(model, pk)
    name = obj.name
    obj.delete()
    return name


def _get(model: type[M], pk: int) -> M:
    try:
        return model.objects.get(pk=pk)
    except model.DoesNotExist:
        raise NotFound(f"No {model._meta.verbose_name} with id {pk}.") from None
