"""Alerts' web (HTML) routes. ``hq/urls.py`` includes this module at the root, before
``jobs.web_urls``. Pages answer htmx with their live fragment at the same address
(``alerts/views.py``); the small POST routes answer htmx with the row they changed."""

from django.urls import path

from . import views

urlpatterns = [
    path("alerts/", views.alert_list, name="alert-list"),
    path("alerts/strip/", views.header_strip, name="alert-strip"),
    path("alerts/<int:pk>/", views.alert_detail, name="alert-detail"),
    path("alerts/<int:pk>/ack/", views.alert_ack, name="alert-ack"),
    path("alerts/rules/new/", views.rule_new, name="rule-new"),
    path("alerts/rules/<int:pk>/edit/", views.rule_edit, name="rule-edit"),
    path("alerts/rules/<int:pk>/toggle/", views.rule_toggle, name="rule-toggle"),
    path("alerts/rules/<int:pk>/delete/", views.rule_delete, name="rule-delete"),
    path("alerts/channels/", views.channel_list, name="channel-list"),
    path("alerts/channels/<int:pk>/toggle/", views.channel_toggle, name="channel-toggle"),
    path("alerts/channels/<int:pk>/delete/", views.channel_delete, name="channel-delete"),
    path("alerts/channels/<int:pk>/test/", views.channel_test, name="channel-test"),
]
