"""Job identity and history: the gearmand servers HQ watches, each of their boots (process
lifetimes), jobs (current state, one row per gearmand job) and their append-only events."""

from __future__ import annotations

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


FINISHED_STATES = (State.COMPLETED, State.FAILED, State.LOST, State.CANCELLED)


class Job(models.Model):
    """The current state of one job, folded from its events by ``jobs/ingest.py``.

    Payload and result are stored whole up to ``HQ_PAYLOAD_MAX``: as text when they are
    valid UTF-8 (searchable through a trigram index), else as bytes. ``*_size`` keeps the
    size on the wire, so truncation is visible.
    """

    # no index of its own: nothing filters jobs by server alone (and each index slows ingest)
    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="jobs",
                               db_index=False)
    boot = models.ForeignKey(Boot, on_delete=models.PROTECT, related_name="jobs",
                             db_index=False)  # (boot, handle) is unique: that index serves
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
    retry_of = models.ForeignKey("self", null=True, on_delete=models.SET_NULL, related_name="+",
                                 db_index=False)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["boot", "handle"], name="job_boot_handle"),
        ]
        indexes = [
            models.Index(fields=["handle"], name="job_handle"),
            models.Index(fields=["unique"], name="job_unique"),
            models.Index(fields=["submitted_at"], name="job_submitted"),
            models.Index(fields=["finished_at"], name="job_finished"),
            models.Index(fields=["function", "-id"], name="job_function"),
            models.Index(fields=["worker", "-id"], name="job_worker"),
            models.Index(fields=["state", "-id"], name="job_state"),
            models.Index(fields=["function", "state", "-id"], name="job_function_state"),
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
    """The text the search box matches (``q``): handle, unique, function and the first
    4 KiB of the payload, in one expression served by one trigram index (migration
    0002), so a job row pays one GIN update instead of four."""

    function = "hq_job_search_text"
    output_field = models.TextField()

    def __init__(self) -> None:
        super().__init__("handle", "unique", "function", "payload_text")


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
