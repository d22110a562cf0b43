"""REST endpoints for jobs: thin, they call selectors and services."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.request import Request

from hq.pagination import NewestFirst, OldestFirst

from . import selectors
from .models import Job, JobEvent
from .redaction import may_see_payloads
from .serializers import JOB_COLUMNS, JOB_RELATED, JobEventSerializer, JobSerializer

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
    ]
]


def _may_see_payloads(request: Request) -> bool:
    """``may_see_payloads`` for a request the permission check has let read: every viewer
    may while ``HQ_VIEWERS_SEE_PAYLOADS`` is on (no second role lookup), else ask."""
    if getattr(settings, "HQ_VIEWERS_SEE_PAYLOADS", True) and request.user is not None \
            and request.user.is_authenticated:
        return True
    return may_see_payloads(request.user)


@extend_schema(parameters=JOB_FILTERS)
class JobList(generics.ListAPIView[Job]):
    # Rows come straight from .values() (no model instance per job) and are written by
    # jobs.serializers.job_json; whether the requester sees payloads is looked up once.

    serializer_class = JobSerializer
    pagination_class = NewestFirst

    def get_queryset(self) -> QuerySet[Job]:
        self.may_see = _may_see_payloads(self.request)
        qs = selectors.search_jobs(self.request.query_params, payload_search=self.may_see)
        return qs.values(*JOB_COLUMNS, **JOB_RELATED)

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        context["may_see_payloads"] = getattr(self, "may_see", None)
        return context


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
