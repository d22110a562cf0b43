"""Worker facts from the traffic (:mod:`broker.workers`), played through a real tracker."""

from __future__ import annotations

from broker.protocol import req, res
from broker.workers import ABILITIES_MAX, WorkerFact

from .wire import H1, T, Wire


def _wire() -> tuple[Wire, list[WorkerFact]]:
    w = Wire()
    facts: list[WorkerFact] = []
    w.tracker.workers.emit = facts.append
    return w, facts


def test_can_do_then_cant_do_then_reset_then_close() -> None:
    w, facts = _wire()
    worker = w.open(5002, client_id=b"img-1", from_start=True)
    t1 = w.send(worker, req(T.CAN_DO, b"resize"), req(T.CAN_DO_TIMEOUT, b"crop", b"30"))
    t2 = w.send(worker, req(T.CAN_DO, b"resize"))  # already known: nothing new
    t3 = w.send(worker, req(T.CANT_DO, b"resize"))
    t4 = w.send(worker, req(T.CAN_DO, b"thumb"))
    t5 = w.send(worker, req(T.RESET_ABILITIES))
    assert t2 and facts == [
        WorkerFact("10.0.0.2:5002", "img-1", ("resize",), t1),
        WorkerFact("10.0.0.2:5002", "img-1", ("crop", "resize"), t1),
        WorkerFact("10.0.0.2:5002", "img-1", ("crop",), t3),
        WorkerFact("10.0.0.2:5002", "img-1", ("crop", "thumb"), t4),
        WorkerFact("10.0.0.2:5002", "img-1", (), t5),
    ]
    facts.clear()
    w.close(worker)  # no functions left: it was no longer a worker
    assert facts == []


def test_disconnect_of_a_worker_is_a_gone_fact() -> None:
    w, facts = _wire()
    worker = w.open(5002, from_start=True)
    w.send(worker, req(T.CAN_DO, b"resize"))
    t_close = w.close(worker)
    assert facts[-1] == WorkerFact("10.0.0.2:5002", "", ("resize",), t_close, gone=True)
    assert len(w.tracker.workers) == 0


def test_a_connection_joined_mid_stream_tells_its_end() -> None:
    """It may be a worker a tap before this one saw register (its row is ended); a
    connection seen from its start that never registered is only a client."""
    w, facts = _wire()
    joined, client = w.open(5003), w.open(5004, from_start=True)
    w.send(joined, req(T.GRAB_JOB_ALL))
    t_close = w.close(joined)
    w.close(client)
    assert facts == [WorkerFact("10.0.0.2:5003", "", (), t_close, gone=True)]


def test_client_id_after_can_do_renames_the_worker() -> None:
    w, facts = _wire()
    worker = w.open(5002)
    w.send(worker, req(T.CAN_DO, b"resize"))
    t = w.send(worker, req(T.SET_CLIENT_ID, b"late-name"))
    assert facts[-1] == WorkerFact("10.0.0.2:5002", "late-name", ("resize",), t)


def test_clients_and_job_traffic_make_no_facts() -> None:
    w, facts = _wire()
    client = w.open(5001, client_id=b"a-client", from_start=True)
    worker = w.open(5002, from_start=True)
    w.send(worker, req(T.CAN_DO, b"reverse"), req(T.PRE_SLEEP))
    w.submit(client, H1, ptype=T.SUBMIT_JOB_BG)
    w.reply(worker, res(T.NOOP))
    w.assign(worker, H1)
    w.send(worker, req(T.WORK_COMPLETE, H1.encode(), b"x"))
    w.send(worker, req(T.CANT_DO, b"never-registered"))
    w.close(client)
    assert [f.functions for f in facts] == [("reverse",)]
    assert w.kinds(H1) == ["submitted", "started", "completed"]  # jobs as before


def test_a_reopened_connection_name_ends_the_old_worker() -> None:
    w, facts = _wire()
    worker = w.open(5002, from_start=True)
    w.send(worker, req(T.CAN_DO, b"resize"))
    w.open(5002, from_start=True)  # the same ip:port again: the old one is over
    assert facts[-1].gone and facts[-1].peer == "10.0.0.2:5002"


def test_functions_kept_are_bounded_and_names_cleaned() -> None:
    w, facts = _wire()
    worker = w.open(5002, from_start=True)
    for i in range(ABILITIES_MAX + 50):
        w.send(worker, req(T.CAN_DO, f"f{i}".encode()))
    assert len(facts) == ABILITIES_MAX
    w.send(worker, req(T.CANT_DO, b"f0"), req(T.CAN_DO, b"bad\0name" + b"x" * 400))
    last = facts[-1].functions
    assert len(last) == ABILITIES_MAX and all("\0" not in f and len(f) <= 255 for f in last)


def test_a_capture_that_stops_does_not_end_its_workers() -> None:
    """Stopping a capture closes every flow it follows (buffered bytes are delivered);
    those are not gearmand's closes: a worker still connected keeps its row (a tap restart
    under load had deleted it before the new tap could see it)."""
    from broker.tap import TapSink

    w, facts = _wire()
    worker = w.open(5002, from_start=True)
    w.send(worker, req(T.CAN_DO, b"resize"))
    facts.clear()
    TapSink(w.tracker).on_capture_end()
    w.close(worker)
    assert facts == []
