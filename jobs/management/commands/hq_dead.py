"""Dead letters from the command line: ``hq_dead list|show|requeue|discard``."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import QuerySet
from django.utils import timezone

from hq.errors import HQError
from jobs import services
from jobs.models import Job
from jobs.recovery import engine
from jobs.selectors import filter_values, get_job, search_jobs
from jobs.serializers import job_to_dict

ACTIONS = ("list", "show", "requeue", "discard")


def _age(now: datetime, at: datetime | None) -> str:
    if at is None:
        return "-"
    s = max(int((now - at).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class Command(BaseCommand):
    help = ("Dead letters (jobs whose retry chain ended in failure): list them, show one, "
            "requeue (a fresh chain) or discard (kept in history, off the list).")

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("action", choices=ACTIONS)
        parser.add_argument("ids", nargs="*", type=int,
                            help="job ids (show; requeue/discard: these instead of a filter)")
        parser.add_argument("--function", default="", help="only this function")
        parser.add_argument("--since", default="",
                            help="only jobs submitted at or after this ISO 8601 time")
        parser.add_argument("--limit", type=int, default=50, help="at most this many jobs")
        parser.add_argument("--json", action="store_true", help="JSON instead of a table")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        try:
            if opts["action"] == "show":
                self._show(opts)
                return
            jobs = self._select(opts)
        except HQError as exc:
            raise CommandError(exc.message) from None
        if opts["action"] == "list":
            self._list(jobs, opts)
        else:
            self._act(jobs, opts)

    def _select(self, opts: dict[str, Any]) -> list[Job]:
        qs: QuerySet[Job] = Job.objects.select_related("server").filter(dead=True)
        if opts["ids"]:
            qs = qs.filter(pk__in=opts["ids"])
        filters = {"function": opts["function"], "submitted_after": opts["since"]}
        if any(filter_values(filters).values()):
            qs = qs.filter(pk__in=search_jobs({**filters, "dead": "true"}).values("pk"))
        return list(qs.order_by("-id")[: opts["limit"]])

    def _list(self, jobs: list[Job], opts: dict[str, Any]) -> None:
        if opts["json"]:
            self.stdout.write(json.dumps([self._row(j) for j in jobs], indent=2))
            return
        if not jobs:
            self.stdout.write("no dead letters")
            return
        now = timezone.now()
        rows = [("ID", "HANDLE", "FUNCTION", "ATTEMPTS", "LAST ERROR", "AGE")]
        for job in jobs:
            runs = len(engine.chain_of(job))
            flag = " (job of death)" if job.job_of_death else ""
            rows.append((str(job.pk), job.handle or "-", job.function, str(runs),
                         _cut((job.error or "-") + flag, 40), _age(now, job.finished_at)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            self.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                              .rstrip())

    def _row(self, job: Job) -> dict[str, Any]:
        data = job_to_dict(job)
        data["attempts_in_chain"] = len(engine.chain_of(job))
        data["job_of_death"] = job.job_of_death
        return data

    def _show(self, opts: dict[str, Any]) -> None:
        if len(opts["ids"]) != 1:
            raise CommandError("show takes one job id")
        job = get_job(opts["ids"][0])
        chain = engine.chain_of(job)
        if opts["json"]:
            data = self._row(job)
            data["chain"] = [j.pk for j in chain]
            self.stdout.write(json.dumps(data, indent=2))
            return
        payload = job.payload
        shown = payload if isinstance(payload, str) else repr(payload)
        for name, value in (
                ("job", job.pk), ("handle", job.handle), ("function", job.function),
                ("server", job.server.name), ("state", job.state),
                ("dead", "yes" if job.dead else f"no ({job.recovery or 'not decided'})"),
                ("attempts", f"{len(chain)} (chain: {', '.join(str(j.pk) for j in chain)})"),
                ("first failure", chain[0].finished_at), ("last failure", job.finished_at),
                ("workers died", f"{job.death_count}"
                 + (" (job of death)" if job.job_of_death else "")),
                ("error", job.error or "-"), ("payload", _cut(shown or "", 200))):
            self.stdout.write(f"{name + ':':15} {value}")

    def _act(self, jobs: list[Job], opts: dict[str, Any]) -> None:
        action = opts["action"]
        if not jobs:
            self.stdout.write(f"no dead letters to {action}")
            return
        names = ", ".join(f"{j.pk} ({j.function})" for j in jobs[:10])
        more = f" and {len(jobs) - 10} more" if len(jobs) > 10 else ""
        self.stdout.write(f"{action} {len(jobs)} dead letter(s): {names}{more}")
        if not opts["yes"]:
            answer = input("Proceed? [y/N] ").strip().lower()
            if answer not in ("y", "yes"):
                self.stdout.write("nothing done")
                return
        done = 0
        for job in jobs:
            try:
                if action == "requeue":
                    new = services.retry(job_id=job.pk, user=None, via="cli")
                    self.stdout.write(f"requeued job {job.pk} as job {new.pk}"
                                      + (f" ({new.handle})" if new.handle else ""))
                else:
                    services.discard(job_id=job.pk, user=None, via="cli")
                    self.stdout.write(f"discarded job {job.pk} ({job.function})")
                done += 1
            except HQError as exc:
                self.stderr.write(f"job {job.pk}: {exc.message}")
        self.stdout.write(f"{action}: {done} of {len(jobs)} done")
