"""The tap's garbage-collector schedule: rarer collections, start-up objects frozen,
and cycles still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from broker import gcpolicy


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.mark.usefixtures("restored_gc")
def test_for_hot_loop_spaces_collections_out_and_still_collects_cycles() -> None:
    previous = gc.get_threshold()
    assert gcpolicy.for_hot_loop() == previous
    assert gc.get_threshold() == (gcpolicy.YOUNG, gcpolicy.MIDDLE, gcpolicy.OLD)
    assert gc.get_freeze_count() > 0  # what existed at start-up is out of every collection
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # a cycle waits for a collection...
    gc.collect()
    assert gone() is None  # ...and is collected by it
