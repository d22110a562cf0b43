"""The "Submit job" form: what a person types, checked and turned into the arguments of
``jobs.services.submit`` (which checks them again, as it does for the API)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms
from django.conf import settings

from .services import PRIORITIES, WAIT_MAX_S

#: how long the page waits for a foreground job before showing it (it runs on regardless)
UI_WAIT_S = 10


class SubmitJobForm(forms.Form):
    function = forms.CharField(max_length=255, strip=True, widget=forms.TextInput(
        attrs={"list": "known-functions", "autocomplete": "off", "spellcheck": "false",
               "class": "mono", "placeholder": "resize_image", "autofocus": True}))
    payload = forms.CharField(required=False, strip=False, widget=forms.Textarea(
        attrs={"rows": 6, "class": "mono", "spellcheck": "false",
               "placeholder": '{"id": 4711}'}))
    payload_file = forms.FileField(required=False)
    unique = forms.CharField(required=False, max_length=255, strip=False,
                             widget=forms.TextInput(attrs={"class": "mono",
                                                           "autocomplete": "off"}))
    priority = forms.ChoiceField(choices=[(p, p.capitalize()) for p in PRIORITIES],
                                 initial="normal")
    mode = forms.ChoiceField(choices=[("background", "Background"),
                                      ("foreground", f"Foreground (wait up to {UI_WAIT_S} s)")],
                             initial="background", widget=forms.RadioSelect)
    run_at = forms.DateTimeField(required=False, input_formats=[
        "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}))

    def clean_run_at(self) -> datetime | None:
        value: datetime | None = self.cleaned_data.get("run_at")
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        upload = data.get("payload_file")
        text = data.get("payload") or ""
        limit = int(settings.HQ_PAYLOAD_MAX)
        if upload is not None:
            if text:
                self.add_error("payload_file", "Give the payload as text or as a file, "
                                               "not both.")
                return data
            if upload.size is not None and upload.size > limit:
                self.add_error("payload_file", f"The file is {upload.size:,} bytes; "
                                               f"HQ_PAYLOAD_MAX allows {limit:,}.")
                return data
            data["payload_bytes"] = upload.read(limit + 1)
        else:
            data["payload_bytes"] = text.replace("\r\n", "\n").encode()
        if len(data["payload_bytes"]) > limit:
            field = "payload_file" if upload is not None else "payload"
            self.add_error(field, f"{len(data['payload_bytes']):,} bytes; HQ_PAYLOAD_MAX "
                                  f"allows {limit:,}.")
        if data.get("run_at") and data.get("mode") == "foreground":
            self.add_error("mode", "A job that runs later must be a background job: nobody "
                                   "would be waiting for its result.")
        return data

    def wait_s(self) -> float:
        return float(min(UI_WAIT_S, WAIT_MAX_S)) if self.cleaned_data["mode"] == "foreground" \
            else 0.0


class RetryPolicyForm(forms.Form):
    """A retry policy as the page edits it; ``jobs.recovery.policies.clean`` judges it."""

    function = forms.CharField(max_length=255, widget=forms.TextInput(
        attrs={"list": "known-functions", "class": "mono", "placeholder": "resize_* or *",
               "autocomplete": "off", "spellcheck": "false"}))
    max_attempts = forms.IntegerField(min_value=1, max_value=100, initial=3)
    backoff_base_s = forms.FloatField(min_value=0, initial=10)
    backoff_max_s = forms.FloatField(min_value=0, initial=3600)
    jitter = forms.BooleanField(required=False)
    retry_on = forms.MultipleChoiceField(
        choices=[("failed", "failed (WORK_FAIL)"), ("exception", "exception (WORK_EXCEPTION)"),
                 ("lost", "lost (gearmand dropped it or restarted)")],
        initial=["failed", "exception", "lost"], widget=forms.CheckboxSelectMultiple)
    enabled = forms.BooleanField(required=False, initial=True)
    order = forms.IntegerField(required=False)

    def values(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        if data.get("order") is None:
            data.pop("order", None)
        return data
