from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api
from .recovery.api import JobDiscard, RetryPolicyViewSet
from .schedules.api import ScheduleViewSet

router = SimpleRouter()
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("retry-policies", RetryPolicyViewSet, basename="retry-policy")

urlpatterns = [
    path("jobs/", api.JobList.as_view(), name="api-jobs"),
    path("jobs/bulk/", api.JobBulk.as_view(), name="api-job-bulk"),
    path("bulk/<int:pk>/", api.BulkDetail.as_view(), name="api-bulk"),
    path("jobs/<int:pk>/", api.JobDetail.as_view(), name="api-job"),
    path("jobs/<int:pk>/events/", api.JobEvents.as_view(), name="api-job-events"),
    path("jobs/<int:pk>/retry/", api.JobRetry.as_view(), name="api-job-retry"),
    path("jobs/<int:pk>/cancel/", api.JobCancel.as_view(), name="api-job-cancel"),
    path("jobs/<int:pk>/discard/", JobDiscard.as_view(), name="api-job-discard"),
    *router.urls,
]
