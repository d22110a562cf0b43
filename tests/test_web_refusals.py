"""What a page does with a refused action (``hq.web``): an action view flashes the service's
message and goes back where it would have gone (``refusals_flashed``), a missing thing is
a 404 where the view says so (``not_found_404``, ``or_404``), and a refused save shows on
its form (``form_errors``). Each through the real views, with nothing changed behind."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from django.contrib.messages import get_messages
from django.utils import timezone

from hq.models import AuditEntry
from jobs.models import Boot, Job, RetryPolicy, Schedule, Server
from tests.support.worlds import add_job

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractUser
    from django.test import Client
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

MISSING = 987654


@pytest.fixture
def boot(db: None) -> Boot:
    server = Server.objects.create(name="gm-r", address="127.0.0.1:1")
    return Boot.objects.create(server=server, token="1", first_seen=timezone.now())


def flashed(client: Client, r: Response) -> list[tuple[str, str]]:
    """The messages ``r`` left (level, text); the page it redirects to shows them, so the
    next response carries only its own."""
    left = [(m.level_tag, str(m)) for m in get_messages(r.wsgi_request)]
    client.get(r["Location"])
    return left


def test_a_refused_dead_letter_action_is_flashed_and_goes_back(boot: Boot,
                                                               operator: Client) -> None:
    done = add_job(boot, "H:r:1")  # completed: not a dead letter
    r = operator.post(f"/dead-letters/{done.pk}/discard/")
    assert r.status_code == 302 and r["Location"] == "/dead-letters/"
    assert flashed(operator, r) == [("error", f"Job {done.pk} is not a dead letter.")]
    assert Job.objects.get(pk=done.pk).recovery == ""
    # a missing job is a message here too, not a 404 (the list is where the button was)
    r = operator.post(f"/dead-letters/{MISSING}/requeue/")
    assert r.status_code == 302 and r["Location"] == "/dead-letters/"
    assert flashed(operator, r) == [("error", f"No job with id {MISSING}.")]
    r = operator.post("/dead-letters/bulk/", {"action": "explode"})
    assert r.status_code == 302 and r["Location"] == "/dead-letters/"
    assert flashed(operator, r) == [("error", "Choose requeue or discard.")]
    r = operator.post("/dead-letters/bulk/", {"action": "discard",
                                              "submitted_after": "yesterday-ish"})
    assert r.status_code == 302 and r["Location"] == "/dead-letters/"
    assert [level for level, _ in flashed(operator, r)] == ["error"]
    assert not AuditEntry.objects.filter(action__startswith="bulk_").exists()


def test_a_refused_job_action_goes_back_to_the_job_and_a_missing_job_is_404(
        boot: Boot, operator: Client) -> None:
    done = add_job(boot, "H:r:2")
    r = operator.post(f"/jobs/{done.pk}/cancel/")
    assert r.status_code == 302 and r["Location"] == f"/jobs/{done.pk}/"
    assert flashed(operator, r) == [("error", f"Job {done.pk} cannot be cancelled: it has already "
                                    "finished (completed).")]
    running = add_job(boot, "H:r:3", state="running")
    r = operator.post(f"/jobs/{running.pk}/retry/")
    assert r.status_code == 302 and r["Location"] == f"/jobs/{running.pk}/"
    assert [level for level, _ in flashed(operator, r)] == ["error"]
    assert not Job.objects.filter(retry_of=running.pk).exists()
    assert operator.post(f"/jobs/{MISSING}/cancel/").status_code == 404
    assert operator.post(f"/jobs/{MISSING}/retry/").status_code == 404
    r = operator.post("/jobs/bulk/", {"action": "explode", "state": "failed"})
    assert r.status_code == 302 and r["Location"] == "/jobs/"
    assert [level for level, _ in flashed(operator, r)] == ["error"]


def test_missing_things_are_404(operator: Client, admin: Client, db: None) -> None:
    for url in (f"/schedules/{MISSING}/delete/", f"/retry-policies/{MISSING}/move/",
                f"/retry-policies/{MISSING}/delete/", f"/users/{MISSING}/active/",
                f"/tokens/{MISSING}/revoke/"):
        client = admin if url.startswith(("/users/", "/tokens/")) else operator
        assert client.post(url, {"role": "viewer", "active": "0"}).status_code == 404, url
    assert admin.post(f"/users/{MISSING}/role/", {"role": "viewer"}).status_code == 404
    for url in (f"/retry-policies/{MISSING}/", f"/jobs/{MISSING}/", f"/bulk/{MISSING}/"):
        assert operator.get(url).status_code == 404, url


def test_an_admin_refused_on_the_users_page_is_told_why(admin: Client,
                                                        ada: AbstractUser) -> None:
    r = admin.post(f"/users/{ada.pk}/active/", {"active": "0"})
    assert r.status_code == 302 and r["Location"] == "/users/"
    ((level, text),) = flashed(admin, r)
    assert level == "error" and text.startswith("You cannot")
    r = admin.post(f"/users/{ada.pk}/role/", {"role": "viewer"})
    assert r.status_code == 302 and [lv for lv, _ in flashed(admin, r)] == ["error"]


def test_a_refused_save_shows_on_its_form(operator: Client, db: None) -> None:
    form = {"function": "report", "cron": "0 3 * * *", "timezone": "UTC",
            "priority": "normal", "overlap": "skip", "enabled": "on"}
    assert operator.post("/schedules/", {**form, "name": "nightly"}).status_code == 302
    r = operator.post("/schedules/", {**form, "name": "nightly"})
    html = r.content.decode()
    assert r.status_code == 400 and Schedule.objects.count() == 1
    assert "exists already" in html and "Already taken." in html
    RetryPolicy.objects.create(function="a_*", max_attempts=2)
    policy = {"function": "b_*", "max_attempts": "3", "backoff_base_s": "10",
              "backoff_max_s": "1", "retry_on": ["failed"], "enabled": "on"}
    r = operator.post("/retry-policies/", policy)
    assert r.status_code == 400 and "At least backoff_base_s." in r.content.decode()
    r = operator.post("/retry-policies/", {**policy, "backoff_max_s": "60"})
    assert r.status_code == 302 and r["Location"] == "/retry-policies/"
    assert flashed(operator, r) == [("success", "Retry policy for “b_*” created.")]
    pk = RetryPolicy.objects.get(function="b_*").pk
    r = operator.post(f"/retry-policies/{pk}/", {**policy, "backoff_max_s": "1"})
    assert r.status_code == 400 and "At least backoff_base_s." in r.content.decode()
    r = operator.post(f"/retry-policies/{pk}/", {**policy, "function": "c_*",
                                                 "backoff_max_s": "60"})
    assert r.status_code == 302 and flashed(operator, r) == [("success",
                                                    "Retry policy for “b_*” saved.")]
