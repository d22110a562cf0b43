"""The Retry policies and Dead letters pages. Viewers read; operators act (one by one, or
in bulk by filter through ``jobs.bulk``: discard, and requeue as a bulk retry)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from hq.errors import HQError, InvalidInput
from hq.models import Role
from hq.roles import has_role
from hq.web import form_errors, or_404, refusals_flashed, role_required, viewer_required

from .. import bulk, services
from ..forms import RetryPolicyForm
from ..models import Job, RetryPolicy
from ..redaction import withheld
from ..selectors import filter_values, known_functions, newest_page, search_jobs
from . import engine, policies

OPERATORS_ONLY = "Only operators and admins may change retry policies or dead letters."
PAGE_SIZE = 50
PREVIEW = 120


@viewer_required
def policy_list(request: HttpRequest) -> HttpResponse:
    form = RetryPolicyForm(request.POST or None)
    done = _save(request, form, None)
    if done is not None:
        return done
    return render(request, "jobs/retry_policies.html", {
        "policies": list(RetryPolicy.objects.order_by("order", "id")), "form": form,
        "functions": known_functions(), "can_operate": has_role(request.user, Role.OPERATOR),
        "death_limit": engine.death_limit(),
    }, status=400 if request.method == "POST" else 200)


@viewer_required
def policy_detail(request: HttpRequest, pk: int) -> HttpResponse:
    policy = or_404(policies.get, pk)
    initial = {name: getattr(policy, name) for name in policies.FIELDS}
    form = RetryPolicyForm(request.POST or None, initial=initial)
    done = _save(request, form, policy)
    if done is not None:
        return done
    return render(request, "jobs/retry_policy.html", {
        "policy": policy, "form": form, "functions": known_functions(),
        "can_operate": has_role(request.user, Role.OPERATOR)},
        status=400 if request.method == "POST" else 200)


def _save(request: HttpRequest, form: RetryPolicyForm,
          policy: RetryPolicy | None) -> HttpResponse | None:
    """On a POST: 403 for a viewer, the redirect once an operator's form is saved (a new
    policy, or ``policy`` changed). None when the page is shown (a POST's with the form's
    errors)."""
    if request.method != "POST":
        return None
    if not has_role(request.user, Role.OPERATOR):
        return HttpResponse(OPERATORS_ONLY, status=403)
    if not form.is_valid():
        return None
    try:
        if policy is None:
            policy = policies.create(data=form.values(), user=request.user, via="ui")
            done = "created"
        else:
            policies.update(policy_id=policy.pk, data=form.values(), user=request.user,
                            via="ui", partial=False)
            done = "saved"
    except HQError as exc:
        form_errors(form, exc)
        return None
    messages.success(request, f"Retry policy for “{policy.function}” {done}.")
    return redirect("retry-policies")


@require_POST
@role_required(Role.OPERATOR, OPERATORS_ONLY)
def policy_move(request: HttpRequest, pk: int) -> HttpResponse:
    or_404(policies.move, policy_id=pk, up=request.POST.get("direction") == "up",
           user=request.user, via="ui")
    return redirect("retry-policies")


@require_POST
@role_required(Role.OPERATOR, OPERATORS_ONLY)
def policy_delete(request: HttpRequest, pk: int) -> HttpResponse:
    or_404(policies.delete, policy_id=pk, user=request.user, via="ui")
    messages.success(request, "Retry policy deleted.")
    return redirect("retry-policies")


def _filters(params: Any) -> dict[str, str]:
    values = filter_values({"function": params.get("function", ""),
                            "submitted_after": params.get("submitted_after", "")})
    return {k: v for k, v in values.items() if v}


def _preview(job: Job, hidden: str | None) -> str:
    if hidden:
        return f"({hidden})"
    payload = job.payload
    text = payload if isinstance(payload, str) else (repr(payload) if payload else "")
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"


@viewer_required
def dead_letters(request: HttpRequest) -> HttpResponse:
    filters = _filters(request.GET)
    rows: list[dict[str, Any]] = []
    error = ""
    older_than = None
    try:
        qs = search_jobs({**filters, "dead": "true"})
        jobs, older_than = newest_page(qs, request.GET.get("before_id", ""), PAGE_SIZE)
    except HQError as exc:
        jobs, error = [], exc.message
    for job in jobs:
        chain = engine.chain_of(job)
        rows.append({"job": job, "runs": len(chain), "first": chain[0],
                     "preview": _preview(job, withheld(job.function, request.user))})
    return render(request, "jobs/dead_letters.html", {
        "rows": rows, "filters": filters, "error": error, "older_than": older_than,
        "count": Job.objects.filter(dead=True).count(), "now": timezone.now(),
        "can_operate": has_role(request.user, Role.OPERATOR),
        "death_limit": engine.death_limit()})


@require_POST
@role_required(Role.OPERATOR, OPERATORS_ONLY)
@refusals_flashed("dead-letters")
def dead_requeue(request: HttpRequest, pk: int) -> HttpResponse:
    job = services.retry(job_id=pk, user=request.user, via="ui")
    messages.success(request, f"Requeued job #{pk} as job #{job.pk}.")
    return redirect("dead-letters")


@require_POST
@role_required(Role.OPERATOR, OPERATORS_ONLY)
@refusals_flashed("dead-letters")
def dead_discard(request: HttpRequest, pk: int) -> HttpResponse:
    services.discard(job_id=pk, user=request.user, via="ui")
    messages.success(request, f"Discarded job #{pk} (kept in history).")
    return redirect("dead-letters")


@require_POST
@role_required(Role.OPERATOR, OPERATORS_ONLY)
@refusals_flashed("dead-letters")
def dead_bulk(request: HttpRequest) -> HttpResponse:
    """Requeue or discard every dead letter the filter matches, in the background."""
    action = {"requeue": "retry", "discard": "discard"}.get(request.POST.get("action", ""))
    if action is None:
        raise InvalidInput("Choose requeue or discard.")
    started, _ = bulk.start(action=action, filter={**_filters(request.POST), "dead": "true"},
                            user=request.user, via="ui")
    assert started is not None
    return redirect("bulk-detail", pk=started.pk)
