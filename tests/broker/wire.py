"""Test helper for the tracker: a :class:`Wire` plays what gearmand and its peers put on
the wire, connection by connection, into a real :class:`~broker.tracker.Tracker`.

A helper module (like :mod:`pcapgen`), not a test module.
"""

from __future__ import annotations

from broker.protocol import AdminLine, Packet, PacketType, req, res
from broker.stream import ConnKey
from broker.tracker import Event, Tracker

T = PacketType
FN = b"reverse"


def key(port: int, host: str = "10.0.0.2") -> ConnKey:
    return ConnKey(host, port, "10.0.0.1", 4730)


class Wire:
    """A tracker plus a clock; ``send`` is peer→gearmand, ``reply`` is gearmand→peer."""

    def __init__(self, **kwargs: object) -> None:
        self.events: list[Event] = []
        self.tracker = Tracker(self.events.append, boot="123", **kwargs)  # type: ignore[arg-type]
        self.now = 1000.0

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    def open(self, port: int, client_id: bytes | None = None, *,
             from_start: bool = False) -> ConnKey:
        """A connection; ``from_start``: as a source that saw it begin (SYN or accept)
        reports it. By default HQ is taken to have joined it mid-stream."""
        k = key(port)
        self.tracker.opened(k, from_start=from_start)
        if client_id is not None:
            self.send(k, req(T.SET_CLIENT_ID, client_id))
        return k

    def send(self, k: ConnKey, *items: Packet | AdminLine) -> float:
        """Peer → gearmand."""
        return self._play(k, True, items)

    def reply(self, k: ConnKey, *items: Packet | AdminLine) -> float:
        """gearmand → peer."""
        return self._play(k, False, items)

    def _play(self, k: ConnKey, from_peer: bool, items: tuple[Packet | AdminLine, ...]) -> float:
        ts = self.tick()
        for item in items:
            self.tracker.packet(k, item, ts, from_peer)
        return ts

    def close(self, k: ConnKey) -> float:
        ts = self.tick()
        self.tracker.closed(k, ts)
        return ts

    def kinds(self, handle: str | None = None) -> list[str]:
        return [e.kind for e in self.events if handle is None or e.handle == handle]

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    # a few whole steps
    def submit(self, client: ConnKey, handle: str, *, ptype: int = T.SUBMIT_JOB,
               unique: bytes = b"", payload: bytes = b"p", fn: bytes = FN) -> None:
        self.send(client, req(ptype, fn, unique, payload))
        self.reply(client, res(T.JOB_CREATED, handle.encode()))

    def assign(self, worker: ConnKey, handle: str, *, unique: bytes = b"",
               payload: bytes = b"p", fn: bytes = FN) -> float:
        self.send(worker, req(T.GRAB_JOB_UNIQ))
        return self.reply(worker, res(T.JOB_ASSIGN_UNIQ, handle.encode(), fn, unique, payload))


H1, H2, H3 = "H:lap:1", "H:lap:2", "H:lap:3"
