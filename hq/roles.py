"""Who may do what: viewer reads, operator also acts on jobs and alerts, admin manages."""

from __future__ import annotations

from typing import cast

from django.contrib.auth.models import AbstractUser, AnonymousUser, Group

from .models import ROLE_RANK, Role

#: the attribute a user object keeps its role in once looked up (one query per request,
#: however many checks the request makes; the object lives for one request)
MEMO = "_hq_role"
_UNKNOWN = object()


def role_of(user: AbstractUser | AnonymousUser | None) -> Role | None:
    if user is None or not user.is_authenticated:
        return None
    if getattr(user, "is_superuser", False):
        return Role.ADMIN
    memo = getattr(user, MEMO, _UNKNOWN)
    if memo is not _UNKNOWN:
        return cast("Role | None", memo)
    names = set(user.groups.values_list("name", flat=True))
    found = next((r for r in (Role.ADMIN, Role.OPERATOR, Role.VIEWER) if r.value in names),
                 None)
    setattr(user, MEMO, found)
    return found


def has_role(user: AbstractUser | AnonymousUser | None, needed: Role) -> bool:
    role = role_of(user)
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[needed]


def set_role(user: AbstractUser, role: Role) -> None:
    groups = [Group.objects.get_or_create(name=r.value)[0] for r in Role]
    user.groups.remove(*groups)
    user.groups.add(Group.objects.get(name=role.value))
    setattr(user, MEMO, role)
