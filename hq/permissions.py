"""Role checks for the REST API."""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from .models import Role
from .roles import has_role


class ViewerReadOperatorWrite(BasePermission):
    """Reading needs the viewer role; anything else needs operator."""

    message = "Your role does not allow this."

    def has_permission(self, request, view):  # type: ignore[no-untyped-def]
        needed = Role.VIEWER if request.method in SAFE_METHODS else Role.OPERATOR
        return has_role(request.user, needed)


class AdminOnly(BasePermission):
    message = "Only admins may do this."

    def has_permission(self, request, view):  # type: ignore[no-untyped-def]
        return has_role(request.user, Role.ADMIN)
