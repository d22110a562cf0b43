"""API tokens. Roles are Django groups named after :class:`Role`."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone


class Role(models.TextChoices):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


ROLE_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}
#: ``last_used_at`` is written at most this often per token (one UPDATE a minute, not one
#: per request)
LAST_USED_EVERY_S = 60


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token. Only its SHA-256 is stored; the token itself is shown once.

    (A token is 32 random bytes, so a plain hash is enough: there is nothing to guess that
    a slow, salted hash would protect.) Revoking deletes the row.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True, default="")
    digest = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["prefix"], name="apitoken_prefix")]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @classmethod
    def issue(cls, user: models.Model, *, name: str = "",
              expires_at: datetime | None = None) -> tuple[ApiToken, str]:
        raw = "hq_" + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, digest=hash_token(raw), prefix=raw[:10],
                                   name=name, expires_at=expires_at)
        return token, raw

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    def last_used_is_stale(self, now: datetime) -> bool:
        return (self.last_used_at is None
                or (now - self.last_used_at).total_seconds() >= LAST_USED_EVERY_S)


class Via(models.TextChoices):
    UI = "ui"
    API = "api"
    CLI = "cli"
    SYSTEM = "system"  # HQ itself: the scheduler submitting a job whose time came
    POLICY = "policy"  # HQ's automatic recovery: a retry policy, a dead letter (jobs/recovery)


class AuditEntry(models.Model):
    """One action someone took (append-only: written by ``hq.audit.record``, never
    changed). ``target`` names what it acted on as text ("job 42"), so this table needs
    no app's model; ``username`` keeps the name when the user is gone."""

    at = models.DateTimeField(default=timezone.now)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                             on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150, blank=True, default="")
    via = models.CharField(max_length=6, choices=Via.choices)
    action = models.CharField(max_length=40)
    target = models.CharField(max_length=255)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["-at"], name="audit_at"),
                   models.Index(fields=["target", "-at"], name="audit_target")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username or '-'} {self.action} {self.target}"
