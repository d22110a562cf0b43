"""``hq.audit``: a batch's rows (``record_many``, one INSERT) are the rows ``record`` writes
one at a time: the user and their name, the door, the action and target cut to their
columns, the detail; an unknown door is refused before anything is written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from hq import audit
from hq.models import AuditEntry

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser

FIELDS = ("user_id", "username", "via", "action", "target", "detail")


def _row(entry: AuditEntry) -> tuple[Any, ...]:
    entry.refresh_from_db()
    return tuple(getattr(entry, name) for name in FIELDS)


def test_record_many_writes_what_record_writes_in_one_insert(
        opal: AbstractUser, django_assert_num_queries: Any) -> None:
    long_action, long_target = "a" * 50, "job " + "9" * 300
    one = audit.record(user=opal, via="ui", action=long_action, target=long_target,
                       detail={"result": "ok"})
    other = audit.record(user=None, via="system", action="submit_scheduled", target="job 2")
    with django_assert_num_queries(1):
        many = audit.record_many(user=opal, via="ui", action=long_action,
                                 rows=[(long_target, {"result": "ok"}), ("job 7", None)])
    assert _row(many[0]) == _row(one)
    assert _row(many[1])[:4] == _row(one)[:4] and _row(many[1])[4:] == ("job 7", {})
    (system,) = audit.record_many(user=None, via="system", action="submit_scheduled",
                                  rows=[("job 2", None)])
    assert _row(system) == _row(other) and _row(system)[:2] == (None, "")
    with django_assert_num_queries(0):
        assert audit.record_many(user=None, via="system", action="x", rows=[]) == []


def test_record_many_refuses_an_unknown_door(db: None) -> None:
    with pytest.raises(ValueError, match="via must be one of"):
        audit.record_many(user=None, via="fax", action="retry", rows=[("job 1", None)])
    assert not AuditEntry.objects.exists()
