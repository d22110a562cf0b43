"""``/api/v1/tokens/``: list (yours; an admin sees all), create (shown once), revoke."""

from __future__ import annotations

from typing import cast

from django.contrib.auth.models import AbstractUser
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from . import selectors, services
from .errors import NotFound
from .models import ApiToken
from .pagination import NewestFirst
from .permissions import ViewerForOwnThings
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
