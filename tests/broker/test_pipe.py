"""PipeSink → a real pipe → replay: what the proxy's tap child sees, including copies
dropped while the pipe was full (reported as one gap, in stream order)."""

from __future__ import annotations

import os
import threading

import pytest

from broker.pipe import BACKLOG_MAX, PipeSink, make_pipe, replay
from broker.stream import ConnKey

from .replay import PEER, RecordingSink

OTHER = ConnKey("10.0.0.3", 40001, "10.0.0.1", 4730)


@pytest.fixture
def pipe() -> tuple[int, int]:
    return make_pipe()


def replay_in_thread(read_fd: int, sink: RecordingSink) -> threading.Thread:
    def run() -> None:
        try:
            replay(read_fd, sink)
        finally:
            os.close(read_fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_every_callback_arrives_in_order(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    sink = PipeSink(write_fd)
    sink.on_open(PEER, 1.0)
    sink.on_open(OTHER, 1.5, mid_stream=True)
    sink.on_data(PEER, True, b"\0REQ", 2.0)
    sink.on_gap(OTHER, False, 2.5, -1)
    sink.on_data(PEER, False, b"\0RES", 3.0)
    sink.on_close(PEER, 4.0)
    sink.on_close(OTHER, 5.0)
    recorder = RecordingSink()
    reader = replay_in_thread(read_fd, recorder)
    sink.close()
    reader.join(10)
    assert recorder.events == [
        ("open", PEER, 1.0, False),
        ("open", OTHER, 1.5, True),
        ("data", PEER, True, b"\0REQ", 2.0),
        ("gap", OTHER, False, 2.5, -1),
        ("data", PEER, False, b"\0RES", 3.0),
        ("close", PEER, 4.0),
        ("close", OTHER, 5.0),
    ]
    assert sink.counters == {"batches": 1, "dropped_chunks": 0, "dropped_bytes": 0}


def test_copies_dropped_when_the_pipe_is_full_become_one_gap(pipe: tuple[int, int]) -> None:
    """Nobody reads until the backlog is past its bound: later copies are dropped, and
    each direction's loss reaches the child as one gap before that direction's next
    bytes (or before the close)."""
    read_fd, write_fd = pipe
    sink = PipeSink(write_fd)
    chunk = b"x" * (1 << 20)
    sink.on_open(PEER, 1.0)
    sent = 0
    while sink.backlog <= BACKLOG_MAX:
        sink.on_data(PEER, True, chunk, 2.0)
        sink.flush()
        sent += 1
    for _ in range(3):
        sink.on_data(PEER, True, chunk, 3.0)
    sink.on_data(PEER, False, b"reply", 3.5)
    assert sink.counters["dropped_chunks"] == 4
    assert sink.counters["dropped_bytes"] == 3 * len(chunk) + 5

    recorder = RecordingSink()
    reader = replay_in_thread(read_fd, recorder)
    while sink.backlog > BACKLOG_MAX:
        sink.flush()
    sink.on_data(PEER, True, b"after", 4.0)
    sink.on_close(PEER, 5.0)
    sink.close()
    reader.join(30)
    assert not reader.is_alive()
    assert recorder.kinds() == ["open", "data", "gap", "data", "gap", "close"]
    assert recorder.gaps() == [(True, 3 * len(chunk)), (False, 5)]
    assert recorder.stream(True) == chunk * sent + b"after"
    assert recorder.stream(False) == b""
