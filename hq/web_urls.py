"""The Tokens and Users pages. ``hq/urls.py`` includes this module at the root."""

from django.urls import path

from . import account_views

urlpatterns = [
    path("tokens/", account_views.token_list, name="token-list"),
    path("tokens/<int:pk>/revoke/", account_views.token_revoke, name="token-revoke"),
    path("users/", account_views.user_list, name="user-list"),
    path("users/<int:pk>/role/", account_views.user_role, name="user-role"),
    path("users/<int:pk>/active/", account_views.user_active, name="user-active"),
]
