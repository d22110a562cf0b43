"""JSON shapes of the v1 REST contract (field names are fixed: scripts depend on them)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import F, OuterRef
from rest_framework import serializers

from .models import Job, JobEvent
from .redaction import HIDDEN, REDACTED, is_redacted, may_see_payloads


def _withheld(serializer: serializers.Serializer[Any], function: str | None) -> str | None:
    """Redacted (HQ_REDACT), hidden from this viewer, or None. Without a request in the
    context (a job rendered for a script or a message) only redaction applies. Whether the
    requester may see payloads is asked once per serializer (one role lookup), or taken from
    the context's ``may_see_payloads`` when the view already knows."""
    if is_redacted(function):
        return REDACTED
    request = serializer.context.get("request")
    if request is None:
        return None
    see: bool | None = serializer.context.get("may_see_payloads")
    if see is None:
        see = getattr(serializer, "_may_see", None)
    if see is None:
        see = may_see_payloads(request.user)
        serializer._may_see = see  # type: ignore[attr-defined]
    return None if see else HIDDEN


def encode(value: bytes | str | None) -> tuple[str | None, str | None]:
    """(text, encoding): text as is, bytes as base64."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, "utf-8"
    return base64.b64encode(value).decode(), "base64"


#: the columns a job's JSON is made of: list endpoints read them with ``.values()``, so no
#: model instance is built per row (``server``/``boot`` through their foreign keys)
JOB_COLUMNS = (
    "id", "handle", "function", "unique", "priority", "background", "state", "submitted_at",
    "scheduled_for", "started_at", "finished_at", "wait_ms", "runtime_ms", "attempts",
    "worker", "progress_numerator", "progress_denominator", "payload_text", "payload_bin",
    "payload_size", "result_text", "result_bin", "result_size", "error", "clients",
    "retry_of_id", "dead", "death_count",
)
JOB_RELATED = {
    "server_name": F("server__name"), "boot_token": F("boot__token"),
    # the jobs that retry this one (one probe of the partial index job_retry_of per row)
    "retried_by": ArraySubquery(
        Job.objects.filter(retry_of=OuterRef("pk")).order_by("id").values("id")),
}


def job_values(job: Job) -> dict[str, Any]:
    """A job instance as the row ``.values(*JOB_COLUMNS, **JOB_RELATED)`` gives."""
    row = {name: getattr(job, name) for name in JOB_COLUMNS}
    row["server_name"] = job.server.name
    row["boot_token"] = job.boot.token if job.boot is not None else None
    row["retried_by"] = list(Job.objects.filter(retry_of=job.pk).order_by("id")
                             .values_list("id", flat=True))
    return row


def _time(value: datetime | None) -> str | None:
    """A time as DRF's ``DateTimeField`` writes it (UTC, ``Z``)."""
    if not value:
        return None
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _blob(text: str | None, raw: bytes | memoryview | None, size: int,
          shown: bool) -> tuple[str | None, str | None, bool]:
    """(value, encoding, truncated) of a payload or result stored as text or bytes."""
    value: str | bytes | None = text
    if text is not None:
        stored = len(text.encode())
    else:
        value = bytes(raw) if raw is not None else None
        stored = len(value) if value is not None else 0
    if not shown:
        return None, None, size > stored
    return (*encode(value), size > stored)


def job_json(row: Mapping[str, Any], why_withheld: str | None) -> dict[str, Any]:
    """The v1 JSON of one job from its row (see :data:`JOB_COLUMNS`): what
    :class:`JobSerializer` writes, field for field, without DRF's per-field machinery.
    ``why_withheld``: ``"redacted"``, ``"hidden"`` or None (payload and result shown)."""
    shown = why_withheld is None
    payload, payload_encoding, payload_truncated = _blob(
        row["payload_text"], row["payload_bin"], row["payload_size"], shown)
    result, result_encoding, result_truncated = _blob(
        row["result_text"], row["result_bin"], row["result_size"], shown)
    denominator = row["progress_denominator"]
    return {
        "id": row["id"], "server": row["server_name"], "boot": row["boot_token"],
        "handle": row["handle"], "function": row["function"], "unique": row["unique"],
        "priority": row["priority"] or None, "background": row["background"],
        "state": row["state"], "submitted_at": _time(row["submitted_at"]),
        "scheduled_for": _time(row["scheduled_for"]), "started_at": _time(row["started_at"]),
        "finished_at": _time(row["finished_at"]), "wait_ms": row["wait_ms"],
        "runtime_ms": row["runtime_ms"], "attempts": row["attempts"], "worker": row["worker"],
        "progress": {"numerator": row["progress_numerator"] or 0, "denominator": denominator}
        if denominator else None,
        "payload": payload, "payload_encoding": payload_encoding,
        "payload_size": row["payload_size"], "payload_truncated": payload_truncated,
        "result": result, "result_encoding": result_encoding,
        "result_size": row["result_size"], "result_truncated": result_truncated,
        "error": row["error"], "clients": row["clients"], "retry_of": row["retry_of_id"],
        "retried_by": list(row.get("retried_by") or ()),
        "payload_redacted": why_withheld == REDACTED, "payload_hidden": why_withheld == HIDDEN,
        "dead": row["dead"], "death_count": row["death_count"],
    }


