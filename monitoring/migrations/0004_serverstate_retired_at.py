"""A server an operator retired from the pages (hidden, its history kept)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('monitoring', '0003_server_boot_to_jobs'),
    ]

    operations = [
        migrations.AddField(
            model_name='serverstate',
            name='retired_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
