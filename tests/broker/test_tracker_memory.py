"""What the tracker keeps per open job stays small (issue 13: 100,000 open jobs in a tap).

Counted in objects, not bytes or seconds: a background job holds no set of its own, and
jobs of one function share one function string.
"""

from __future__ import annotations

from broker.jobstate import NO_WAITERS
from broker.protocol import PacketType as T
from broker.protocol import req, res
from broker.stream import ConnKey
from broker.tracker import Event, Tracker


def client(port: int) -> ConnKey:
    return ConnKey("10.0.0.2", port, "10.0.0.1", 4730)


def test_open_background_jobs_share_their_function_name_and_hold_no_waiter_set() -> None:
    events: list[Event] = []
    tracker = Tracker(events.append, boot="1")
    for n in range(1, 201):
        key = client(5000 + n % 7)
        tracker.packet(key, req(T.SUBMIT_JOB_BG, b"resize", b"", b"x"), n, True)
        tracker.packet(key, res(T.JOB_CREATED, f"H:h:{n}".encode()), n + 0.5, False)
    jobs = list(tracker._jobs.values())
    assert len(jobs) == 200
    assert all(job.waiters is NO_WAITERS for job in jobs)
    assert len({id(job.function) for job in jobs}) == 1
    assert [e.kind for e in events] == ["submitted"] * 200


def test_a_waiting_client_still_gets_its_own_set_and_loses_it_on_close() -> None:
    tracker = Tracker(lambda e: None, boot="1")
    fg, bg = client(6001), client(6002)
    tracker.packet(fg, req(T.SUBMIT_JOB, b"resize", b"", b"x"), 1.0, True)
    tracker.packet(fg, res(T.JOB_CREATED, b"H:h:1"), 1.1, False)
    tracker.packet(bg, req(T.SUBMIT_JOB_BG, b"resize", b"", b"x"), 1.2, True)
    tracker.packet(bg, res(T.JOB_CREATED, b"H:h:2"), 1.3, False)
    assert tracker._jobs["H:h:1"].waiters == {fg}
    assert tracker._jobs["H:h:2"].waiters is NO_WAITERS
    tracker.closed(fg, 2.0)
    assert "H:h:1" not in tracker._jobs  # gearmand drops a fg job nobody waits for
