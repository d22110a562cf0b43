"""``monitoring.seldom.SeldomWarning``: the live stream's and the tap reports' Redis
warnings, said once and then not again for ``every_s`` seconds (the clock is stubbed)."""

from __future__ import annotations

import logging

import pytest

from monitoring import seldom


def test_a_warning_is_said_then_quiet_for_every_s(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    clock = [1000.0]
    monkeypatch.setattr(seldom.time, "monotonic", lambda: clock[0])
    warn = seldom.SeldomWarning(logging.getLogger("hq.test.seldom"), every_s=30)
    with caplog.at_level(logging.WARNING, logger="hq.test.seldom"):
        warn("redis away: %s", "refused")
        clock[0] += 29.9
        warn("redis away: %s", "still")
        clock[0] += 0.1
        warn("redis away: %s", "again")
    assert [r.getMessage() for r in caplog.records] == ["redis away: refused",
                                                        "redis away: again"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
