# Job actions (issue 9): HQ's own rows (scheduled, or submitted and not yet written by the
# tap) have no boot yet; retries are found both ways; an action's idempotency key.
# The indexes are built CONCURRENTLY (the job table is large and the ingest writer must not
# wait); dropping NOT NULL and adding a nullable column are catalogue changes only.

import django.db.models.deletion
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('jobs', '0007_ingestbatch_written_index'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='action_key',
            field=models.CharField(blank=True, max_length=100, null=True),
        ),
        migrations.AlterField(
            model_name='job',
            name='boot',
            field=models.ForeignKey(db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='jobs', to='jobs.boot'),
        ),
        migrations.AlterField(
            model_name='job',
            name='retry_of',
            field=models.ForeignKey(db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='retries', to='jobs.job'),
        ),
        AddIndexConcurrently(
            model_name='job',
            index=models.Index(condition=models.Q(('retry_of__isnull', False)), fields=['retry_of'], name='job_retry_of'),
        ),
        AddIndexConcurrently(
            model_name='job',
            index=models.Index(condition=models.Q(('boot__isnull', True)), fields=['scheduled_for'], name='job_hq_pending'),
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(
                'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "job_action_key" '
                'ON "jobs_job" ("action_key") WHERE "action_key" IS NOT NULL',
                'DROP INDEX CONCURRENTLY IF EXISTS "job_action_key"')],
            state_operations=[migrations.AddConstraint(
                model_name='job',
                constraint=models.UniqueConstraint(condition=models.Q(('action_key__isnull', False)), fields=('action_key',), name='job_action_key'),
            )],
        ),
    ]
