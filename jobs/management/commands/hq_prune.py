"""Remove history older than the retention window now, saying what goes."""

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from jobs import retention


class Command(BaseCommand):
    help = ("Drop event partitions, finished jobs and ingest batch ids older than "
            "HQ_EVENT_RETENTION_DAYS (Celery beat runs the same every hour).")

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--days", type=int, default=settings.HQ_EVENT_RETENTION_DAYS,
                            help="keep this many days (default: HQ_EVENT_RETENTION_DAYS)")
        parser.add_argument("--batch", type=int, default=retention.BATCH,
                            help="rows deleted per transaction")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["days"] < 1:
            raise CommandError("--days must be at least 1")
        if opts["batch"] < 1:
            raise CommandError("--batch must be at least 1")
        pruned = retention.apply_retention(days=opts["days"], batch=opts["batch"],
                                           progress=lambda text: self.stdout.write(f"  {text}"))
        self.stdout.write(f"retention ({opts['days']} days): {pruned.summary()}")
