"""``/api/v1/retry-policies/`` CRUD (viewers read, operators write) and
``POST /api/v1/jobs/{id}/discard/``: thin, over :mod:`.policies` and ``jobs.services``."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hq.pagination import CheckedCursorPagination

from .. import services
from ..models import RetryPolicy
from ..serializers import JobSerializer
from . import policies


class RetryPolicySerializer(serializers.ModelSerializer[RetryPolicy]):
    retry_on = serializers.ListField(child=serializers.ChoiceField(choices=policies.ENDS))

    class Meta:
        model = RetryPolicy
        fields = ["id", "function", "max_attempts", "backoff_base_s", "backoff_max_s",
                  "jitter", "retry_on", "enabled", "order", "created_at", "updated_at"]


class ByOrder(CheckedCursorPagination):
    ordering = ("order", "id")
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 500


def _body(request: Request) -> dict[str, Any]:
    data = request.data
    if not isinstance(data, dict):
        from hq.errors import InvalidInput

        raise InvalidInput("expected a JSON object")
    return {k: v for k, v in data.items() if k not in ("id", "created_at", "updated_at")}


class RetryPolicyViewSet(viewsets.ModelViewSet[RetryPolicy]):
    """Retry policies, first match (by ``order``) wins."""

    serializer_class = RetryPolicySerializer
    pagination_class = ByOrder
    queryset = RetryPolicy.objects.all()

    def get_queryset(self) -> QuerySet[RetryPolicy]:
        return RetryPolicy.objects.all()

    def get_object(self) -> RetryPolicy:
        return policies.get(self.kwargs["pk"])

    def _out(self, policy: RetryPolicy, code: int) -> Response:
        return Response(RetryPolicySerializer(policy).data, status=code)

    @extend_schema(request=RetryPolicySerializer, responses={201: RetryPolicySerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        policy = policies.create(data=_body(request), user=request.user, via="api")
        return self._out(policy, status.HTTP_201_CREATED)

    @extend_schema(request=RetryPolicySerializer, responses={200: RetryPolicySerializer})
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        policy = policies.update(policy_id=self.get_object().pk, data=_body(request),
                                 user=request.user, via="api",
                                 partial=bool(kwargs.get("partial")))
        return self._out(policy, status.HTTP_200_OK)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        policies.delete(policy_id=self.get_object().pk, user=request.user, via="api")
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobDiscard(APIView):
    @extend_schema(request=None, responses={200: JobSerializer})
    def post(self, request: Request, pk: int) -> Response:
        """Take a dead job off the dead-letter list (it stays in history); 409 when it is
        not dead."""
        job = services.discard(job_id=pk, user=request.user, via="api")
        return Response(JobSerializer(job, context={"request": request}).data,
                        status=status.HTTP_200_OK)
