"""The fold rules: a batch of event rows becomes one delta per (boot, handle).

Pure Python, no database. ``tests/test_ingest.py`` checks how the deltas merge with rows
already stored; here only what one batch says about a job.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from jobs.fold import Delta, EventRow, fold, split_bytes

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def row(kind: str, seconds: float = 0.0, *, handle: str = "H:x:1", boot: str = "1",
        data: bytes | None = None, size: int | None = None, worker: str = "",
        detail: str = "", numerator: int | None = None, denominator: int | None = None,
        **extra: object) -> EventRow:
    text, raw = split_bytes(data)
    return EventRow(
        next(_ids), at(seconds), boot, handle, kind, "10.0.0.2:5001", worker, numerator,
        denominator, text, raw, len(data or b"") if size is None else size, detail,
        **extra,  # type: ignore[arg-type]
    )


def submitted(seconds: float = 0.0, **kw: object) -> EventRow:
    defaults: dict[str, object] = {
        "function": "reverse", "unique": "u-1", "priority": "high", "background": True,
        "data": b"payload",
    }
    return row("submitted", seconds, **{**defaults, **kw})  # type: ignore[arg-type]


def one(rows: list[EventRow]) -> Delta:
    (delta,) = fold(rows)
    return delta


# ------------------------------------------------------------------------ submitted


def test_submitted_alone_is_an_initial_queued_state() -> None:
    d = one([submitted(0)])
    assert (d.boot, d.handle) == ("1", "H:x:1")
    assert (d.state, d.state_initial) == ("queued", True)
    assert (d.function, d.unique, d.priority, d.background) == ("reverse", "u-1", "high", True)
    assert d.submitted_at == at(0)
    assert (d.payload_text, d.payload_bin, d.payload_size) == ("payload", None, 7)
    assert (d.clients, d.attempts) == (1, 0)
    assert d.started_at is None and d.first_started_at is None and d.finished_at is None


def test_epoch_submit_is_scheduled() -> None:
    d = one([submitted(0, scheduled_for=at(3600))])
    assert (d.state, d.state_initial, d.scheduled_for) == ("scheduled", True, at(3600))


def test_empty_unique_does_not_overwrite() -> None:
    d = one([submitted(0, unique="u-1"), row("attached", 1, unique="")])
    assert d.unique == "u-1"


# -------------------------------------------------------------------------- started


def test_started_then_submitted_in_one_batch_stays_running() -> None:
    d = one([
        row("started", 2, function="reverse", worker="w1", data=b"payload"),
        submitted(0),
    ])
    assert (d.state, d.state_initial) == ("running", False)
    assert d.submitted_at == at(0)
    assert d.first_started_at == at(2) and d.started_at == at(2)
    assert (d.attempts, d.worker, d.clients) == (1, "w1", 1)


def test_submitted_started_completed_in_one_batch() -> None:
    d = one([
        submitted(0),
        row("started", 1.5, worker="w1"),
        row("status", 2, numerator=1, denominator=2),
        row("completed", 4, worker="w1", data=b"result"),
    ])
    assert (d.state, d.state_initial) == ("completed", False)
    assert (d.submitted_at, d.first_started_at, d.started_at, d.finished_at) == (
        at(0), at(1.5), at(1.5), at(4))
    assert (d.progress_numerator, d.progress_denominator) == (1, 2)
    assert (d.result_text, d.result_bin, d.result_size) == ("result", None, 6)
    assert d.error is None


def test_started_without_submit_takes_the_assignment_payload() -> None:
    d = one([row("started", 1, function="reverse", data=b"from assign", size=500)])
    assert (d.state, d.function) == ("running", "reverse")
    assert (d.payload_text, d.payload_size) == ("from assign", 500)


def test_started_does_not_replace_the_submitted_payload() -> None:
    d = one([submitted(0, data=b"original"), row("started", 1, data=b"other")])
    assert (d.payload_text, d.payload_size) == ("original", 8)


def test_started_again_clears_the_finish_and_counts_attempts() -> None:
    d = one([
        submitted(0),
        row("started", 1, worker="w1"),
        row("worker_lost", 2, worker="w1"),
        row("started", 3, worker="w2"),
        row("worker_lost", 4, worker="w2"),
        row("started", 5, worker="w3"),
    ])
    assert (d.state, d.attempts, d.worker) == ("running", 3, "w3")
    assert d.first_started_at == at(1) and d.started_at == at(5)
    assert d.finished_at is None


def test_worker_lost_requeues_and_resets_progress() -> None:
    d = one([
        submitted(0),
        row("started", 1, worker="w1"),
        row("status", 2, numerator=7, denominator=10),
        row("worker_lost", 3, worker="w1"),
    ])
    assert (d.state, d.state_initial) == ("queued", False)
    assert (d.progress_numerator, d.progress_denominator) == (0, 0)
    assert d.finished_at is None
    assert d.attempts == 1


def test_status_after_requeue_and_restart() -> None:
    d = one([row("started", 1), row("worker_lost", 2), row("started", 3),
             row("status", 4, numerator=3, denominator=4)])
    assert (d.progress_numerator, d.progress_denominator, d.attempts) == (3, 4, 2)


# ------------------------------------------------------------------------ finishing


def test_exception_is_failed_with_the_text_as_error() -> None:
    d = one([submitted(0), row("started", 1, worker="w"),
             row("exception", 2, worker="w", data=b"ValueError: bad input")])
    assert (d.state, d.error, d.finished_at) == ("failed", "ValueError: bad input", at(2))
    assert d.result_size is None


def test_exception_with_binary_text_and_empty_text() -> None:
    assert one([row("exception", 1, data=b"\xff\x00")]).error == repr(b"\xff\x00")
    assert one([row("exception", 1, data=b"")]).error == "exception (no message)"


def test_failed_uses_its_detail_or_a_default() -> None:
    given_up = one([row("started", 1), row("failed", 2, detail="gearmand gave up")])
    assert (given_up.state, given_up.error) == ("failed", "gearmand gave up")
    plain = one([row("started", 1), row("failed", 2)])
    assert plain.state == "failed"
    assert plain.error == "the worker reported failure (WORK_FAIL)"


def test_finishing_event_keeps_a_known_worker_when_it_names_none() -> None:
    d = one([row("started", 1, worker="w1"), row("failed", 2, worker="")])
    assert d.worker == "w1"


def test_abandoned_while_queued_is_lost() -> None:
    d = one([submitted(0, background=False), row("abandoned", 1, detail="queued")])
    assert (d.state, d.state_initial) == ("lost", False)
    assert "went away" in (d.error or "")


def test_abandoned_while_running_changes_nothing() -> None:
    d = one([submitted(0, background=False), row("started", 1),
             row("abandoned", 2, detail="running")])
    assert (d.state, d.error, d.attempts) == ("running", None, 1)


def test_lost_and_cancelled_use_their_detail() -> None:
    lost = one([submitted(0), row("lost", 5, detail="gearmand restarted")])
    assert (lost.state, lost.error, lost.finished_at) == ("lost", "gearmand restarted", at(5))
    cancelled = one([submitted(0), row("cancelled", 5, detail="cancel job (admin)")])
    assert (cancelled.state, cancelled.error) == ("cancelled", "cancel job (admin)")
    bare = one([row("lost", 5)])
    assert bare.error == "lost"


def test_submitted_after_the_job_finished_keeps_the_final_state() -> None:
    """A fast worker: the job ended before its JOB_CREATED was seen."""
    d = one([row("started", 1), row("completed", 2, data=b"r"), submitted(0)])
    assert (d.state, d.state_initial, d.submitted_at) == ("completed", False, at(0))


# -------------------------------------------------------------------------- counters


def test_attempts_count_every_start() -> None:
    rows = [submitted(0)]
    for n in range(4):
        rows += [row("started", 1 + 2 * n), row("worker_lost", 2 + 2 * n)]
    assert one(rows).attempts == 4


def test_clients_count_submitter_and_attachers() -> None:
    d = one([submitted(0), row("attached", 1), row("attached", 2)])
    assert d.clients == 3
    assert one([row("attached", 1)]).clients == 1


def test_one_delta_per_boot_and_handle() -> None:
    deltas = fold([
        submitted(0, handle="H:x:1", boot="1"),
        submitted(0, handle="H:x:2", boot="1"),
        submitted(0, handle="H:x:1", boot="1.1"),
        row("started", 1, handle="H:x:1", boot="1"),
    ])
    by_key = {(d.boot, d.handle): d for d in deltas}
    assert set(by_key) == {("1", "H:x:1"), ("1", "H:x:2"), ("1.1", "H:x:1")}
    assert by_key[("1", "H:x:1")].state == "running"
    assert by_key[("1.1", "H:x:1")].state == "queued"


def test_empty_batch() -> None:
    assert fold([]) == []


# ---------------------------------------------------------------- result bytes/text


def test_completed_result_text_and_bytes() -> None:
    text = one([row("completed", 1, data="héllo".encode())])
    assert (text.result_text, text.result_bin, text.result_size) == ("héllo", None, 6)
    raw = one([row("completed", 1, data=b"\x89PNG\r\n\x1a\n")])
    assert (raw.result_text, raw.result_bin, raw.result_size) == (None, b"\x89PNG\r\n\x1a\n", 8)
    nul = one([row("completed", 1, data=b"a\0b")])
    assert (nul.result_text, nul.result_bin) == (None, b"a\0b")
    empty = one([row("completed", 1, data=b"")])
    assert (empty.result_text, empty.result_bin, empty.result_size) == ("", None, 0)


def test_truncated_result_keeps_the_wire_size() -> None:
    d = one([row("completed", 1, data=b"x" * 10, size=1000)])
    assert (d.result_text, d.result_size) == ("x" * 10, 1000)


@pytest.mark.parametrize(("raw", "expected"), [
    (None, (None, None)),
    (b"", ("", None)),
    (b"plain text", ("plain text", None)),
    ("日本語 ✓".encode(), ("日本語 ✓", None)),
    (b"\xff\xfe\xfd", (None, b"\xff\xfe\xfd")),
    (b"caf\xe9", (None, b"caf\xe9")),  # latin-1, not UTF-8
    (b"text\0with nul", (None, b"text\0with nul")),
    (b"\0", (None, b"\0")),
    ("é".encode()[:1], (None, b"\xc3")),  # a cut multi-byte sequence
])
def test_split_bytes(raw: bytes | None, expected: tuple[str | None, bytes | None]) -> None:
    assert split_bytes(raw) == expected
