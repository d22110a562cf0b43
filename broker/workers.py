"""Workers as the traffic shows them: who can do what, from the packets themselves.

The tracker hands this watch the few packets that change a worker's abilities (CAN_DO,
CAN_DO_TIMEOUT, CANT_DO, RESET_ABILITIES), a SET_CLIENT_ID on a connection already known as
a worker, and every connection's end. Each change becomes a :class:`WorkerFact` with the
connection's whole current picture (peer, client id, functions), so a consumer keeps only
the latest fact per peer. A connection whose functions become empty is no longer a worker:
its fact has no functions, the same as its end.

No other packet reaches this module, so the tracker's hot path pays nothing for it but a
failed membership test on packets that match nothing else (GRAB_JOB*, PRE_SLEEP, ECHO...).

What it cannot see it does not invent: a connection HQ joined after its CAN_DOs (a capture
started while the worker ran) is known only by the changes after that, and its end is told
(with no functions) in case an earlier tap listed it; gearmand's admin ``workers`` list,
polled by the tap, reconciles the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .jobstate import Conn
from .limits import FUNCTION_MAX
from .protocol import PacketType
from .stream import ConnKey
from .values import Cleaner

T = PacketType
_CAN_DO, _CAN_DO_TIMEOUT, _CANT_DO = int(T.CAN_DO), int(T.CAN_DO_TIMEOUT), int(T.CANT_DO)
#: the packets that change what a worker can do (the tracker routes only these here)
ABILITY_TYPES: Final = frozenset(int(t) for t in (T.CAN_DO, T.CAN_DO_TIMEOUT, T.CANT_DO,
                                           T.RESET_ABILITIES))
#: functions kept per worker connection (gearmand has no limit; a page has)
ABILITIES_MAX = 1000


@dataclass(frozen=True, slots=True)
class WorkerFact:
    """A worker connection's picture after a change. ``functions`` empty: no longer a
    worker (it dropped its last function). ``gone``: the connection ended; ``functions``
    is then what it could do when it left."""

    peer: str  # ip:port of the worker's end, as the byte source saw it
    client_id: str
    functions: tuple[str, ...]  # sorted
    ts: float
    gone: bool = False


def _ignore(fact: WorkerFact) -> None:
    pass


class WorkerWatch:
    """Per worker connection, the set of functions it registered; facts go to ``emit``
    (called from the tracker's thread: it must return quickly)."""

    __slots__ = ("_abilities", "clean", "emit")

    def __init__(self, clean: Cleaner, emit: Callable[[WorkerFact], None] = _ignore) -> None:
        self.clean = clean
        self.emit = emit
        self._abilities: dict[ConnKey, set[str]] = {}

    def __len__(self) -> int:
        return len(self._abilities)

    def ability(self, conn: Conn, ptype: int, args: tuple[bytes, ...], ts: float) -> None:
        """CAN_DO, CAN_DO_TIMEOUT, CANT_DO or RESET_ABILITIES from ``conn``."""
        had = self._abilities.get(conn.key)
        if ptype in (_CAN_DO, _CAN_DO_TIMEOUT):
            name = self.clean.name(args[0], FUNCTION_MAX)
            if had is None:
                had = self._abilities[conn.key] = set()
            elif name in had or len(had) >= ABILITIES_MAX:
                return
            had.add(name)
        elif ptype == _CANT_DO:
            name = self.clean.name(args[0], FUNCTION_MAX)
            if had is None or name not in had:
                return
            had.discard(name)
        else:  # RESET_ABILITIES
            if not had:
                return
            had.clear()
        if not had:
            del self._abilities[conn.key]
        self._tell(conn, had, ts)

    def renamed(self, conn: Conn, ts: float) -> None:
        """SET_CLIENT_ID (already stored in ``conn.client_id``) on a known worker."""
        had = self._abilities.get(conn.key)
        if had:
            self._tell(conn, had, ts)

    def capture_ending(self) -> None:
        """The capture stops: the connections it still follows are closed for the
        tracker, not for gearmand (their workers stay connected). No gone facts from now
        on: the rows stay for the next tap and the admin poll."""
        self.emit = _ignore

    def closed(self, key: ConnKey, conn: Conn | None, ts: float) -> None:
        """A connection ended. Also told when HQ joined it after it began: it may be a
        worker an earlier tap (before a restart) saw register, whose row is then ended."""
        had = self._abilities.pop(key, None)
        if had or (conn is not None and not conn.from_start):
            self.emit(WorkerFact(conn.peer if conn is not None else key.peer,
                                 conn.client_id if conn is not None else "",
                                 tuple(sorted(had or ())), ts, gone=True))

    def _tell(self, conn: Conn, had: set[str] | None, ts: float) -> None:
        self.emit(WorkerFact(conn.peer, conn.client_id, tuple(sorted(had or ())), ts))
