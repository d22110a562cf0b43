"""``/api/v1/schedules/`` CRUD (viewers read, operators write): thin, over
``jobs.schedules.services``."""

from __future__ import annotations

import base64
from datetime import UTC
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from hq.errors import InvalidInput, NotFound
from hq.pagination import CheckedCursorPagination

from ..models import Schedule
from ..serializers import encode
from . import services


def _time(value: Any) -> str:
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class ScheduleSerializer(serializers.ModelSerializer[Schedule]):
    payload = serializers.SerializerMethodField()
    payload_encoding = serializers.SerializerMethodField()
    next_runs = serializers.SerializerMethodField(
        help_text="The next 5 ticks (UTC), or [] when the schedule is disabled.")
    last_job = serializers.IntegerField(source="last_job_id", read_only=True, allow_null=True)

    class Meta:
        model = Schedule
        fields = ["id", "name", "function", "payload", "payload_encoding", "unique",
                  "priority", "cron", "timezone", "enabled", "overlap", "next_runs",
                  "last_job", "last_run_at", "created_at", "updated_at"]

    def get_payload(self, schedule: Schedule) -> str | None:
        return encode(schedule.payload)[0]

    def get_payload_encoding(self, schedule: Schedule) -> str | None:
        return encode(schedule.payload)[1]

    def get_next_runs(self, schedule: Schedule) -> list[str]:
        if not schedule.enabled:
            return []
        return [_time(t) for t in services.next_runs(schedule.cron, schedule.timezone)]


class ScheduleInput(serializers.Serializer[Any]):
    # what a POST/PUT/PATCH may carry; the service checks the values
    name = serializers.CharField(required=False)
    function = serializers.CharField(required=False, trim_whitespace=False)
    payload = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    payload_b64 = serializers.CharField(required=False, allow_blank=True)
    unique = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    priority = serializers.CharField(required=False)
    cron = serializers.CharField(required=False)
    timezone = serializers.CharField(required=False)
    enabled = serializers.BooleanField(required=False)
    overlap = serializers.CharField(required=False)


def _data(request: Request, *, partial: bool) -> dict[str, Any]:
    body = ScheduleInput(data=request.data, partial=partial)
    body.is_valid(raise_exception=True)
    data = dict(body.validated_data)
    if "payload_b64" in data:
        if "payload" in data:
            raise InvalidInput("give payload or payload_b64, not both",
                               fields={"payload_b64": ["Not both."]})
        try:
            data["payload"] = base64.b64decode(data.pop("payload_b64"), validate=True)
        except ValueError:
            raise InvalidInput("payload_b64 is not valid base64",
                               fields={"payload_b64": ["Not valid base64."]}) from None
    return data


class ByName(CheckedCursorPagination):
    ordering = ("name", "id")
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 500


class ScheduleViewSet(viewsets.ModelViewSet[Schedule]):
    serializer_class = ScheduleSerializer
    pagination_class = ByName
    queryset = Schedule.objects.all()

    def get_queryset(self) -> QuerySet[Schedule]:
        return Schedule.objects.all()

    def get_object(self) -> Schedule:
        pk = str(self.kwargs["pk"])
        schedule = Schedule.objects.filter(pk=int(pk)).first() if pk.isdigit() and \
            len(pk) < 19 else None
        if schedule is None:
            raise NotFound(f"No schedule with id {pk}.")
        return schedule

    def _out(self, schedule: Schedule, code: int) -> Response:
        return Response(ScheduleSerializer(schedule).data, status=code)

    @extend_schema(request=ScheduleInput, responses={201: ScheduleSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        schedule = services.create(data=_data(request, partial=False), user=request.user,
                                   via="api")
        return self._out(schedule, status.HTTP_201_CREATED)

    @extend_schema(request=ScheduleInput, responses={200: ScheduleSerializer})
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        partial = bool(kwargs.get("partial"))
        data = _data(request, partial=partial)
        if not partial:
            missing = [f for f in ("name", "function", "cron") if not data.get(f)]
            if missing:
                raise InvalidInput(f"{missing[0]} is required",
                                   fields={f: ["This field is required."] for f in missing})
        schedule = services.update(schedule_id=self.get_object().pk, data=data,
                                   user=request.user, via="api")
        return self._out(schedule, status.HTTP_200_OK)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.delete(schedule_id=self.get_object().pk, user=request.user, via="api")
        return Response(status=status.HTTP_204_NO_CONTENT)
