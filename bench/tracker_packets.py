"""The tracker alone: CPU per packet and per job on a recorded-shape stream, no sockets.

Plays what PHP clients and workers put on the wire for background jobs (SUBMIT_JOB_BG →
JOB_CREATED; GRAB_JOB_ALL → JOB_ASSIGN_ALL → WORK_COMPLETE; GRAB_JOB_ALL → NO_JOB →
PRE_SLEEP → NOOP: 9 packets a job) straight into :class:`broker.tracker.Tracker.packet`,
and, as a second workload, workers that connect, register 5 functions, run 40 jobs and
leave (the traffic ``broker/workers.py`` follows). Prints µs per packet and per job, best
of ``--reps``. To compare two versions of ``broker/``, run it once with each on
``PYTHONPATH`` (e.g. ``git archive HEAD~1 broker | tar -x -C /tmp/old``)::

    .venv/bin/python bench/tracker_packets.py
    PYTHONPATH=/tmp/old .venv/bin/python bench/tracker_packets.py

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import time

from broker.protocol import Packet, PacketType, req, res
from broker.stream import ConnKey
from broker.tracker import Tracker

T = PacketType
Step = tuple[ConnKey, Packet, bool]


def _conn(port: int) -> ConnKey:
    return ConnKey("10.0.0.2", port, "10.0.0.1", 4730)


def _job(client: ConnKey, worker: ConnKey, n: int, fn: bytes = b"resize") -> list[Step]:
    handle = f"H:lap:{n}".encode()
    return [
        (client, req(T.SUBMIT_JOB_BG, fn, b"", b"payload"), True),
        (client, res(T.JOB_CREATED, handle), False),
        (worker, req(T.GRAB_JOB_ALL), True),
        (worker, res(T.JOB_ASSIGN_ALL, handle, fn, b"", b"", b"payload"), False),
        (worker, req(T.WORK_COMPLETE, handle, b"done"), True),
        (worker, req(T.GRAB_JOB_ALL), True),
        (worker, res(T.NO_JOB), False),
        (worker, req(T.PRE_SLEEP), True),
        (worker, res(T.NOOP), False),
    ]


def steady(jobs: int) -> tuple[list[Step], list[ConnKey]]:
    client, worker = _conn(5001), _conn(5002)
    steps = [(worker, req(T.CAN_DO, b"resize"), True)]
    for n in range(1, jobs + 1):
        steps += _job(client, worker, n)
    return steps, [client, worker]


def churn(jobs: int) -> tuple[list[Step], list[ConnKey]]:
    """Short-lived workers: each connects, registers 5 functions, runs 40 jobs, leaves
    (its close is played by :func:`run` through ``closes``)."""
    client = _conn(5001)
    steps: list[Step] = []
    n = 0
    port = 6000
    while n < jobs:
        port += 1
        worker = _conn(port)
        steps.append((worker, req(T.SET_CLIENT_ID, f"w-{port}".encode()), True))
        steps += [(worker, req(T.CAN_DO, f"fn{i}".encode()), True) for i in range(5)]
        for _ in range(40):
            n += 1
            steps += _job(client, worker, n, b"fn0")
        steps.append((worker, req(T.RESET_ABILITIES), True))  # marks the end: closed below
    return steps, [client]


def run(steps: list[Step]) -> float:
    tracker = Tracker(lambda event: None, boot="1")
    packet, closed = tracker.packet, tracker.closed
    reset = int(T.RESET_ABILITIES)
    gc.disable()
    t0 = time.process_time()
    ts = 1000.0
    for key, item, from_peer in steps:
        ts += 0.0001
        packet(key, item, ts, from_peer)
        if item.type == reset:
            closed(key, ts)
    spent = time.process_time() - t0
    gc.enable()
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(f"{'workload':10} {'packets':>9} {'µs/packet':>10} {'µs/job':>8}")
    for name, make in (("steady", steady), ("churn", churn)):
        steps, _ = make(args.jobs)
        best = min(run(steps) for _ in range(args.reps))
        print(f"{name:10} {len(steps):9d} {best / len(steps) * 1e6:10.3f} "
              f"{best / args.jobs * 1e6:8.2f}")


if __name__ == "__main__":
    main()
