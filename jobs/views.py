"""Web pages for jobs: search with htmx partials, and one job at a glance.

Views stay thin: filtering lives in ``jobs.selectors``, formatting in the ``hq_format``
template tags. Every page needs a signed-in user with at least the viewer role.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from hq.errors import InvalidInput, NotFound
from hq.web import HtmxHttpRequest, is_fragment, render_page, viewer_required

from .models import State
from .redaction import may_see_payloads, withheld
from .selectors import exact_job, get_job, job_events, newest_page, search_jobs, server_names

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
    context: dict[str, object] = {"q": q, "exact": exact, "error": None, "jobs": []}
    status = 200
    try:
        before = params.get("before_id", "")
        jobs = search_jobs(params, payload_search=may_see_payloads(request.user))
        context["jobs"], context["older_than"] = newest_page(jobs, before, PAGE_SIZE)
    except InvalidInput as exc:
        context["error"], status = exc, 400
    if not partial:
        context.update(states=State.choices, filtered=_has_filters(params),
                       servers=server_names())
    return render_page(request, "jobs/list.html", "jobs/_results.html", context, status=status)


def _has_filters(params: Mapping[str, str]) -> bool:
    names = ("state", "function", "server", "worker", "submitted_after", "submitted_before")
    return any(params.get(name, "").strip() for name in names)


@viewer_required
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        job = get_job(pk)
    except NotFound as exc:
        raise Http404(exc.message) from None
    context = {"job": job, "events": list(job_events(job)),
               "withheld": withheld(job.function, request.user)}
    return render(request, "jobs/detail.html", context)
