"""Forms of the Tokens and Users pages. They only parse; the services decide."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.utils import timezone

from .models import Role

EXPIRY_CHOICES = [("", "Never"), ("7", "In 7 days"), ("30", "In 30 days"),
                  ("90", "In 90 days"), ("365", "In a year")]
ROLE_CHOICES = [(r.value, r.value) for r in Role]


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, required=False, widget=forms.TextInput(
        attrs={"placeholder": "e.g. deploy script on ci-3", "autocomplete": "off"}))
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, label="Expires")

    def expires_at(self) -> datetime | None:
        days = self.cleaned_data.get("expires_in") or ""
        return timezone.now() + timedelta(days=int(days)) if days else None


class UserForm(forms.Form):
    username = forms.CharField(max_length=150, widget=forms.TextInput(
        attrs={"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"}))
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Role.VIEWER.value)
    password = forms.CharField(required=False, max_length=200, widget=forms.PasswordInput(
        attrs={"autocomplete": "new-password", "placeholder": "empty: a random one"}))


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES)
