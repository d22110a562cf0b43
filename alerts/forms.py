"""The web forms for rules and channels.

They only render and carry the fields: every rule about what is valid lives in
``alerts.serializers`` and runs from :meth:`_SerializerForm.clean`, so the web page and
``/api/v1/`` refuse the same input with the same words, and there is one place to change
them. The form's own fields accept anything (:class:`Raw`); :meth:`RuleForm.payload`
turns the posted strings into the JSON-like values the API would receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from django import forms
from django.db import models
from rest_framework import serializers

from jobs.models import Server

from .metric_values import WINDOWED
from .models import OPERATORS, Channel, Metric, Rule, Severity
from .serializers import ChannelSerializer, RuleSerializer

#: what the threshold means for each metric, shown under the field for the chosen one
THRESHOLD_HINTS = {
    "queue_depth": "Jobs waiting, e.g. 500",
    "oldest_queued_age": "Seconds the oldest queued job has waited",
    "failure_rate": "A fraction of finished jobs: 0.05 = 5 %",
    "runtime_p95": "Milliseconds",
    "workers": "Connected workers: “< 1” means none",
    "running_too_long": "Seconds one job has been running",
    "stranded": "Queued jobs no connected worker can do: “> 0”",
    "drain_time": "Seconds to empty the queue at the recent pace",
    "tap_health": "1 while the server's tap records, 0 when it does not (stale, writer dead, "
                  "Postgres unreachable, lagging, spool filling): “< 1” with function *",
    "server_down": "Seconds gearmand has not answered HQ's admin poll; 0 while it answers. "
                   "Down after 2 failed polls or 2 poll intervals without an answer: “> 0” "
                   "at once, “> 60” after a minute. Per server: the function glob does not "
                   "apply (keep *; choose a server to watch only one)",
    "time_to_complete_p95": "Milliseconds from submit to finish (waiting, requeues and "
                            "running), p95 of the jobs that finished in the window",
    "dead_letters": "Jobs of the function whose retry policy ran out (dead letters still on "
                    "the list) that failed in the window: “> 0”",
    "job_of_death": "Dead letters whose runs killed HQ_JOB_OF_DEATH workers (default 3): "
                    "“> 0”",
}


class Raw(forms.Field):
    """A field that passes the widget's value on untouched: the serializer judges it."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)


M = TypeVar("M", bound=models.Model)


class _SerializerForm(forms.Form, Generic[M]):
    serializer_class: type[serializers.ModelSerializer[M]]

    def __init__(self, *args: Any, instance: M | None = None, **kwargs: Any) -> None:
        self.instance = instance
        self._serializer: serializers.ModelSerializer[M] | None = None
        super().__init__(*args, **kwargs)

    def payload(self) -> dict[str, Any]:
        raise NotImplementedError

    def clean(self) -> dict[str, Any]:
        serializer = self.serializer_class(self.instance, data=self.payload())
        if not serializer.is_valid():
            for name, messages in serializer.errors.items():
                field = name if name in self.fields else None
                for message in messages if isinstance(messages, list) else [messages]:
                    self.add_error(field, str(message))
        self._serializer = serializer
        return self.cleaned_data

    def save(self) -> M:
        assert self._serializer is not None and not self.errors
        return self._serializer.save()


def _number(raw: Any) -> Any:
    """"500" → 500.0 as the API would get it in JSON; anything else stays for the serializer
    to refuse in its own words."""
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            return raw
    return raw


