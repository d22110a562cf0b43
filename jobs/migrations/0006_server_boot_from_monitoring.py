"""Server and Boot are job identity, so they move from monitoring to jobs.

The tables are renamed in place (rows, ids and foreign keys stay); the rest is a change
of Django's model state only. monitoring 0003 and alerts 0002 re-point their foreign keys
in the state and drop the old model entries.
"""

import django.db.models.deletion
from django.db import migrations, models

RENAMES = [("monitoring_server", "jobs_server"), ("monitoring_boot", "jobs_boot")]
FORWARD = "".join(
    f"ALTER TABLE {old} RENAME TO {new}; ALTER SEQUENCE {old}_id_seq RENAME TO {new}_id_seq;"
    for old, new in RENAMES
)
BACKWARD = "".join(
    f"ALTER TABLE {new} RENAME TO {old}; ALTER SEQUENCE {new}_id_seq RENAME TO {old}_id_seq;"
    for old, new in RENAMES
)


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0005_lighter_indexes'),
        ('monitoring', '0002_serverstate_queuesnapshot_rollup_worker'),
        # alerts' first tables reference monitoring_server by that name: create them first
        ('alerts', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(FORWARD, BACKWARD)],
            state_operations=[
                migrations.CreateModel(
                    name='Server',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=100, unique=True)),
                        ('address', models.CharField(blank=True, default='', max_length=255)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('last_seen', models.DateTimeField(blank=True, null=True)),
                    ],
                    options={'ordering': ['name']},
                ),
                migrations.CreateModel(
                    name='Boot',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('token', models.CharField(max_length=64)),
                        ('first_seen', models.DateTimeField()),
                        ('server', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='boots', to='jobs.server')),
                    ],
                    options={
                        'constraints': [models.UniqueConstraint(fields=('server', 'token'), name='boot_server_token')],
                    },
                ),
                migrations.AlterField(
                    model_name='job',
                    name='boot',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='jobs', to='jobs.boot'),
                ),
                migrations.AlterField(
                    model_name='job',
                    name='server',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='jobs', to='jobs.server'),
                ),
                migrations.AlterField(
                    model_name='ingestbatch',
                    name='server',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, to='jobs.server'),
                ),
            ],
        ),
    ]
