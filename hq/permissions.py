"""Role checks for the REST API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.permissions import SAFE_METHODS, BasePermission

from .models import Role
from .roles import has_role

if TYPE_CHECKING:  # rest_framework.views imports DRF's settings, which import this module
    from rest_framework.request import Request
    from rest_framework.views import APIView


class ViewerReadOperatorWrite(BasePermission):
    """Reading needs the viewer role; anything else needs operator."""

    message = "Your role does not allow this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        needed = Role.VIEWER if request.method in SAFE_METHODS else Role.OPERATOR
        return has_role(request.user, needed)


class AdminOnly(BasePermission):
    message = "Only admins may do this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return has_role(request.user, Role.ADMIN)


class ViewerForOwnThings(BasePermission):
    """Any method for anyone with at least the viewer role: for things that are the user's
    own (their API tokens), where the view itself limits what they reach."""

    message = "Your account has no role in Gearman HQ yet."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return has_role(request.user, Role.VIEWER)
