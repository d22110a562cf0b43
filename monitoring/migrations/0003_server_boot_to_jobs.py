"""State only: Server and Boot now live in the jobs app (jobs 0006 renamed the tables)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('alerts', '0002_server_in_jobs'),
        ('jobs', '0006_server_boot_from_monitoring'),
        ('monitoring', '0002_serverstate_queuesnapshot_rollup_worker'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='worker',
                    name='server',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='workers', to='jobs.server'),
                ),
                migrations.AlterField(
                    model_name='queuesnapshot',
                    name='server',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, to='jobs.server'),
                ),
                migrations.AlterField(
                    model_name='rollup',
                    name='server',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, to='jobs.server'),
                ),
                migrations.AlterField(
                    model_name='serverstate',
                    name='server',
                    field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='state', serialize=False, to='jobs.server'),
                ),
                migrations.DeleteModel(name='Boot'),
                migrations.DeleteModel(name='Server'),
            ],
        ),
    ]
