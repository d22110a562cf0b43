"""What the ingest writer's tests share: the peers events come from, a database that does
not answer, and the type of the ``make_writer`` fixture (``conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable

from jobs.ingest import EventWriter

CLIENT = "10.0.0.2:5001"
WORKER = "10.0.0.2:5002"
#: a conninfo nothing listens on: the writer sees Postgres down
DOWN = "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=3"

WriterFactory = Callable[..., EventWriter]
