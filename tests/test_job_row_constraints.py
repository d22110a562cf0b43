"""A job row's server and boot have no foreign-key constraint in Postgres (migration 0014,
issue 13: the two checks cost every recorded job ~6 µs); the ORM still refuses to delete a
server or a boot that has jobs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.models import ProtectedError

from jobs.models import Boot, Job, Server

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


@pytest.mark.django_db
def test_a_server_or_boot_with_jobs_is_not_deleted() -> None:
    server = Server.objects.create(name="gm1", address="10.0.0.5:4730")
    boot = Boot.objects.create(server=server, token="4242", first_seen=T0)
    Job.objects.create(server=server, boot=boot, handle="H:gm1:1", state="queued",
                       updated_at=T0)
    with pytest.raises(ProtectedError):
        boot.delete()
    with pytest.raises(ProtectedError):
        server.delete()
    assert Job.objects.filter(server=server, boot=boot).count() == 1


@pytest.mark.django_db
def test_the_job_table_checks_only_its_own_links() -> None:
    with connection.cursor() as cur:
        cur.execute("SELECT confrelid::regclass::text FROM pg_constraint"
                    " WHERE conrelid = 'jobs_job'::regclass AND contype = 'f'")
        targets = sorted(row[0] for row in cur.fetchall())
    assert targets == ["jobs_job", "jobs_job"]  # retry_of, restored_from
