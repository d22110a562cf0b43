"""Job identity and history: the gearmand servers HQ watches, each of their boots (process
lifetimes), jobs (current state, one row per gearmand job) and their append-only events."""

from __future__ import annotations

import os
from datetime import timedelta

from django.conf import settings
from django.db import models


class Server(models.Model):
    """One gearmand, named by the operator (``--server NAME`` on the tap)."""

    name = models.CharField(max_length=100, unique=True)
    address = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Boot(models.Model):
    """One run of a gearmand process. Handles restart at 1 with each boot, so a job is
    identified by (boot, handle). ``token`` is gearmand's pid, with ``.N`` appended when the
    handle counter went back without the pid changing."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="boots")
    token = models.CharField(max_length=64)
    first_seen = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["server", "token"], name="boot_server_token")
        ]

    def __str__(self) -> str:
        return f"{self.server.name} boot {self.token}"


class State(models.TextChoices):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "lost"
    CANCELLED = "cancelled"
    #: gearmand restarted and restored the job from its queue under a new handle: this
    #: record ended, the job goes on as the one whose ``restored_from`` names it
    RESTORED = "restored"


FINISHED_STATES = (State.COMPLETED, State.FAILED, State.LOST, State.CANCELLED, State.RESTORED)


class Job(models.Model):
    """The current state of one job, folded from its events by ``jobs/ingest.py``.

    Payload and result are stored whole up to ``HQ_PAYLOAD_MAX``: as text when they are
    valid UTF-8 (searchable through a trigram index), else as bytes. ``*_size`` keeps the
    size on the wire, so truncation is visible.
    """

    # no index of its own: nothing filters jobs by server alone (and each index slows ingest)
    # and, like boot, no foreign-key constraint in the database: the writer resolves both ids
    # in the batch's transaction and nothing deletes servers or boots (PROTECT still guards
    # the ORM), while the constraints' checks cost every recorded job ~6 µs (issue 13)
    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="jobs",
                               db_index=False, db_constraint=False)
    # no boot (and no handle) yet: a job HQ holds until its time (state scheduled), or one
    # HQ submitted whose row the tap has not written yet (see jobs/services.py)
    boot = models.ForeignKey(Boot, on_delete=models.PROTECT, related_name="jobs", null=True,
                             db_index=False, db_constraint=False)  # (boot, handle) index
    handle = models.CharField(max_length=255)
    function = models.CharField(max_length=255, blank=True, default="")
    unique = models.CharField(max_length=255, blank=True, default="")
    priority = models.CharField(max_length=6, blank=True, default="")
    background = models.BooleanField(null=True)
    state = models.CharField(max_length=10, choices=State.choices)
    submitted_at = models.DateTimeField(null=True)
    scheduled_for = models.DateTimeField(null=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    wait_ms = models.IntegerField(null=True)
    runtime_ms = models.IntegerField(null=True)
    attempts = models.IntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True, default="")
    progress_numerator = models.BigIntegerField(null=True)
    progress_denominator = models.BigIntegerField(null=True)
    payload_text = models.TextField(null=True)
    payload_bin = models.BinaryField(null=True)
    payload_size = models.IntegerField(default=0)
    result_text = models.TextField(null=True)
    result_bin = models.BinaryField(null=True)
    result_size = models.IntegerField(default=0)
    error = models.TextField(blank=True, default="")
    clients = models.IntegerField(default=0)
    retry_of = models.ForeignKey("self", null=True, on_delete=models.SET_NULL,
                                 related_name="retries", db_index=False)  # partial index
    #: an idempotency key: the action (API ``Idempotency-Key``, a bulk item) that made this
    #: job, so the same action repeated returns this job instead of submitting another
    action_key = models.CharField(max_length=100, null=True, blank=True)
    #: the record of this job under an earlier gearmand boot, when gearmand restored it from
    #: its persistent queue after a restart (jobs/restored.py); the reverse is restored_as
    restored_from = models.ForeignKey("self", null=True, on_delete=models.SET_NULL,
                                      related_name="restored_as", db_index=False)
    updated_at = models.DateTimeField()
    # -- HQ-owned columns (jobs/recovery.py): the tap's upsert never names them, so rows it
    # inserts take their database defaults (db_default) and its updates leave them alone
    #: the retry chain ended in failure and nobody requeued or discarded it (a dead letter)
    dead = models.BooleanField(default=False, db_default=False)
    #: workers that died holding this job or an earlier run of its retry chain
    death_count = models.IntegerField(default=0, db_default=0)
    #: what recovery decided for this finished job: "" not yet (a failed or lost job is
    #: then looked at by the engine), "retry", "dead", "none" (no policy / not counted /
    #: foreground), "requeued", "discarded"; "-" for jobs that ended before recovery existed
    recovery = models.CharField(max_length=10, default="", db_default="", blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["handle"], name="job_handle"),
            models.Index(fields=["unique"], name="job_unique"),
            models.Index(fields=["submitted_at"], name="job_submitted"),
            models.Index(fields=["finished_at"], name="job_finished"),
            models.Index(fields=["function", "-id"], name="job_function"),
            models.Index(fields=["worker", "-id"], name="job_worker"),
            models.Index(fields=["state", "-id"], name="job_state"),
            models.Index(fields=["function", "state", "-id"], name="job_function_state"),
            # both partial, so small: retries, and HQ's own rows that have no boot yet
            # (the scheduler's due jobs and the submits waiting for their tap row)
            models.Index(fields=["retry_of"], name="job_retry_of",
                         condition=models.Q(retry_of__isnull=False)),
            models.Index(fields=["scheduled_for"], name="job_hq_pending",
                         condition=models.Q(boot__isnull=True)),
            # recovery's outbox: failed or lost jobs it has not decided on yet (tiny: a
            # job leaves it in the transaction that decides), and the dead letters
            models.Index(fields=["id"], name="job_recovery_due",
                         condition=models.Q(state__in=["failed", "lost"], recovery="")),
            models.Index(fields=["function", "-id"], name="job_dead",
                         condition=models.Q(dead=True)),
        ]
        constraints = [
            models.UniqueConstraint(fields=["boot", "handle"], name="job_boot_handle"),
            models.UniqueConstraint(fields=["action_key"], name="job_action_key",
                                    condition=models.Q(action_key__isnull=False)),
            # partial (ingest inserts no entry): one restored job per earlier record
            models.UniqueConstraint(fields=["restored_from"], name="job_restored_from",
                                    condition=models.Q(restored_from__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.handle} ({self.function})"

    @property
    def payload(self) -> bytes | str | None:
        return self.payload_text if self.payload_text is not None else _bytes(self.payload_bin)

    @property
    def result(self) -> bytes | str | None:
        return self.result_text if self.result_text is not None else _bytes(self.result_bin)

    @property
    def payload_truncated(self) -> bool:
        return self.payload_size > _stored_len(self.payload_text, self.payload_bin)

    @property
    def result_truncated(self) -> bool:
        return self.result_size > _stored_len(self.result_text, self.result_bin)

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def held_by_hq(self) -> bool:
        """Scheduled by HQ and not submitted yet (no handle)."""
        return self.state == State.SCHEDULED and self.boot_id is None and not self.handle

    @property
    def late_by(self) -> timedelta | None:
        """How much later than its ``scheduled_for`` the job was submitted (None when it
        was not scheduled or not submitted yet)."""
        if self.scheduled_for is None or self.submitted_at is None:
            return None
        return max(self.submitted_at - self.scheduled_for, timedelta(0))

    @property
    def late_ms(self) -> int | None:
        late = self.late_by
        return None if late is None else int(late.total_seconds() * 1000)

    def retry_refusal(self, *, redacted: bool) -> str | None:
        """Why this job cannot be retried, or None when it can. ``redacted``: its
        function is in ``HQ_REDACT`` (the payload was never stored)."""
        if not self.is_finished:
            return f"it is {self.state}: only a finished job can be retried"
        if self.state == State.RESTORED:
            return "gearmand restored it after a restart: it goes on as its later record"
        if not self.function:
            return "its function was never recorded"
        if redacted:
            return "its payload is not stored (HQ_REDACT), so it cannot be sent again"
        if self.payload_truncated:
            return (f"its payload was truncated (stored {self.payload_stored_size:,} of "
                    f"{self.payload_size:,} bytes, HQ_PAYLOAD_MAX)")
        if self.payload is None and (self.payload_size or self.submitted_at is None):
            return "its payload was not recorded (HQ saw the job after it was submitted)"
        return None

    def cancel_refusal(self) -> str | None:
        """Why this job cannot be cancelled, or None when it can."""
        if self.state == State.RUNNING:
            return ("it is running: gearmand cannot stop a job a worker has taken "
                    "(it would answer OK and the job would run on)")
        if self.is_finished and self.state != State.CANCELLED:
            return f"it has already finished ({self.state})"
        if self.state == State.QUEUED and not self.handle:
            return "gearmand never gave it a handle"
        return None

    @property
    def job_of_death(self) -> bool:
        """Its runs killed ``HQ_JOB_OF_DEATH`` workers or more (across its retry chain)."""
        return self.death_count >= job_of_death_limit()

    @property
    def payload_stored_size(self) -> int:
        return _stored_len(self.payload_text, self.payload_bin)


def job_of_death_limit() -> int:
    """``HQ_JOB_OF_DEATH``: a job whose runs killed this many workers is a job of death."""
    value = getattr(settings, "HQ_JOB_OF_DEATH", None)
    if value is None:
        value = os.environ.get("HQ_JOB_OF_DEATH", "") or 3
    return max(int(value), 1)


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    return bytes(value) if value is not None else None


def _stored_len(text: str | None, raw: bytes | memoryview | None) -> int:
    if text is not None:
        return len(text.encode())
    return len(raw) if raw is not None else 0


class IngestBatch(models.Model):
    """One batch of events the writer committed. A spooled batch replayed after a crash
    finds its id here and is skipped, so nothing is counted twice."""

    id = models.UUIDField(primary_key=True)
    server = models.ForeignKey(Server, on_delete=models.CASCADE, db_index=False)
    events = models.IntegerField()
    written_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["written_at"], name="ingestbatch_written")]  # retention


class SearchText(models.Func):
    """The text the search box matches (``q``) in part: function, unique key (unless it is
    a UUID) and the first 512 characters of the payload, in one expression served by one
    trigram index (migration 0013), so a job row pays one GIN update instead of three.
    Handles and UUID unique keys are matched whole, by their btree indexes
    (jobs/selectors.py): in the trigram index they were most of its cost per job."""

    function = "hq_job_search_text"
    output_field = models.TextField()

    def __init__(self) -> None:
        super().__init__("unique", "function", "payload_text")


class JobEvent(models.Model):
    """One lifecycle event. Append-only, never updated.

    The table is partitioned by day on ``at`` (created by a raw SQL migration, so Django
    does not manage it); ``id`` is assigned by the tap, so replaying a batch inserts
    nothing twice. Events name their job by (boot, handle) rather than by job id, which
    lets the writer insert events before it knows the job row.
    """

    id = models.UUIDField(primary_key=True)
    at = models.DateTimeField()
    server = models.ForeignKey(Server, on_delete=models.DO_NOTHING, db_constraint=False)
    boot = models.ForeignKey(Boot, on_delete=models.DO_NOTHING, db_constraint=False)
    handle = models.CharField(max_length=255)
    kind = models.CharField(max_length=20)
    conn = models.CharField(max_length=100, blank=True, default="")
    worker = models.CharField(max_length=255, blank=True, default="")
    numerator = models.BigIntegerField(null=True)
    denominator = models.BigIntegerField(null=True)
    data_text = models.TextField(null=True)
    data_bin = models.BinaryField(null=True)
    size = models.IntegerField(default=0)
    detail = models.TextField(blank=True, default="")

    class Meta:
        managed = False
        db_table = "jobs_jobevent"
        ordering = ["at", "id"]

    @property
    def data(self) -> bytes | str | None:
        return self.data_text if self.data_text is not None else _bytes(self.data_bin)


class Overlap(models.TextChoices):
    ALLOW = "allow"
    SKIP = "skip"  # skip a tick while the previous run is still scheduled, queued or running


class Schedule(models.Model):
    """A recurring job: what cron does, inside HQ (``jobs/schedules/``). ``next_run_at`` is
    the next tick in UTC, worked out from ``cron`` in ``timezone`` by cronsim; the
    scheduler claims due schedules with ``SKIP LOCKED`` and records each tick once in
    :class:`ScheduleRun`."""

    name = models.CharField(max_length=100, unique=True)
    function = models.CharField(max_length=255)
    payload_text = models.TextField(null=True, blank=True)
    payload_bin = models.BinaryField(null=True, blank=True)
    payload_size = models.IntegerField(default=0)
    unique = models.CharField(max_length=255, blank=True, default="")
    priority = models.CharField(max_length=6, default="normal")
    cron = models.CharField(max_length=200)
    timezone = models.CharField(max_length=64, default="UTC")
    enabled = models.BooleanField(default=True)
    overlap = models.CharField(max_length=5, choices=Overlap.choices, default=Overlap.ALLOW)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+", db_constraint=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["next_run_at"], name="schedule_due",
                                condition=models.Q(enabled=True))]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron} {self.timezone})"

    @property
    def payload(self) -> bytes | str | None:
        return self.payload_text if self.payload_text is not None else _bytes(self.payload_bin)


class ScheduleRun(models.Model):
    """One tick of a schedule: the job it submitted, or why it did not. (schedule, tick)
    is unique, so a tick is acted on once whoever claims it."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="runs")
    tick = models.DateTimeField()
    at = models.DateTimeField()
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="+", db_constraint=False)
    skipped = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["schedule", "tick"],
                                               name="schedulerun_tick")]
        indexes = [models.Index(fields=["schedule", "-tick"], name="schedulerun_latest")]