class RuleForm(_SerializerForm[Rule]):
    serializer_class = RuleSerializer

    name = Raw(widget=forms.TextInput(attrs={
        "placeholder": "e.g. Resize queue backed up", "autocomplete": "off", "maxlength": 200}))
    metric = Raw(widget=forms.Select(choices=Metric.choices))
    function = Raw(initial="*", widget=forms.TextInput(attrs={
        "placeholder": "*", "autocomplete": "off", "spellcheck": "false", "class": "mono"}))
    server = Raw(widget=forms.Select())
    operator = Raw(initial=">", widget=forms.Select(choices=[(k, k) for k in OPERATORS]))
    threshold = Raw(widget=forms.TextInput(attrs={
        "inputmode": "decimal", "autocomplete": "off", "placeholder": "500"}))
    for_seconds = Raw(initial=0, widget=forms.NumberInput(attrs={"min": 0, "step": 1}))
    window_seconds = Raw(initial=300, widget=forms.NumberInput(attrs={"min": 60, "step": 1}))
    severity = Raw(initial=Severity.WARNING, widget=forms.Select(choices=Severity.choices))
    channels = Raw(widget=forms.CheckboxSelectMultiple())
    enabled = Raw(initial=True, widget=forms.CheckboxInput())

    def __init__(self, *args: Any, instance: Rule | None = None, **kwargs: Any) -> None:
        if instance is not None and "initial" not in kwargs:
            kwargs["initial"] = {
                "name": instance.name, "metric": instance.metric, "function": instance.function,
                "server": instance.server.name if instance.server else "",
                "operator": instance.operator, "threshold": f"{instance.threshold:g}",
                "for_seconds": instance.for_seconds, "window_seconds": instance.window_seconds,
                "severity": instance.severity, "enabled": instance.enabled,
                "channels": [str(pk) for pk in instance.channels.values_list("pk", flat=True)],
            }
        super().__init__(*args, instance=instance, **kwargs)
        servers = list(Server.objects.order_by("name").values_list("name", flat=True))
        self.fields["server"].widget.choices = [("", "Every server"), *((s, s) for s in servers)]
        self.channel_list = list(Channel.objects.order_by("name"))
        self.fields["channels"].widget.choices = [(str(c.pk), c.name) for c in self.channel_list]

    @classmethod
    def initial_from(cls, params: Mapping[str, str]) -> dict[str, Any]:
        """A new rule prefilled from the query string (the queue page's "Alert on this
        queue" sends ``?metric=queue_depth&function=resize``); unknown keys are ignored."""
        keep = ("name", "metric", "function", "server", "operator", "threshold",
                "for_seconds", "window_seconds", "severity")
        initial: dict[str, Any] = {k: params[k] for k in keep if params.get(k, "") != ""}
        if "name" not in initial and initial.get("function", "*") != "*":
            metric = dict(Metric.choices).get(initial.get("metric", ""), "")
            label = metric.split(" (")[0] if metric else "alert"
            initial["name"] = f"{initial['function']}: {label}"
        return initial

    def payload(self) -> dict[str, Any]:
        d = self.data
        data: dict[str, Any] = {
            "name": d.get("name", ""), "function": d.get("function", ""),
            "metric": d.get("metric", ""), "operator": d.get("operator", ""),
            "severity": d.get("severity", "") or Severity.WARNING,
            "server": d.get("server") or None,
            "channels": d.getlist("channels") if hasattr(d, "getlist") else d.get("channels", []),
            "enabled": bool(d.get("enabled")),
        }
        if d.get("threshold", "") != "":
            data["threshold"] = _number(d["threshold"])
        for name in ("for_seconds", "window_seconds"):  # empty: the serializer's default
            if str(d.get(name, "")).strip() != "":
                data[name] = str(d[name]).strip()
        return data

    @property
    def threshold_hints(self) -> list[tuple[str, str]]:
        return [(m, THRESHOLD_HINTS.get(m, "")) for m, _ in Metric.choices]

    @property
    def windowed_metrics(self) -> tuple[str, ...]:
        """Metrics for which the window field means something (the template shows it)."""
        return WINDOWED


class ChannelForm(_SerializerForm[Channel]):
    serializer_class = ChannelSerializer

    name = Raw(widget=forms.TextInput(attrs={
        "placeholder": "e.g. #ops on Slack", "autocomplete": "off", "maxlength": 100}))
    url = Raw(widget=forms.TextInput(attrs={
        "placeholder": "slack://TokenA/TokenB/TokenC/#ops", "autocomplete": "off",
        "spellcheck": "false", "class": "mono"}))

    def payload(self) -> dict[str, Any]:
        return {"name": self.data.get("name", ""), "url": self.data.get("url", ""),
                "enabled": True}
