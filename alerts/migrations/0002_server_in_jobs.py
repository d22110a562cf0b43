"""State only: Server moved to the jobs app (jobs 0006 renamed its table)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('alerts', '0001_initial'),
        ('jobs', '0006_server_boot_from_monitoring'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='alert',
                    name='server',
                    field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, to='jobs.server'),
                ),
                migrations.AlterField(
                    model_name='rule',
                    name='server',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, to='jobs.server'),
                ),
                migrations.AlterField(
                    model_name='rulestate',
                    name='server',
                    field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.CASCADE, to='jobs.server'),
                ),
            ],
        ),
    ]
