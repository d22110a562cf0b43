"""Every web (HTML) route. ``hq/urls.py`` includes this module at the root."""

from django.urls import path

from hq import views as hq_views

from . import views

urlpatterns = [
    path("login/", hq_views.login_view, name="login"),
    path("logout/", hq_views.logout_view, name="logout"),
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/<int:pk>/", views.job_detail, name="job-detail"),
]
