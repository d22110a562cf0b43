"""Monitoring's web (HTML) routes. ``hq/urls.py`` includes this module at the root, before
``jobs.web_urls``, so ``/`` is the overview. Each page answers htmx with its live fragment
at the same address (``monitoring/views.py``), so there are no separate partial routes."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("workers/", views.workers, name="workers"),
    path("servers/<int:pk>/retire/", views.server_retire, name="server-retire"),
    # ``path``, not ``str``: a Gearman function name may contain "/"
    path("queues/<path:function>/", views.queue_detail, name="queue-detail"),
]
