"""Rule states written in bulk by the evaluation tick (``alerts.rule_states``): COPY for
new ones, one UPDATE for the ones that moved, read back as the tick steps them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from alerts import rule_states
from alerts.models import Rule, RuleState
from jobs.models import Server


@pytest.mark.django_db
def test_insert_update_load_round_trip():
    server = Server.objects.create(name="s1")
    rule = Rule.objects.create(name="deep", metric="queue_depth", function="*",
                               operator=">", threshold=10)
    now = timezone.now()
    new = [rule_states.TickState(None, rule.id, server.id, f"fn{i}", RuleState.OK, now)
           for i in range(3)]
    new.append(rule_states.TickState(None, rule.id, None, "*", RuleState.OK, now))
    for state, value in zip(new, [None, 3, 2.5, None], strict=True):
        state.value, state.evaluated_at = value, now
    rule_states.insert(new)
    loaded = rule_states.load([rule.id])
    assert set(loaded) == {(rule.id, server.id, "fn0"), (rule.id, server.id, "fn1"),
                           (rule.id, server.id, "fn2"), (rule.id, None, "*")}
    assert all(s.pk and s.state == RuleState.OK and s.since == now for s in loaded.values())
    assert RuleState.objects.get(function="fn1").value == 3.0

    # a tick's moves: a gauge as an int next to a rate as a float, in one statement
    later = now + timedelta(seconds=30)
    moved = [loaded[(rule.id, server.id, "fn0")], loaded[(rule.id, server.id, "fn2")]]
    for state, value in zip(moved, [40, 12.5], strict=True):
        state.state, state.since, state.value, state.evaluated_at = (
            RuleState.FIRING, later, value, later)
    rule_states.update(moved)
    rows = {s.function: (s.state, s.since, s.value, s.evaluated_at)
            for s in RuleState.objects.all()}
    assert rows["fn0"] == (RuleState.FIRING, later, 40.0, later)
    assert rows["fn2"] == (RuleState.FIRING, later, 12.5, later)
    assert rows["fn1"] == (RuleState.OK, now, 3.0, now)  # untouched
    rule_states.update([])
    rule_states.insert([])
