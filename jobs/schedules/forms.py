"""The schedule form on the Schedules page."""

from __future__ import annotations

from zoneinfo import available_timezones

from django import forms

from ..models import Overlap
from ..services import PRIORITIES


def zone_choices() -> list[str]:
    return sorted(available_timezones())


class ScheduleForm(forms.Form):
    name = forms.CharField(max_length=100, widget=forms.TextInput(
        attrs={"placeholder": "Nightly report", "autocomplete": "off"}))
    function = forms.CharField(max_length=255, widget=forms.TextInput(
        attrs={"list": "known-functions", "class": "mono", "autocomplete": "off",
               "spellcheck": "false", "placeholder": "nightly_report"}))
    cron = forms.CharField(max_length=200, widget=forms.TextInput(
        attrs={"class": "mono", "autocomplete": "off", "spellcheck": "false",
               "placeholder": "0 3 * * *"}))
    timezone = forms.CharField(max_length=64, initial="UTC", widget=forms.TextInput(
        attrs={"list": "time-zones", "autocomplete": "off", "spellcheck": "false"}))
    payload = forms.CharField(required=False, strip=False, widget=forms.Textarea(
        attrs={"rows": 3, "class": "mono", "spellcheck": "false"}))
    unique = forms.CharField(required=False, max_length=255, strip=False,
                             widget=forms.TextInput(attrs={"class": "mono"}))
    priority = forms.ChoiceField(choices=[(p, p.capitalize()) for p in PRIORITIES],
                                 initial="normal")
    overlap = forms.ChoiceField(choices=[
        (Overlap.ALLOW, "Allow: run every tick"),
        (Overlap.SKIP, "Skip a tick while the previous run is queued or running")],
        initial=Overlap.ALLOW)
    enabled = forms.BooleanField(required=False, initial=True)
