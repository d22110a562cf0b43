"""JSON shapes of the v1 REST contract (field names are fixed: scripts depend on them)."""

from __future__ import annotations

import base64
from typing import Any

from rest_framework import serializers

from .models import Job, JobEvent
from .redaction import is_redacted, withheld


def _withheld(serializer: serializers.Serializer[Any], function: str | None) -> str | None:
    """Redacted (HQ_REDACT), hidden from this viewer, or None. Without a request in the
    context (a job rendered for a script or a message) only redaction applies."""
    request = serializer.context.get("request")
    if request is None:
        return "redacted" if is_redacted(function) else None
    cache: dict[str | None, str | None] | None = getattr(serializer, "_withheld_cache", None)
    if cache is None:  # one role lookup per serializer, not one per row
        cache = {}
        serializer._withheld_cache = cache  # type: ignore[attr-defined]
    if function not in cache:
        cache[function] = withheld(function, request.user)
    return cache[function]


def encode(value: bytes | str | None) -> tuple[str | None, str | None]:
    """(text, encoding): text as is, bytes as base64."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, "utf-8"
    return base64.b64encode(value).decode(), "base64"


class JobSerializer(serializers.ModelSerializer[Job]):
    server = serializers.CharField(source="server.name")
    priority = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()
    payload = serializers.SerializerMethodField()
    payload_encoding = serializers.SerializerMethodField()
    payload_truncated = serializers.BooleanField(read_only=True)
    result = serializers.SerializerMethodField()
    result_encoding = serializers.SerializerMethodField()
    result_truncated = serializers.BooleanField(read_only=True)
    boot = serializers.CharField(source="boot.token", default=None)
    payload_redacted = serializers.SerializerMethodField()
    payload_hidden = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id", "server", "boot", "handle", "function", "unique", "priority", "background",
            "state", "submitted_at", "scheduled_for", "started_at", "finished_at", "wait_ms",
            "runtime_ms", "attempts", "worker", "progress", "payload", "payload_encoding",
            "payload_size", "payload_truncated", "result", "result_encoding", "result_size",
            "result_truncated", "error", "clients", "retry_of", "payload_redacted",
            "payload_hidden",
        ]

    def get_priority(self, job: Job) -> str | None:
        return job.priority or None

    def get_progress(self, job: Job) -> dict[str, int] | None:
        if not job.progress_denominator:
            return None
        return {"numerator": job.progress_numerator or 0,
                "denominator": job.progress_denominator}

    def get_payload_redacted(self, job: Job) -> bool:
        """HQ_REDACT: payload and result are not stored for this function (only sizes)."""
        return _withheld(self, job.function) == "redacted"

    def get_payload_hidden(self, job: Job) -> bool:
        """HQ_VIEWERS_SEE_PAYLOADS is off and you are a viewer."""
        return _withheld(self, job.function) == "hidden"

    def _shown(self, job: Job, value: bytes | str | None) -> tuple[str | None, str | None]:
        return (None, None) if _withheld(self, job.function) else encode(value)

    def get_payload(self, job: Job) -> str | None:
        return self._shown(job, job.payload)[0]

    def get_payload_encoding(self, job: Job) -> str | None:
        return self._shown(job, job.payload)[1]

    def get_result(self, job: Job) -> str | None:
        return self._shown(job, job.result)[0]

    def get_result_encoding(self, job: Job) -> str | None:
        return self._shown(job, job.result)[1]


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
