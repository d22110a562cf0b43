"""What the admin poller learns about each gearmand: its state, queue depths, workers,
and the per-minute rollups the charts read."""

from django.db import models

from jobs.models import Server


class ServerState(models.Model):
    """What the admin poller last learned about a server (one row per server)."""

    server = models.OneToOneField(Server, on_delete=models.CASCADE, primary_key=True,
                                  related_name="state")
    up = models.BooleanField(default=False)
    version = models.CharField(max_length=64, blank=True, default="")
    pid = models.CharField(max_length=32, blank=True, default="")
    started_at = models.DateTimeField(null=True)  # when HQ first saw this pid
    polled_at = models.DateTimeField(null=True)
    down_since = models.DateTimeField(null=True)
    failed_polls = models.IntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    #: an operator hid this server from the pages (``monitoring.retire``); it stays hidden
    #: while nothing polls it after that moment (``is_retired``), its history is kept
    retired_at = models.DateTimeField(null=True, blank=True)

    @property
    def is_retired(self) -> bool:
        """Retired, and not polled since: a tap that polls it again brings it back."""
        return self.retired_at is not None and (
            self.polled_at is None or self.polled_at <= self.retired_at)


class QueueSnapshot(models.Model):
    """gearmand's ``status`` line for one function at one poll: depth history."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, db_index=False)
    function = models.CharField(max_length=255)
    at = models.DateTimeField()
    total = models.IntegerField()  # queued + running, as gearmand counts it
    running = models.IntegerField()
    workers = models.IntegerField()

    class Meta:
        indexes = [models.Index(fields=["server", "function", "-at"], name="snapshot_recent"),
                   models.Index(fields=["at"], name="snapshot_at")]

    @property
    def queued(self) -> int:
        return max(self.total - self.running, 0)


class Worker(models.Model):
    """A worker connection gearmand lists under ``workers`` right now. Rows of workers
    that disappear are deleted by the poller."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="workers")
    fd = models.IntegerField()
    address = models.CharField(max_length=100)
    client_id = models.CharField(max_length=255, blank=True, default="")
    functions = models.JSONField(default=list)
    connected_at = models.DateTimeField()  # first poll that listed it
    last_seen = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["server", "fd", "address", "client_id"],
                                               name="worker_identity")]
        ordering = ["server_id", "client_id", "address"]


class Rollup(models.Model):
    """Per server, function and minute: counts and log-scale histograms of runtime and
    wait (``monitoring/histogram.py``), so percentiles over any range merge exactly from
    minute rows without scanning jobs."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, db_index=False)
    function = models.CharField(max_length=255)
    minute = models.DateTimeField()
    submitted = models.IntegerField(default=0)
    completed = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    runtime_hist = models.JSONField(default=list)
    wait_hist = models.JSONField(default=list)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["server", "function", "minute"],
                                               name="rollup_key")]
        indexes = [models.Index(fields=["function", "minute"], name="rollup_function_minute"),
                   models.Index(fields=["minute"], name="rollup_minute")]
