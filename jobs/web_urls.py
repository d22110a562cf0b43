"""The jobs pages. ``hq/urls.py`` includes this module at the root."""

from django.urls import path

from . import views
from .recovery import views as recovery_views
from .schedules import views as schedule_views

urlpatterns = [
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/new/", views.job_submit, name="job-submit"),
    path("jobs/bulk/confirm/", views.bulk_confirm, name="bulk-confirm"),
    path("jobs/bulk/", views.bulk_start, name="bulk-start"),
    path("bulk/<int:pk>/", views.bulk_detail, name="bulk-detail"),
    path("jobs/<int:pk>/", views.job_detail, name="job-detail"),
    path("jobs/<int:pk>/retry/", views.job_retry, name="job-retry"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job-cancel"),
    path("retry-policies/", recovery_views.policy_list, name="retry-policies"),
    path("retry-policies/<int:pk>/", recovery_views.policy_detail, name="retry-policy"),
    path("retry-policies/<int:pk>/move/", recovery_views.policy_move, name="retry-policy-move"),
    path("retry-policies/<int:pk>/delete/", recovery_views.policy_delete,
         name="retry-policy-delete"),
    path("dead-letters/", recovery_views.dead_letters, name="dead-letters"),
    path("dead-letters/bulk/", recovery_views.dead_bulk, name="dead-letters-bulk"),
    path("dead-letters/<int:pk>/requeue/", recovery_views.dead_requeue, name="dead-requeue"),
    path("dead-letters/<int:pk>/discard/", recovery_views.dead_discard, name="dead-discard"),
    path("schedules/", schedule_views.schedule_list, name="schedule-list"),
    path("schedules/preview/", schedule_views.schedule_preview, name="schedule-preview"),
    path("schedules/<int:pk>/", schedule_views.schedule_detail, name="schedule-detail"),
    path("schedules/<int:pk>/delete/", schedule_views.schedule_delete,
         name="schedule-delete"),
]
