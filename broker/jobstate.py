"""What the tracker remembers between packets: events out, connections and jobs in between.

Every structure here is bounded (numbers in :mod:`broker.limits`): a peer decides what it
sends, not how much HQ keeps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields

from .adminwatch import AdminWatch
from .limits import CONN_MAX
from .stream import ConnKey
from .values import note


@dataclass(slots=True)
class Event:
    """One thing that happened to one job. ``kind`` is one of the lifecycle event names.

    Every string is storable as it is (no NUL, within its column: see broker.limits) and
    every number fits its column; ``data`` is raw bytes capped at the payload limit, with
    ``size`` the size on the wire.

    A value: nothing changes an event once emitted (``dataclasses.replace`` makes another).
    Not ``frozen`` only because a frozen dataclass's ``__init__`` sets each of the 16
    fields through ``object.__setattr__``, 2.5× the cost of building it, on every event.
    """

    kind: str
    boot: str
    handle: str
    ts: float
    conn: str = ""
    function: str | None = None
    unique: str | None = None
    priority: str | None = None
    background: bool | None = None
    epoch: int | None = None
    worker: str | None = None
    numerator: int | None = None
    denominator: int | None = None
    data: bytes | None = None
    size: int = 0
    detail: str = ""

    def __reduce__(self) -> tuple[type[Event], tuple[object, ...]]:
        # the same pickle from the compiled build (broker/compiled.py) as from this one
        return Event, tuple(getattr(self, f.name) for f in fields(self))


@dataclass(slots=True)
class Submit:
    """A SUBMIT_JOB* waiting for the JOB_CREATED that names its job."""

    function: str
    unique: str
    priority: str
    background: bool
    epoch: int | None
    payload: bytes
    size: int
    ts: float
    note: str = ""


class Pending:
    """One connection's submits awaiting JOB_CREATED (or ERROR), first in first out.

    Past the caps a submit is still counted in ``unstored`` but not kept, and every later one
    too until the queue has drained, so each reply still pairs with its own submit (an
    unstored one pairs with nothing: its JOB_CREATED goes unmatched).
    """

    __slots__ = ("items", "payload_bytes", "unstored")

    def __init__(self) -> None:
        self.items: deque[Submit] = deque()
        self.unstored = 0
        self.payload_bytes = 0

    def __len__(self) -> int:
        return len(self.items) + self.unstored

    def push(self, sub: Submit | None) -> None:
        if sub is None or self.unstored:
            self.unstored += 1
        else:
            self.items.append(sub)
            self.payload_bytes += len(sub.payload)

    def pop(self) -> Submit | None:
        if self.items:
            sub = self.items.popleft()
            self.payload_bytes -= len(sub.payload)
            return sub
        if self.unstored:
            self.unstored -= 1
        return None

    def clear(self) -> None:
        self.items.clear()
        self.unstored = 0
        self.payload_bytes = 0


@dataclass(slots=True)
class Conn:
    key: ConnKey
    #: True when the byte source saw the connection begin: then HQ has seen every packet
    #: on it (until a gap), and a worker there cannot hold a job it was never assigned.
    from_start: bool = False
    peer: str = ""
    pending: Pending = field(default_factory=Pending)
    client_id: str = ""
    waiting: set[str] = field(default_factory=set)  # fg handles this client waits on
    holding: set[str] = field(default_factory=set)  # handles this worker was assigned
    admin: AdminWatch = field(default_factory=AdminWatch)
    gaps: int = 0  # bytes were lost on this connection: its submits no longer pair up
    last_created: float = float("-inf")  # capture time of the newest JOB_CREATED seen here

    def __post_init__(self) -> None:
        self.peer = note(self.key.peer, CONN_MAX)

    @property
    def worker_name(self) -> str:
        return self.client_id or self.peer

    @property
    def blind(self) -> bool:
        """HQ may have missed packets of this connection (joined late, or bytes lost)."""
        return self.gaps > 0 or not self.from_start


#: the waiters of a job nobody waits on (every background job): one shared empty set, not
#: an empty ``set`` (216 bytes) in each of 100,000 open jobs
NO_WAITERS: frozenset[ConnKey] = frozenset()


@dataclass(slots=True)
class Job:
    """A job the tracker follows (queued or running). One per open job, so kept small: its
    function name is interned by the tracker, and ``waiters`` is a set only once a client
    waits (change it through :meth:`add_waiter` and :meth:`drop_waiter`)."""

    function: str | None
    background: bool | None
    unique: str | None = None
    started: bool = False
    submitted: bool = False  # False while HQ knows the job only from its assignment
    assigned: bool = False  # HQ has seen gearmand assign it (to ``holder`` or before)
    holder: ConnKey | None = None  # the worker connection holding it now, if known
    waiters: AbstractSet[ConnKey] = NO_WAITERS

    def add_waiter(self, key: ConnKey) -> None:
        if isinstance(self.waiters, set):
            self.waiters.add(key)
        else:
            self.waiters = {key}

    def drop_waiter(self, key: ConnKey) -> None:
        if isinstance(self.waiters, set):
            self.waiters.discard(key)