def _text() -> serializers.CharField:
    return serializers.CharField(read_only=True, allow_null=True)


class JobSerializer(serializers.ModelSerializer[Job]):
    # A job (a Job or a row of JOB_COLUMNS) as the v1 JSON. The fields declared here
    # describe the shape for the OpenAPI schema (a docstring would land in it);
    # to_representation writes it with job_json in one pass.

    server = serializers.CharField(source="server.name")
    priority = _text()
    progress = serializers.DictField(child=serializers.IntegerField(), read_only=True,
                                     allow_null=True)
    payload = _text()
    payload_encoding = _text()
    payload_truncated = serializers.BooleanField(read_only=True)
    result = _text()
    result_encoding = _text()
    result_truncated = serializers.BooleanField(read_only=True)
    boot = serializers.CharField(source="boot.token", default=None)
    payload_redacted = serializers.BooleanField(
        read_only=True,
        help_text="HQ_REDACT: payload and result are not stored for this function (only sizes).")
    payload_hidden = serializers.BooleanField(
        read_only=True, help_text="HQ_VIEWERS_SEE_PAYLOADS is off and you are a viewer.")
    retried_by = serializers.ListField(
        child=serializers.IntegerField(), read_only=True,
        help_text="Ids of the jobs that retried this one (their retry_of is this job).")

    dead = serializers.BooleanField(
        read_only=True, help_text="The retry chain ended in failure and nobody requeued or "
        "discarded it (a dead letter).")
    death_count = serializers.IntegerField(
        read_only=True, help_text="Workers that died holding it (across its retry chain).")

    class Meta:
        model = Job
        fields = [
            "id", "server", "boot", "handle", "function", "unique", "priority", "background",
            "state", "submitted_at", "scheduled_for", "started_at", "finished_at", "wait_ms",
            "runtime_ms", "attempts", "worker", "progress", "payload", "payload_encoding",
            "payload_size", "payload_truncated", "result", "result_encoding", "result_size",
            "result_truncated", "error", "clients", "retry_of", "retried_by",
            "payload_redacted", "payload_hidden", "dead", "death_count",
        ]

    def to_representation(self, instance: Job | Mapping[str, Any]) -> dict[str, Any]:
        row = job_values(instance) if isinstance(instance, Job) else instance
        return job_json(row, _withheld(self, row["function"]))


class JobEventSerializer(serializers.ModelSerializer[JobEvent]):
    # DRF's serializer metaclass moves declared fields into ``_declared_fields``, so this
    # field does not shadow ``Serializer.data`` at runtime; the stubs cannot express that
    data = serializers.SerializerMethodField()  # type: ignore[assignment]
    data_encoding = serializers.SerializerMethodField()

    class Meta:
        model = JobEvent
        fields = ["id", "at", "kind", "worker", "conn", "numerator", "denominator", "data",
                  "data_encoding", "size", "detail"]

    def _shown(self, event: JobEvent) -> tuple[str | None, str | None]:
        """Event data of a job whose payloads this requester may not see is left out (the
        view puts the job's function in the context as ``job_function``)."""
        if "job_function" in self.context and _withheld(self, self.context["job_function"]):
            return None, None
        return encode(event.data)

    def get_data(self, event: JobEvent) -> str | None:
        return self._shown(event)[0]

    def get_data_encoding(self, event: JobEvent) -> str | None:
        return self._shown(event)[1]


def job_to_dict(job: Job) -> dict[str, Any]:
    return dict(JobSerializer(job).data)


class JobSubmitSerializer(serializers.Serializer[Any]):
    # POST /api/v1/jobs/: a job to submit now or at run_at (the payload as text, or as
    # base64 in payload_b64 for bytes)
    function = serializers.CharField(max_length=255, trim_whitespace=False)
    payload = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False,
                                    default="")
    payload_b64 = serializers.CharField(required=False, allow_blank=True,
                                        trim_whitespace=False, default=None, allow_null=True)
    unique = serializers.CharField(required=False, allow_blank=True, max_length=255,
                                   trim_whitespace=False, default="")
    priority = serializers.ChoiceField(choices=["high", "normal", "low"], default="normal")
    background = serializers.BooleanField(default=True)
    run_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        raw_b64 = attrs.pop("payload_b64", None)
        text = attrs.pop("payload", "")
        if raw_b64 is not None and text:
            raise serializers.ValidationError(
                {"payload_b64": ["Give payload (text) or payload_b64, not both."]})
        if raw_b64 is not None:
            try:
                attrs["payload_bytes"] = base64.b64decode(raw_b64, validate=True)
            except (ValueError, TypeError):
                raise serializers.ValidationError(
                    {"payload_b64": ["Not valid base64."]}) from None
        else:
            if "\0" in text:
                raise serializers.ValidationError(
                    {"payload": ["A NUL character: send bytes as payload_b64."]})
            attrs["payload_bytes"] = text.encode()
        return attrs