class BulkAction(models.Model):
    """An action on every job a filter matches, done in the background in batches
    (``jobs/bulk.py``): ``cursor`` is the last job id acted on, so a run that stopped
    (a Celery restart) resumes after it; only jobs up to ``max_id`` (the newest when it was
    asked for) are included, so the jobs a "retry all" makes are never retried by it."""

    RUNNING, DONE, FAILED = "running", "done", "failed"

    action = models.CharField(max_length=10)
    filter = models.JSONField(default=dict)
    state = models.CharField(max_length=10, default=RUNNING)
    total = models.IntegerField(default=0)
    done = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    errors = models.JSONField(default=list)
    max_id = models.BigIntegerField(default=0)
    cursor = models.BigIntegerField(default=0)
    leased_until = models.DateTimeField(null=True, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                             on_delete=models.SET_NULL, related_name="+")
    via = models.CharField(max_length=6, default="api")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["leased_until"], name="bulk_running",
                                condition=models.Q(state="running"))]


class RetryOn(models.TextChoices):
    FAILED = "failed"  # WORK_FAIL
    EXCEPTION = "exception"  # WORK_EXCEPTION
    LOST = "lost"  # gearmand dropped it or restarted


class RetryPolicy(models.Model):
    """Retry a background job whose function matches ``function`` (a glob) and that ended
    in one of ``retry_on``, until its chain has run ``max_attempts`` times; the delay
    before run n+1 is ``min(backoff_base_s · 2^(n-1), backoff_max_s)``, ± up to half of it
    with ``jitter``. The first enabled policy in ``order`` that matches wins."""

    function = models.CharField(max_length=255)
    max_attempts = models.PositiveIntegerField(default=3)
    backoff_base_s = models.FloatField(default=10.0)
    backoff_max_s = models.FloatField(default=3600.0)
    jitter = models.BooleanField(default=False)
    retry_on = models.JSONField(default=list)
    enabled = models.BooleanField(default=True)
    order = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["order", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(max_attempts__gte=1),
                                   name="retrypolicy_attempts"),
        ]

    def __str__(self) -> str:
        return f"{self.function} (x{self.max_attempts})"

    def delay_s(self, runs: int) -> float:
        """Seconds before the run after ``runs`` runs, without jitter."""
        exponent = min(max(runs - 1, 0), 60)
        return float(min(self.backoff_base_s * (2 ** exponent), self.backoff_max_s))
