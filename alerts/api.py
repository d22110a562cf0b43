"""REST endpoints for alerts: rules and channels CRUD, alert history, ack, channel test."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from hq.errors import NotFound
from hq.pagination import NewestFirst
from hq.permissions import AdminOnly

from . import selectors, services
from .models import Alert, Channel, Rule
from .serializers import (
    AckSerializer,
    AlertDetailSerializer,
    AlertSerializer,
    ChannelSerializer,
    RuleSerializer,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class RuleViewSet(viewsets.ModelViewSet[Rule]):
    serializer_class = RuleSerializer
    pagination_class = NewestFirst

    def get_queryset(self) -> QuerySet[Rule]:
        return selectors.rules()


@extend_schema(parameters=[OpenApiParameter("state", str, enum=["firing", "resolved"])])
class AlertViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                   viewsets.GenericViewSet[Alert]):
    pagination_class = NewestFirst

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Alert]]:
        return AlertDetailSerializer if self.action == "retrieve" else AlertSerializer

    def get_queryset(self) -> QuerySet[Alert]:
        return selectors.alerts(state=self.request.query_params.get("state") or "")

    @extend_schema(request=AckSerializer, responses=AlertSerializer)
    @action(detail=True, methods=["post"])
    def ack(self, request: Request, pk: str) -> Response:
        body = AckSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        if not pk.isdigit():
            raise NotFound(f"No alert with id {pk}.")
        user = cast("User", request.user)  # the permission class let only operators in
        alert = services.acknowledge(alert_id=int(pk), user=user,
                                     silence_s=body.validated_data["silence_seconds"])
        return Response(AlertSerializer(alert).data)


class ChannelViewSet(viewsets.ModelViewSet[Channel]):
    serializer_class = ChannelSerializer
    permission_classes = [AdminOnly]
    pagination_class = NewestFirst
    queryset = Channel.objects.all()

    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str) -> Response:
        channel = self.get_object()
        _note, result = services.test_channel(channel=channel)
        code = status.HTTP_200_OK if result.ok else status.HTTP_502_BAD_GATEWAY
        return Response({"ok": result.ok, "error": result.error or None}, status=code)
