"""The issue's forgery against a real gearmand, through the proxy and the real tap sink:
gearmand refuses a WORK_COMPLETE from a connection that does not hold the job, and HQ
now records nothing either; ordinary traffic (the ``gearman`` CLI) counts nothing as
forged, misdirected or malformed."""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.protocol import PacketType as T
from broker.tap import TapSink
from broker.tracker import Event, Tracker

from .harness import (
    HOST,
    Gearmand,
    ProxyThread,
    admin,
    free_port,
    read_packet,
    req,
    run_client,
    start_worker,
    status_workers,
    wait_until,
)

pytestmark = pytest.mark.gearmand


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Gearmand, ProxyThread, TapSink, list[Event]]]:
    g = Gearmand(free_port(), tmp_path).start()
    events: list[Event] = []
    sink = TapSink(Tracker(events.append, boot="1"))
    p = ProxyThread(g.port, sink, ship="inline")
    yield g, p, sink, events
    p.stop()
    g.stop()


def _queued(g: Gearmand, function: str) -> int:
    for line in admin(g.port, "status").splitlines():
        parts = line.split("\t")
        if parts[0] == function and len(parts) == 4:
            return int(parts[1])
    return 0


def test_forged_complete_is_refused_by_gearmand_and_by_hq(
        stack: tuple[Gearmand, ProxyThread, TapSink, list[Event]]) -> None:
    g, proxy, sink, events = stack
    with socket.create_connection((HOST, proxy.port)) as client:
        client.sendall(req(T.SUBMIT_JOB_BG, b"nobody", b"", b"payload"))
        reply = read_packet(client)
        assert struct.unpack(">I", reply[4:8])[0] == T.JOB_CREATED
        handle = reply[12:]
    with socket.create_connection((HOST, proxy.port)) as intruder:
        intruder.sendall(req(T.WORK_COMPLETE, handle, b"fake result"))
        intruder.sendall(b"\0RES" + struct.pack(">II", T.WORK_FAIL, len(handle)) + handle)
        intruder.sendall(req(T.ECHO_REQ, b"sync"))
        intruder.settimeout(5)
        answers = [read_packet(intruder)]
        while struct.unpack(">I", answers[-1][4:8])[0] != T.ECHO_RES:
            answers.append(read_packet(intruder))
    kinds = [struct.unpack(">I", a[4:8])[0] for a in answers]
    assert kinds[0] == T.ERROR and b"JOB_NOT_FOUND" in answers[0].upper(), answers
    assert wait_until(lambda: sink.tracker.counters["forged"] + sink.tracker.counters[
        "misdirected"] >= 2)
    assert _queued(g, "nobody") == 1  # gearmand did not believe it either
    assert [(e.kind, e.handle) for e in events] == [("submitted", handle.decode())]
    assert sink.tracker.counters["forged"] == 1
    assert sink.tracker.counters["misdirected"] == 1


def test_real_cli_traffic_counts_nothing_forged(
        stack: tuple[Gearmand, ProxyThread, TapSink, list[Event]]) -> None:
    g, proxy, sink, events = stack
    procs: list[subprocess.Popen[bytes]] = []
    try:
        start_worker(procs, proxy.port, "reverse", "rev")
        assert wait_until(lambda: status_workers(g.port, "reverse") == 1)
        for word in ("one", "two", "three"):
            assert word[::-1].encode() in run_client(proxy.port, "reverse", word)
        run_client(proxy.port, "reverse", "-b", "bg")
        assert wait_until(lambda: sum(e.kind == "completed" for e in events) == 4)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    counters = sink.tracker.counters
    assert (counters["forged"], counters["misdirected"], counters["malformed"]) == (0, 0, 0)
    assert counters["values_cleaned"] == 0
    by_handle: dict[str, list[str]] = {}
    for e in events:
        by_handle.setdefault(e.handle, []).append(e.kind)
    assert sorted(by_handle.values()) == [["submitted", "started", "completed"]] * 4
