"""The web UI's job pages through Django's test client, against the real Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from hq import formatting as hq_format
from jobs.models import Boot, Job, JobEvent, Server
from tests.support.users import PASSWORD, make_user

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
def boot(db):
    server = Server.objects.create(name="gm1", address="10.0.0.5:4730")
    return Boot.objects.create(server=server, token="4242", first_seen=T0)


def make_job(boot, handle: str, **fields) -> Job:
    values = {
        "function": "resize_image", "state": "completed", "submitted_at": T0,
        "updated_at": T0, "background": True, "priority": "normal",
    }
    values.update(fields)
    return Job.objects.create(server=boot.server, boot=boot, handle=handle, **values)


def add_event(job: Job, kind: str, at: datetime, **fields) -> JobEvent:
    return JobEvent.objects.create(id=uuid.uuid4(), at=at, server=job.server, boot=job.boot,
                                   handle=job.handle, kind=kind, **fields)


# ---------------------------------------------------------------- access


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/jobs/", "/jobs/1/", "/jobs/?q=x"])
def test_pages_need_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/")


@pytest.mark.django_db
def test_htmx_request_without_session_redirects_the_whole_page(client):
    response = client.get("/jobs/?q=abc", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/login/?next=/jobs/"


@pytest.mark.django_db
def test_login_page_then_sign_in_lands_on_jobs(client, vera):
    page = client.get("/login/")
    assert page.status_code == 200
    assert b"Sign in" in page.content and b'name="password"' in page.content

    bad = client.post("/login/", {"username": "vera", "password": "nope"})
    assert bad.status_code == 200
    assert b"correct username and password" in bad.content

    good = client.post("/login/", {"username": "vera", "password": PASSWORD})
    assert good.status_code == 302 and good["Location"] == "/"
    home = client.get("/")
    assert home.status_code == 200 and b"vera" in home.content
    jobs = client.get("/jobs/")
    assert jobs.status_code == 200
    assert b"vera" in jobs.content and b"viewer" in jobs.content


@pytest.mark.django_db
def test_user_without_a_role_gets_403(client):
    client.force_login(make_user("nobody", None))
    response = client.get("/jobs/")
    assert response.status_code == 403
    assert b"no role in Gearman HQ" in response.content


@pytest.mark.django_db
def test_logout_is_post_only(viewer):
    assert viewer.get("/logout/").status_code == 405
    response = viewer.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert viewer.get("/jobs/").status_code == 302


# ---------------------------------------------------------------- search


@pytest.mark.django_db
def test_search_by_exact_handle_redirects_to_the_job(viewer, boot):
    job = make_job(boot, "H:gm1:42")
    make_job(boot, "H:gm1:420")
    response = viewer.get("/jobs/", {"q": "  H:gm1:42 "})
    assert response.status_code == 302
    assert response["Location"] == f"/jobs/{job.pk}/"


@pytest.mark.django_db
def test_list_shows_rows_with_state_and_links(viewer, boot):
    failed = make_job(boot, "H:gm1:1", state="failed", error="boom: disk full",
                      wait_ms=12, runtime_ms=3400, attempts=2, worker="w-17")
    make_job(boot, "H:gm1:2", state="running", function="send_mail")
    response = viewer.get("/jobs/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" in body
    assert f'href="/jobs/{failed.pk}/"' in body
    assert 'data-state="failed"' in body and 'data-state="running"' in body
    assert "boom: disk full" in body and "3.4 s" in body and "12 ms" in body
    assert body.index("H:gm1:2") < body.index("H:gm1:1")  # newest first


@pytest.mark.django_db
def test_htmx_search_returns_only_the_results_partial(viewer, boot):
    make_job(boot, "H:gm1:7", state="failed")
    make_job(boot, "H:gm1:8", state="completed")
    response = viewer.get("/jobs/", {"state": "failed"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in body and "<header" not in body and "<form" not in body
    assert "H:gm1:7" in body and "H:gm1:8" not in body
    assert "HX-Request" in response["Vary"]


@pytest.mark.django_db
def test_search_box_matches_part_of_a_function_handle_or_payload(viewer, boot):
    make_job(boot, "H:gm1:7", function="send_mail", payload_text='{"to": "ops@example.com"}')
    make_job(boot, "H:gm1:8", function="resize_image")
    for q in ("send_mail", "send", "ops@example", "H:gm1:7"):
        response = viewer.get("/jobs/", {"q": q}, HTTP_HX_REQUEST="true")
        body = response.content.decode()
        assert "H:gm1:7" in body and "H:gm1:8" not in body, q
        assert 'class="handle"' in body, q  # a result row, not only the "Enter opens" hint


@pytest.mark.django_db
def test_htmx_search_for_a_handle_offers_the_job_instead_of_redirecting(viewer, boot):
    job = make_job(boot, "H:gm1:9")
    response = viewer.get("/jobs/", {"q": "H:gm1:9"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert f'class="exact-hit" href="/jobs/{job.pk}/"' in response.content.decode()


@pytest.mark.django_db
def test_history_restore_gets_the_full_page(viewer, boot):
    response = viewer.get("/jobs/", HTTP_HX_REQUEST="true",
                          HTTP_HX_HISTORY_RESTORE_REQUEST="true")
    assert b"<html" in response.content


@pytest.mark.django_db
@pytest.mark.parametrize(("params", "message"), [
    ({"state": "exploded"}, "unknown state"),
    ({"submitted_after": "yesterday"}, "not an ISO 8601 time"),
    ({"before_id": "abc"}, "before_id must be a job id"),
])
@pytest.mark.parametrize("htmx", [False, True])
def test_invalid_filter_is_a_400_with_a_message(viewer, boot, params, message, htmx):
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    response = viewer.get("/jobs/", params, **headers)
    assert response.status_code == 400
    body = response.content.decode()
    assert "Can\u2019t search" in body and message in body
    assert ("<html" in body) is not htmx


@pytest.mark.django_db
def test_filters_narrow_the_list(viewer, boot):
    make_job(boot, "H:gm1:1", state="failed", worker="w-1")
    make_job(boot, "H:gm1:2", state="completed", worker="w-2",
             submitted_at=T0 + timedelta(hours=2))
    by_state = viewer.get("/jobs/", {"state": "failed"}, HTTP_HX_REQUEST="true")
    assert b"H:gm1:1" in by_state.content and b"H:gm1:2" not in by_state.content
    by_time = viewer.get("/jobs/", {"submitted_after": "2026-11-24T11:00"},
                         HTTP_HX_REQUEST="true")
    assert b"H:gm1:2" in by_time.content and b"H:gm1:1" not in by_time.content
    by_server = viewer.get("/jobs/", {"server": "elsewhere"}, HTTP_HX_REQUEST="true")
    assert b"No jobs match these filters" in by_server.content


@pytest.mark.django_db
def test_empty_search_says_so(viewer, boot):
    make_job(boot, "H:gm1:1")
    response = viewer.get("/jobs/", {"q": "no-such-thing"})
    assert response.status_code == 200
    assert "No jobs match “no-such-thing”" in response.content.decode()


@pytest.mark.django_db
def test_cursor_pagination(viewer, boot):
    for n in range(1, 56):
        make_job(boot, f"H:gm1:{n}")
    first = viewer.get("/jobs/").content.decode()
    assert first.count('class="handle"') == 50
    assert "Older →" in first and "H:gm1:55" in first and "H:gm1:5<" not in first
    last_on_page = Job.objects.order_by("-id")[49]
    assert f"before_id={last_on_page.pk}" in first

    second = viewer.get("/jobs/", {"before_id": last_on_page.pk}).content.decode()
    assert second.count('class="handle"') == 5
    assert "Older →" not in second and "← Newest" in second
    assert "H:gm1:1<" in second

    beyond = viewer.get("/jobs/", {"before_id": Job.objects.order_by("id")[0].pk})
    assert b"No older jobs" in beyond.content


# ---------------------------------------------------------------- detail


@pytest.mark.django_db
def test_unknown_job_is_a_friendly_404(viewer):
    response = viewer.get("/jobs/999999/")
    assert response.status_code == 404
    assert b"No job with id 999999" in response.content
    assert b"Search jobs" in response.content


@pytest.mark.django_db
def test_detail_shows_payload_result_error_and_timeline(viewer, boot):
    job = make_job(
        boot, "H:gm1:77", state="failed", function="thumbnail", unique="img-9",
        payload_text='{"id": 9, "size": "large"}', payload_size=26,
        result_bin=b"\x00\x01PNG\xff", result_size=5,
        error="ValueError: cannot identify image file", attempts=3, worker="w-3",
        wait_ms=1500, runtime_ms=125_000, started_at=T0 + timedelta(seconds=1.5),
        finished_at=T0 + timedelta(seconds=126.5),
        progress_numerator=3, progress_denominator=4,
    )
    add_event(job, "submitted", T0, conn="c1")
    add_event(job, "started", T0 + timedelta(seconds=1.5), worker="w-3")
    add_event(job, "status", T0 + timedelta(seconds=60), numerator=3, denominator=4)
    add_event(job, "exception", T0 + timedelta(seconds=126.5),
              detail="ValueError: cannot identify image file")

    response = viewer.get(f"/jobs/{job.pk}/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "H:gm1:77" in body and 'data-state="failed"' in body
    assert "&quot;size&quot;: &quot;large&quot;" in body  # payload, pretty JSON
    assert "00 01 50 4e 47 ff" in body  # result as a hex dump
    assert 'class="error-panel' in body and "cannot identify image file" in body
    assert "1.5 s" in body and "2 min 5 s" in body  # wait, runtime
    assert "75%" in body and "3 / 4" in body
    assert "2026-11-24 10:00:00.000 UTC" in body
    assert body.count('class="tl-item') == 4
    assert "+1.5 s" in body and "+2 min 6 s" in body
    assert "Truncated" not in body


@pytest.mark.django_db
def test_detail_says_when_a_payload_was_truncated(viewer, boot):
    job = make_job(boot, "H:gm1:5", payload_text="x" * 100, payload_size=5000,
                   state="queued")
    body = viewer.get(f"/jobs/{job.pk}/").content.decode()
    assert "Truncated: showing 100 of 5000 bytes." in body
    assert "No result yet." in body


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(("ms", "text"), [
    (None, "—"), (0, "0 ms"), (12, "12 ms"), (999, "999 ms"), (3400, "3.4 s"),
    (42_000, "42 s"), (125_000, "2 min 5 s"), (120_000, "2 min"), (14 * 60_000, "14 min"),
    (3_900_000, "1 h 5 min"), (2 * 86_400_000 + 3 * 3_600_000, "2 d 3 h"),
])
def test_duration_ms(ms, text):
    assert hq_format.duration_ms(ms) == text


def test_ago_and_offset():
    now = timezone.now()
    assert hq_format.ago(now - timedelta(seconds=12), now) == "12 s ago"
    assert hq_format.ago(now - timedelta(minutes=5, seconds=3), now) == "5 min ago"
    assert hq_format.ago(now + timedelta(minutes=2), now) == "in 2 min"
    assert hq_format.ago(now, now) == "just now"
    assert hq_format.offset(T0 + timedelta(milliseconds=250), T0) == "+250 ms"


def test_hexdump_lines():
    dump = hq_format.hexdump(bytes(range(20)))
    lines = dump.splitlines()
    assert lines[0].startswith("00000000  00 01 02") and lines[0].endswith("................")
    assert lines[1].startswith("00000010  10 11 12 13")
