"""``/api/v1/tokens/``: list (yours; an admin sees all), create (shown once), revoke."""

from __future__ import annotations

from typing import cast

from django.contrib.auth.models import AbstractUser
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from . import audit, selectors, services
from .errors import NotFound
from .models import ApiToken, AuditEntry
from .pagination import NewestFirst
from .permissions import AdminOnly, ViewerForOwnThings
from .serializers import IssuedTokenSerializer, NewTokenSerializer, TokenSerializer


class TokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
                   viewsets.GenericViewSet[ApiToken]):
    serializer_class = TokenSerializer
    permission_classes = [ViewerForOwnThings]
    pagination_class = NewestFirst
    queryset = ApiToken.objects.none()  # for the schema only (the id's type); see get_queryset

    def get_queryset(self) -> QuerySet[ApiToken]:
        return selectors.tokens_visible_to(cast(AbstractUser, self.request.user))

    def get_object(self) -> ApiToken:
        pk = str(self.kwargs["pk"])
        token = self.get_queryset().filter(pk=int(pk)).first() if _is_id(pk) else None
        if token is None:
            raise NotFound(f"No token with id {pk}.")
        return token

    @extend_schema(request=NewTokenSerializer, responses={201: IssuedTokenSerializer})
    def create(self, request: Request) -> Response:
        body = NewTokenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        token, raw = services.create_token(user=cast(AbstractUser, request.user),
                                           **body.validated_data)
        data = IssuedTokenSerializer(token, context={"raw": raw}).data
        return Response(data, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, pk: str) -> Response:
        if not _is_id(pk):
            raise NotFound(f"No token with id {pk}.")
        services.revoke_token(actor=cast(AbstractUser, request.user), token_id=int(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _is_id(text: str) -> bool:
    return text.isdigit() and len(text) < 19


class AuditSerializer(serializers.ModelSerializer[AuditEntry]):
    user = serializers.CharField(source="username", read_only=True)

    class Meta:
        model = AuditEntry
        fields = ["id", "at", "user", "via", "action", "target", "detail"]


AUDIT_FILTERS = [
    OpenApiParameter(name, OpenApiTypes.STR, description=desc) for name, desc in [
        ("user", "user name, exact"), ("via", "ui, api, cli, system or policy"),
        ("action", "submit, schedule, retry, cancel, submit_scheduled…"),
        ("target", "e.g. 'job 42', exact"), ("after", "ISO 8601 time"),
        ("before", "ISO 8601 time"),
    ]
]


@extend_schema(parameters=AUDIT_FILTERS)
class AuditList(generics.ListAPIView[AuditEntry]):
    """The audit log, newest first (admins only): every action on jobs, who took it and
    through which door, and how it went."""

    serializer_class = AuditSerializer
    permission_classes = [AdminOnly]
    pagination_class = NewestFirst

    def get_queryset(self) -> QuerySet[AuditEntry]:
        params = {k: str(self.request.query_params.get(k, "")) for k in audit.FILTERS}
        return audit.entries(params)
