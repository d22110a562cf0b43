"""REST endpoints for jobs: thin, they call selectors and services."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hq.errors import InvalidInput
from hq.pagination import NewestFirst, OldestFirst

from . import bulk, selectors, services
from .models import Job, JobEvent
from .redaction import HIDDEN, REDACTED, is_redacted, may_see_payloads
from .serializers import (
    JOB_COLUMNS,
    JOB_RELATED,
    JobEventSerializer,
    JobSerializer,
    JobSubmitSerializer,
    job_json,
)

JOB_FILTERS = [
    OpenApiParameter(name, OpenApiTypes.STR, description=desc) for name, desc in [
        ("handle", "gearmand job handle, exact (e.g. H:box:1234)"),
        ("function", "function name, exact"),
        ("state", "one state or several, comma-separated"),
        ("unique", "unique key, exact"),
        ("worker", "worker client id or address, exact"),
        ("server", "server name"),
        ("submitted_after", "ISO 8601 time"),
        ("submitted_before", "ISO 8601 time"),
        ("q", "handle, unique, function or payload text (substring)"),
        ("retry_of", "the id of a job: the jobs that retry it"),
        ("priority", "high, normal or low"),
        ("background", "true or false"),
    ]
]
WAIT = OpenApiParameter("wait", OpenApiTypes.NUMBER, description=(
    "foreground only: seconds (up to 60) to wait for the result; 201 with it, or 202 when "
    "the wait ran out"))
IDEMPOTENCY = OpenApiParameter(
    "Idempotency-Key", OpenApiTypes.STR, location=OpenApiParameter.HEADER,
    description="the same key again returns the job the first request made")


def _may_see_payloads(request: Request) -> bool:
    """``may_see_payloads`` for a request the permission check has let read: every viewer
    may while ``HQ_VIEWERS_SEE_PAYLOADS`` is on (no second role lookup), else ask."""
    if getattr(settings, "HQ_VIEWERS_SEE_PAYLOADS", True) and request.user is not None \
            and request.user.is_authenticated:
        return True
    return may_see_payloads(request.user)


def _job(request: Request, job: Job, code: int) -> Response:
    return Response(JobSerializer(job, context={"request": request}).data, status=code)


def _wait(request: Request) -> float:
    raw = request.query_params.get("wait", "")
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= services.WAIT_MAX_S:
        raise InvalidInput(f"wait must be a number of seconds from 0 to {services.WAIT_MAX_S}",
                           fields={"wait": [f"0 to {services.WAIT_MAX_S}."]})
    return value


def _key(request: Request) -> str:
    return str(request.headers.get("Idempotency-Key", ""))


@extend_schema(parameters=JOB_FILTERS)
class JobList(generics.ListAPIView[Job]):
    # Rows come straight from .values() (no model instance per job) and are written by
    # jobs.serializers.job_json; whether the requester sees payloads is looked up once.

    serializer_class = JobSerializer
    pagination_class = NewestFirst

    def get_queryset(self) -> QuerySet[Job]:
        self.may_see = _may_see_payloads(self.request)
        params = self.request.query_params
        prepared = selectors.prepared_search(params, payload_search=self.may_see,
                                             columns=JOB_COLUMNS, related=JOB_RELATED)
        if prepared is not None:  # SQL compiled once per shape (hq/prepared.py)
            return prepared  # type: ignore[return-value]
        qs = selectors.search_jobs(params, payload_search=self.may_see)
        return qs.values(*JOB_COLUMNS, **JOB_RELATED)

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        context["may_see_payloads"] = getattr(self, "may_see", None)
        return context

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # ListAPIView.list, with each row written by job_json directly: DRF's list
        # serializer around it only copied the context into a field per row
        rows_of: Any = self.filter_queryset(self.get_queryset())  # .values(): dicts
        page: list[Mapping[str, Any]] | None = self.paginate_queryset(rows_of)
        assert page is not None and self.paginator is not None  # NewestFirst always pages
        hidden = None if self.may_see else HIDDEN
        rows = [job_json(row, REDACTED if is_redacted(row["function"]) else hidden)
                for row in page]
        return self.paginator.get_paginated_response(rows)

    @extend_schema(parameters=[WAIT, IDEMPOTENCY], request=JobSubmitSerializer,
                   responses={201: JobSerializer, 202: JobSerializer,
                              503: OpenApiTypes.OBJECT})
    def post(self, request: Request) -> Response:
        """Submit a job (operator or admin): now, or at ``run_at`` (state ``scheduled``)."""
        body = JobSubmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        done = services.submit(
            function=data["function"], payload=data["payload_bytes"], unique=data["unique"],
            priority=data["priority"], background=data["background"], run_at=data["run_at"],
            wait_s=_wait(request), user=request.user, via="api",
            idempotency_key=_key(request))
        if done.replayed:
            return _job(request, done.job, status.HTTP_200_OK)
        out: dict[str, Any] = dict(JobSerializer(done.job, context={"request": request}).data)
        job = done.job
        if job.background is False and job.state != "scheduled":
            if done.outcome is None:
                return Response(out, status=status.HTTP_202_ACCEPTED)
            if not job.is_finished:  # the tap has not recorded the end yet: say what HQ saw
                out["state"] = "completed" if done.outcome.completed else "failed"
                out["result"], out["result_encoding"] = _text_or_b64(done.outcome.result)
                out["result_size"] = len(done.outcome.result)
                out["error"] = done.outcome.error
        return Response(out, status=status.HTTP_201_CREATED)


class JobDetail(generics.RetrieveAPIView[Job]):
    serializer_class = JobSerializer

    def get_object(self) -> Job:
        return selectors.get_job(self.kwargs["pk"])


class JobEvents(generics.ListAPIView[JobEvent]):
    serializer_class = JobEventSerializer
    pagination_class = OldestFirst

    def get_queryset(self) -> QuerySet[JobEvent]:
        self.job = selectors.get_job(self.kwargs["pk"])
        return selectors.job_events(self.job)

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        job = getattr(self, "job", None)
        if job is not None:
            context["job_function"] = job.function
        return context


def _text_or_b64(data: bytes) -> tuple[str, str]:
    import base64

    try:
        text = data.decode("utf-8")
        if "\0" not in text:
            return text, "utf-8"
    except UnicodeDecodeError:
        pass
    return base64.b64encode(data).decode(), "base64"


class JobRetry(APIView):
    @extend_schema(request=None, parameters=[IDEMPOTENCY], responses={201: JobSerializer})
    def post(self, request: Request, pk: int) -> Response:
        """Submit a finished job again as a new job (``retry_of``: this one); 409 when
        its payload is not stored whole."""
        job = services.retry(job_id=pk, user=request.user, via="api",
                             idempotency_key=_key(request))
        return _job(request, job, status.HTTP_201_CREATED)


class JobCancel(APIView):
    @extend_schema(request=None, responses={200: JobSerializer})
    def post(self, request: Request, pk: int) -> Response:
        """Cancel a queued job (gearmand's ``cancel job``) or one HQ holds for later; 409
        when it is running or finished."""
        job = services.cancel(job_id=pk, user=request.user, via="api")
        return _job(request, job, status.HTTP_200_OK)


class BulkRequest(serializers.Serializer[Any]):
    action = serializers.ChoiceField(choices=["retry", "cancel", "discard"])
    filter = serializers.DictField(child=serializers.CharField(allow_blank=True),
                                   required=False, default=dict)
    dry_run = serializers.BooleanField(required=False, default=False)


class BulkState(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    action = serializers.CharField()
    state = serializers.ChoiceField(choices=["running", "done", "failed"])
    total = serializers.IntegerField()
    done = serializers.IntegerField()
    failed = serializers.IntegerField()
    # the field shadows Serializer.errors only for the stubs (DRF moves declared fields)
    errors = serializers.ListField(child=serializers.DictField())  # type: ignore[assignment]
    filter = serializers.DictField()


class JobBulk(APIView):
    @extend_schema(request=BulkRequest, responses={200: OpenApiTypes.OBJECT, 202: BulkState})
    def post(self, request: Request) -> Response:
        """Retry or cancel every job the filter matches, in the background (202 with the
        bulk action's id; follow it at /api/v1/bulk/{id}/); dry_run: 200 with the count."""
        body = BulkRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        action, count = bulk.start(action=data["action"], filter=data["filter"],
                                   dry_run=data["dry_run"], user=request.user, via="api")
        if action is None:
            return Response({"count": count}, status=status.HTTP_200_OK)
        return Response({"id": action.pk, "count": count}, status=status.HTTP_202_ACCEPTED)


class BulkDetail(APIView):
    @extend_schema(responses={200: BulkState})
    def get(self, request: Request, pk: int) -> Response:
        """How a bulk action is going: ``done`` and ``failed`` of ``total``."""
        return Response(bulk.as_json(bulk.get(pk)))
