"""JSON shapes of ``/api/v1/tokens/`` (names fixed by the v1 contract)."""

from __future__ import annotations

from rest_framework import serializers

from .models import ApiToken


class TokenSerializer(serializers.ModelSerializer[ApiToken]):
    user = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "user", "prefix", "created_at", "last_used_at", "expires_at"]
        read_only_fields = fields


class NewTokenSerializer(serializers.Serializer[None]):
    name = serializers.CharField(max_length=100, allow_blank=True, default="")
    expires_at = serializers.DateTimeField(allow_null=True, required=False, default=None)


class IssuedTokenSerializer(TokenSerializer):
    """The answer to a create: the token itself, this once."""

    token = serializers.SerializerMethodField()

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]
        read_only_fields = fields

    def get_token(self, token: ApiToken) -> str:
        return str(self.context["raw"])
