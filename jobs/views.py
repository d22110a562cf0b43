"""Web pages for jobs: search with htmx partials, and one job at a glance.

Views stay thin: filtering lives in ``jobs.selectors``, formatting in the ``hq_format``
template tags. Every page needs a signed-in user with at least the viewer role.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseClientRedirect

from hq.errors import InvalidInput, NotFound
from hq.models import Role
from hq.roles import has_role
from jobs.models import Server

from .models import Job, State
from .selectors import exact_job, get_job, job_events, search_jobs

PAGE_SIZE = 50
NO_ROLE = "Your account has no role in Gearman HQ yet. Ask an admin for viewer access."

View = Callable[..., HttpResponse]


def viewer_required(view: View) -> View:
    """Signed in (else the login page) and at least a viewer (else 403)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.is_authenticated:
            if request.htmx:  # a partial would swap the login form into the page
                return HttpResponseClientRedirect(f"/login/?next={request.path}")
            return redirect_to_login(request.get_full_path())
        if not has_role(request.user, Role.VIEWER):
            raise PermissionDenied(NO_ROLE)
        return view(request, *args, **kwargs)

    return wrapped


@require_GET
@viewer_required
def job_list(request: HttpRequest) -> HttpResponse:
    params = request.GET
    q = params.get("q", "").strip()
    partial = bool(request.htmx) and not request.htmx.history_restore_request
    exact = exact_job(q) if q else None
    if exact is not None and not partial and "before_id" not in params:
        return redirect("job-detail", pk=exact.pk)  # type a handle, land on the job
    context: dict[str, object] = {"q": q, "exact": exact, "error": None, "jobs": []}
    status = 200
    try:
        context["jobs"], context["older_than"] = _page(search_jobs(params), params)
    except InvalidInput as exc:
        context["error"], status = exc, 400
    if not partial:
        context.update(states=State.choices, filtered=_has_filters(params),
                       servers=Server.objects.order_by("name").values_list("name", flat=True))
    template = "jobs/_results.html" if partial else "jobs/list.html"
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _page(qs: QuerySet[Job], params: Mapping[str, str]) -> tuple[list[Job], int | None]:
    """One page of newest-first jobs, older than ``before_id``; and the next cursor."""
    raw = params.get("before_id", "").strip()
    if raw:
        if not raw.isdigit():
            raise InvalidInput(f"before_id must be a job id, not {raw!r}",
                               fields={"before_id": ["A whole number."]})
        qs = qs.filter(id__lt=int(raw))
    rows = list(qs[: PAGE_SIZE + 1])
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return rows, (rows[-1].pk if more else None)


def _has_filters(params: Mapping[str, str]) -> bool:
    names = ("state", "function", "server", "worker", "submitted_after", "submitted_before")
    return any(params.get(name, "").strip() for name in names)


@viewer_required
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        job = get_job(pk)
    except NotFound as exc:
        raise Http404(exc.message) from None
    return render(request, "jobs/detail.html", {"job": job, "events": list(job_events(job))})
