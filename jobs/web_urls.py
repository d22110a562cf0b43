"""The jobs pages. ``hq/urls.py`` includes this module at the root."""

from django.urls import path

from . import views

urlpatterns = [
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/<int:pk>/", views.job_detail, name="job-detail"),
]
