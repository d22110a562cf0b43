"""JSON shapes for alert rules, alerts and channels (names fixed by the v1 contract)."""

from __future__ import annotations

from typing import Any

import apprise
from rest_framework import serializers

from jobs.models import Server

from .metric_values import PER_SERVER
from .models import OPERATORS, Alert, Channel, Metric, Rule, Severity


class StrictFloat(serializers.FloatField):
    """A number, not a string that looks like one: ``"500"`` is refused."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictString(serializers.CharField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string (a glob such as resize_*).")
        return super().to_internal_value(data)


class RuleSerializer(serializers.ModelSerializer[Rule]):
    metric = serializers.ChoiceField(choices=Metric.choices)
    operator = serializers.ChoiceField(choices=list(OPERATORS))
    severity = serializers.ChoiceField(choices=Severity.choices, default=Severity.WARNING)
    function = StrictString(max_length=255, default="*")
    threshold = StrictFloat()
    for_seconds = serializers.IntegerField(min_value=0, max_value=7 * 86400, default=0)
    window_seconds = serializers.IntegerField(min_value=60, max_value=7 * 86400, default=300)
    server = serializers.SlugRelatedField(slug_field="name", queryset=Server.objects.all(),
                                          allow_null=True, required=False)
    channels = serializers.PrimaryKeyRelatedField(many=True, queryset=Channel.objects.all(),
                                                  required=False)

    class Meta:
        model = Rule
        fields = ["id", "name", "metric", "function", "server", "operator", "threshold",
                  "for_seconds", "window_seconds", "severity", "channels", "enabled",
                  "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_function(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("Must not be empty: use * for every function.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """A per-server metric (``server_down``) has no queue: its function stays ``*``."""
        metric = attrs.get("metric", self.instance.metric if self.instance else None)
        function = attrs.get("function", self.instance.function if self.instance else "*")
        if metric in PER_SERVER and function != "*":
            raise serializers.ValidationError({"function": [
                f"{metric} is measured per server, not per function: use * "
                "(choose a server to watch only one)."]})
        return attrs


class AlertSerializer(serializers.ModelSerializer[Alert]):
    rule = serializers.SerializerMethodField()
    server = serializers.CharField(source="server.name", default=None)
    acknowledged_by = serializers.CharField(source="acknowledged_by.username", default=None)

    class Meta:
        model = Alert
        fields = ["id", "rule", "function", "server", "state", "value", "peak", "started_at",
                  "resolved_at", "acknowledged_by", "acknowledged_at", "silenced_until"]

    def get_rule(self, alert: Alert) -> dict[str, Any]:
        r = alert.rule
        return {"id": r.id, "name": r.name, "metric": r.metric, "severity": r.severity}


class AlertDetailSerializer(AlertSerializer):
    class Meta(AlertSerializer.Meta):
        fields = [*AlertSerializer.Meta.fields, "snapshot"]


class AckSerializer(serializers.Serializer[None]):
    silence_seconds = serializers.IntegerField(min_value=0, max_value=7 * 86400, default=0)


class ChannelSerializer(serializers.ModelSerializer[Channel]):
    class Meta:
        model = Channel
        fields = ["id", "name", "url", "enabled", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_url(self, value: str) -> str:
        value = value.strip()
        if not apprise.Apprise().add(value):
            raise serializers.ValidationError(
                "Not an apprise URL apprise can use (e.g. mailto://…, slack://…, json://…).")
        return value
