"""Worlds for the web pages: rows written straight to Postgres the way the poller, the
rollups, the tap and the alert evaluator write them, and two ready-made worlds built from
them, ``build_world`` (monitoring) and ``build_alert_world`` (alerts on top of it), shared by
the Django test client tests and the browser tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.utils import timezone

from alerts import services
from alerts.models import Alert, Channel, Notification, Rule
from hq.models import Role
from hq.services import ensure_user
from jobs.models import Boot, Job, Server
from monitoring import histogram
from monitoring.models import QueueSnapshot, Rollup, ServerState, Worker
from tests.support.stack import free_port


def snap(server: Server, function: str, queued: int, *, at: datetime | None = None,
         running: int = 0, workers: int = 0) -> QueueSnapshot:
    """One poll of one queue (``at``, or now): ``queued`` waiting, ``running`` running."""
    return QueueSnapshot.objects.create(server=server, function=function,
                                        at=at or timezone.now(), total=queued + running,
                                        running=running, workers=workers)


def snapshots(server: Server, function: str, now: datetime, depths: list[int], *,
               running: int, workers: int, every_s: int = 30) -> None:
    """One poll every ``every_s`` seconds, the last one just now; ``depths`` oldest first."""
    n = len(depths)
    QueueSnapshot.objects.bulk_create([
        QueueSnapshot(server=server, function=function,
                      at=now - timedelta(seconds=every_s * (n - 1 - i)),
                      total=depth + running, running=running, workers=workers)
        for i, depth in enumerate(depths)
    ])


def rollups(server: Server, function: str, now: datetime, minutes: int, *,
            per_minute: int, failed_every: int = 0, runtime_ms: float = 120.0,
            wait_ms: float = 40.0) -> None:
    start = now.replace(second=0, microsecond=0)
    rows = []
    for m in range(minutes):
        wave = 1 + (m % 17) / 17  # some shape, so the charts are not flat
        count = int(per_minute * wave)
        failed = count // failed_every if failed_every and m % 7 == 0 else 0
        runtimes = [runtime_ms * wave * (1 + (i % 10) / 5) for i in range(count)]
        waits = [wait_ms * (1 + (i % 20) / 4) for i in range(count)]
        rows.append(Rollup(server=server, function=function,
                           minute=start - timedelta(minutes=m), submitted=count,
                           completed=count - failed, failed=failed,
                           runtime_hist=histogram.from_values(runtimes),
                           wait_hist=histogram.from_values(waits)))
    Rollup.objects.bulk_create(rows)


def add_job(boot: Boot, handle: str, **fields: object) -> Job:
    now = timezone.now()
    values = {"function": "resize_image", "state": "completed", "background": True,
              "priority": "normal", "attempts": 1, "submitted_at": now, "updated_at": now}
    values.update(fields)
    return Job.objects.create(server=boot.server, boot=boot, handle=handle, **values)


def build_world() -> dict[str, object]:
    """Two servers (one up, one down), four queues in four moods, three workers."""
    now = timezone.now()
    prod = Server.objects.create(name="gm-prod-1", address="10.0.4.12:4730")
    ServerState.objects.create(server=prod, up=True, version="1.1.20", pid="31337",
                               started_at=now - timedelta(days=3, hours=2), polled_at=now)
    spare = Server.objects.create(name="gm-spare", address="10.0.4.13:4730")
    ServerState.objects.create(server=spare, up=False, version="1.1.20", pid="977",
                               polled_at=now, down_since=now - timedelta(minutes=7),
                               failed_polls=9, last_error="connection refused")
    boot = Boot.objects.create(server=prod, token="31337", first_seen=now - timedelta(days=3))

    # resize_image: healthy, busy; send_email: backed up (oldest job waits 4 min);
    # transcode_video: jobs queued and no worker at all; nightly_report: idle.
    # the chart plots the peak per minute: the last two polls may share the newest minute,
    # so the one before the last stays below it and the newest point reads 4 either way
    snapshots(prod, "resize_image", now, [(i * 7) % 13 for i in range(118)] + [2, 4],
              running=3, workers=4)
    snapshots(prod, "send_email", now, [i * 2 for i in range(120)], running=2, workers=2)
    snapshots(prod, "transcode_video", now, [min(i, 17) for i in range(120)],
              running=0, workers=0)
    snapshots(prod, "nightly_report", now, [0] * 120, running=0, workers=1)
    rollups(prod, "resize_image", now, 180, per_minute=40, failed_every=10)
    rollups(prod, "send_email", now, 60, per_minute=6, runtime_ms=900, wait_ms=60_000)

    for n in range(3):
        add_job(boot, f"H:gm-prod-1:{500 + n}", function="send_email", state="queued",
                submitted_at=now - timedelta(minutes=4, seconds=n))
    errors = ["Imagick: corrupt JPEG data in /tmp/upload-8812.jpg",
              "TimeoutError: S3 GET took longer than 30 s\n  at fetch_source (resize.py:88)"]
    failed = [
        add_job(boot, f"H:gm-prod-1:{900 + n}", state="failed", error=errors[n % 2],
                worker="img-worker-1", runtime_ms=800, wait_ms=12,
                finished_at=now - timedelta(minutes=3 * n + 1))
        for n in range(3)
    ]
    running = add_job(boot, "H:gm-prod-1:4711", state="running", worker="img-worker-1",
                      started_at=now - timedelta(seconds=12), wait_ms=30)
    w_busy = Worker.objects.create(server=prod, fd=33, address="10.0.4.20",
                                   client_id="img-worker-1",
                                   functions=["resize_image", "nightly_report"],
                                   connected_at=now - timedelta(hours=5), last_seen=now)
    Worker.objects.create(server=prod, fd=34, address="10.0.4.21", client_id="img-worker-2",
                          functions=["resize_image"], connected_at=now - timedelta(hours=2),
                          last_seen=now)
    Worker.objects.create(server=prod, fd=35, address="10.0.4.30", client_id="",
                          functions=["send_email"], connected_at=now - timedelta(minutes=9),
                          last_seen=now)
    return {"prod": prod, "spare": spare, "boot": boot, "running": running,
            "failed": failed, "busy_worker": w_busy}


def alert_rule(name: str, metric: str, function: str, op: str, threshold: float, *,
               severity: str = "warning", for_seconds: int = 0,
               channels: Iterable[Channel] = (), **kw: object) -> Rule:
    rule = Rule.objects.create(name=name, metric=metric, function=function, operator=op,
                               threshold=threshold, for_seconds=for_seconds,
                               severity=severity, **kw)
    rule.channels.set(channels)
    return rule


def fired_ago(alert: Alert, ago: timedelta) -> None:
    """Move an alert (and the worker times in its snapshot) ``ago`` into the past."""
    snapshot = alert.snapshot
    for w in snapshot.get("workers", []):
        for key in ("connected_at", "last_seen"):
            w[key] = (datetime.fromisoformat(w[key]) - ago).isoformat()
    Alert.objects.filter(pk=alert.pk).update(started_at=alert.started_at - ago,
                                             last_notified_at=alert.started_at - ago,
                                             snapshot=snapshot)


def build_alert_world() -> dict[str, object]:
    """The monitoring world (two servers, four queues in four moods, three workers) with
    rules evaluated against it: two alerts firing (one acknowledged), one queue pending,
    history of resolved alerts, channels that work and one that does not."""
    world = build_world()
    now = timezone.now()
    opal = ensure_user("opal", Role.OPERATOR)
    slack = Channel.objects.create(name="#ops on Slack",
                                   url="slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7F/#ops")
    mail = Channel.objects.create(name="Ops e-mail",
                                  url="mailto://alerts:s3cret@example.com?to=ops@example.com")
    hook = Channel.objects.create(name="Incident webhook",
                                  url=f"json://127.0.0.1:{free_port()}/gearman")
    no_workers = alert_rule("Transcoding has no workers", "workers", "transcode_*", "<", 1,
                            severity="critical", channels=[slack, mail, hook])
    stale = alert_rule("Mail waits too long", "oldest_queued_age", "send_*", ">", 120,
                       channels=[slack])
    alert_rule("Mail queue deep", "queue_depth", "send_*", ">", 100, for_seconds=600,
               channels=[mail])
    alert_rule("Resize failure rate", "failure_rate", "resize_*", ">", 0.05,
               window_seconds=900, channels=[slack])
    deep = alert_rule("Resize queue deep", "queue_depth", "resize_*", ">", 500,
                      for_seconds=120, severity="critical", channels=[slack, mail])
    alert_rule("Reports stranded", "stranded", "nightly_*", ">", 0, severity="info",
               enabled=False)

    tick = services.evaluate(refresh=False)
    firing = {a.rule_id: a for a in Alert.objects.filter(pk__in=tick.fired)}
    critical, warning = firing[no_workers.pk], firing[stale.pk]
    services.acknowledge(alert_id=warning.pk, user=opal, silence_s=3600)
    # as if they had fired a while ago (the values are today's)
    fired_ago(critical, timedelta(minutes=12, seconds=8))
    fired_ago(warning, timedelta(minutes=3, seconds=40))
    Alert.objects.filter(pk=warning.pk).update(acknowledged_at=now - timedelta(minutes=2))
    critical.refresh_from_db()
    warning.refresh_from_db()
    # what delivery would have recorded: Slack took it, the webhook is down, mail retries
    notes = {n.channel_id: n for n in Notification.objects.filter(alert=critical)}
    Notification.objects.filter(pk=notes[slack.pk].pk).update(
        status="sent", attempts=1, sent_at=now)
    Notification.objects.filter(pk=notes[hook.pk].pk).update(
        status="failed", attempts=8, next_attempt_at=now - timedelta(minutes=1),
        last_error="Connection refused: json://127.0.0.1 (HTTPConnectionPool: Max retries "
                   "exceeded with url: /gearman)")
    Notification.objects.filter(pk=notes[mail.pk].pk).update(
        attempts=2, next_attempt_at=now + timedelta(seconds=30),
        last_error="Sending email to ops@example.com failed: timed out")
    Notification.objects.filter(alert=warning).update(status="sent", attempts=1, sent_at=now)

    history = []
    for hours, minutes, value, peak, who in ((3, 14, 12, 880, opal), (9, 3, 40, 612, None),
                                             (26, 47, 0, 1460, opal)):
        start = now - timedelta(hours=hours)
        history.append(Alert.objects.create(
            rule=deep, server=world["prod"], function="resize_image", state="resolved",
            value=value, peak=peak, started_at=start,
            resolved_at=start + timedelta(minutes=minutes),
            acknowledged_by=who,
            acknowledged_at=start + timedelta(minutes=2) if who else None,
            snapshot={"queues": [], "workers": []}))
    return {**world, "operator": opal, "slack": slack, "mail": mail, "hook": hook,
            "critical": critical, "warning": warning, "history": history,
            "rules": {"no_workers": no_workers, "stale": stale, "deep": deep}}


def img_backlog(address: str = "") -> Server:
    """Fresh data for a rule on ``img*``: server gm-img, up, with 20 jobs of img_resize
    queued and no worker."""
    server = Server.objects.create(name="gm-img", address=address)
    ServerState.objects.create(server=server, up=True, polled_at=timezone.now())
    snap(server, "img_resize", 20)
    return server
