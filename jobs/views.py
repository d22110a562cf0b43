"""Web pages for jobs: search with htmx partials, and one job at a glance.

Views stay thin: filtering lives in ``jobs.selectors``, formatting in the ``hq_format``
template tags. Every page needs a signed-in user with at least the viewer role.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from hq.errors import HQError, InvalidInput
from hq.models import Role
from hq.roles import has_role
from hq.web import (
    HtmxHttpRequest,
    form_errors,
    is_fragment,
    or_404,
    refusals_flashed,
    render_page,
    role_required,
    viewer_required,
)

from . import bulk, restored, services
from .forms import SubmitJobForm
from .models import Job, State
from .recovery.engine import chain_view, is_policy_retry
from .redaction import is_redacted, may_see_payloads, withheld
from .selectors import (
    FILTERS,
    earlier_runs,
    exact_job,
    get_job,
    job_events,
    known_functions,
    newest_page,
    search_jobs,
    server_names,
)

OPERATORS_ONLY = "Only operators and admins may act on jobs."

PAGE_SIZE = 50


@require_GET
@viewer_required
def job_list(request: HtmxHttpRequest) -> HttpResponse:
    params = request.GET
    q = params.get("q", "").strip()
    partial = is_fragment(request)
    exact = exact_job(q) if q else None
    if exact is not None and not partial and "before_id" not in params:
        return redirect("job-detail", pk=exact.pk)  # type a handle, land on the job
    context: dict[str, object] = {"q": q, "exact": exact, "error": None, "jobs": [],
                                  "filtered": _has_filters(params)}
    status = 200
    try:
        before = params.get("before_id", "")
        jobs = search_jobs(params, payload_search=may_see_payloads(request.user))
        context["jobs"], context["older_than"] = newest_page(jobs, before, PAGE_SIZE)
    except InvalidInput as exc:
        context["error"], status = exc, 400
    if not partial:
        context.update(states=State.choices, servers=server_names(),
                       scheduled_only=params.get("state") == "scheduled")
    return render_page(request, "jobs/list.html", "jobs/_results.html", context, status=status)


def _has_filters(params: Mapping[str, str]) -> bool:
    names = ("state", "function", "server", "worker", "submitted_after", "submitted_before",
             "retry_of", "priority", "background")
    return any(params.get(name, "").strip() for name in names)


@viewer_required
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = or_404(get_job, pk)
    context = {"job": job, "events": list(job_events(job)),
               "withheld": withheld(job.function, request.user),
               "retries": list(Job.objects.filter(retry_of=job.pk).order_by("id")
                               .values_list("id", "state")),
               "can_operate": has_role(request.user, Role.OPERATOR),
               "retry_refusal": job.retry_refusal(redacted=is_redacted(job.function)),
               "cancel_refusal": job.cancel_refusal() if job.state != State.CANCELLED
               else "it is already cancelled",
               "action_key": uuid.uuid4().hex, "now": timezone.now(),
               "chain": chain_view(job) if _in_a_chain(job) else None,
               "earlier_runs": earlier_runs(job),
               "restored_history": restored.history(job)}
    return render(request, "jobs/detail.html", context)


def _in_a_chain(job: Job) -> bool:
    """Worth a chain panel: a policy retry, a job retried by a policy, or a dead letter."""
    return (job.dead or job.death_count > 0
            or job.recovery in ("retry", "dead", "requeued", "discarded")
            or is_policy_retry(job))


@require_POST
@role_required(Role.OPERATOR, OPERATORS_ONLY)
@refusals_flashed("job-detail", url_kwargs=("pk",), not_found_404=True)
def job_retry(request: HttpRequest, pk: int) -> HttpResponse:
    key = request.POST.get("action_key", "")[:64]
    job = services.retry(job_id=pk, user=request.user, via="ui",
                         idempotency_key=f"ui-retry:{key}" if key else "")
    messages.success(request, f"Retried job #{pk} as job #{job.pk}.")
    return redirect("job-detail", pk=job.pk)


@require_POST
@role_required(Role.OPERATOR, OPERATORS_ONLY)
@refusals_flashed("job-detail", url_kwargs=("pk",), not_found_404=True)
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    services.cancel(job_id=pk, user=request.user, via="ui")
    messages.success(request, f"Job #{pk} is cancelled.")
    return redirect("job-detail", pk=pk)


@role_required(Role.OPERATOR, OPERATORS_ONLY)
def job_submit(request: HttpRequest) -> HttpResponse:
    form = SubmitJobForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                done = services.submit(
                    function=data["function"], payload=data["payload_bytes"],
                    unique=data["unique"], priority=data["priority"],
                    background=data["mode"] == "background", run_at=data["run_at"],
                    wait_s=form.wait_s(), user=request.user, via="ui",
                    idempotency_key=f"ui-submit:{request.POST.get('action_key', '')[:64]}"
                    if request.POST.get("action_key") else "")
            except HQError as exc:
                form_errors(form, exc)
                status = exc.status
            else:
                job = done.job
                if job.state == State.SCHEDULED:
                    messages.success(request, f"Job #{job.pk} will be submitted at "
                                              f"{job.scheduled_for:%Y-%m-%d %H:%M:%S} UTC.")
                else:
                    messages.success(request, f"Submitted job #{job.pk} ({job.handle}).")
                return redirect("job-detail", pk=job.pk)
        else:
            status = 400
    context = {"form": form, "functions": known_functions(), "action_key": uuid.uuid4().hex}
    return render(request, "jobs/submit.html", context, status=status)


def _filters(params: Mapping[str, str]) -> dict[str, str]:
    """The list filters set in a query string or form."""
    return {name: params.get(name, "") for name in FILTERS if params.get(name, "").strip()}


@require_GET
@role_required(Role.OPERATOR, OPERATORS_ONLY)
def bulk_confirm(request: HttpRequest) -> HttpResponse:
    """"Retry 1,284 failed `resize_image` jobs?": the count first, then a button."""
    action = request.GET.get("action", "")
    filters = _filters(request.GET)
    context: dict[str, object] = {"action": action, "filters": filters, "error": "",
                                  "back": "/jobs/?" + urlencode(filters)}
    try:
        _, count = bulk.start(action=action, filter=filters, dry_run=True, user=request.user,
                              via="ui")
        context.update(count=count, question=bulk.describe(action, count, filters))
    except HQError as exc:
        context["error"] = exc.message
    return render(request, "jobs/_bulk_confirm.html", context)


@require_POST
@role_required(Role.OPERATOR, OPERATORS_ONLY)
@refusals_flashed("job-list")
def bulk_start(request: HttpRequest) -> HttpResponse:
    action, _ = bulk.start(action=request.POST.get("action", ""),
                           filter=_filters(request.POST), user=request.user, via="ui")
    assert action is not None
    return redirect("bulk-detail", pk=action.pk)


@viewer_required
def bulk_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    action = or_404(bulk.get, pk)
    context = {"bulk": action, "question": bulk.describe(action.action, action.total,
                                                         action.filter).rstrip("?"),
               "percent": (100 * (action.done + action.failed) // action.total)
               if action.total else 100}
    return render_page(request, "jobs/bulk.html", "jobs/_bulk_progress.html", context)
