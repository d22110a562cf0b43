"""Who may do what: viewer reads, operator also acts on jobs and alerts, admin manages."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser, AnonymousUser, Group

from .models import ROLE_RANK, Role


def role_of(user: AbstractUser | AnonymousUser | None) -> Role | None:
    if user is None or not user.is_authenticated:
        return None
    if getattr(user, "is_superuser", False):
        return Role.ADMIN
    names = set(user.groups.values_list("name", flat=True))
    for role in (Role.ADMIN, Role.OPERATOR, Role.VIEWER):
        if role.value in names:
            return role
    return None


def has_role(user: AbstractUser | AnonymousUser | None, needed: Role) -> bool:
    role = role_of(user)
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[needed]


def set_role(user: AbstractUser, role: Role) -> None:
    groups = [Group.objects.get_or_create(name=r.value)[0] for r in Role]
    user.groups.remove(*groups)
    user.groups.add(Group.objects.get(name=role.value))
