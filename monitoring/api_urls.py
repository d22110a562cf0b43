from django.urls import path

from . import api

urlpatterns = [
    path("servers/", api.ServerList.as_view(), name="api-servers"),
    path("queues/", api.QueueList.as_view(), name="api-queues"),
    path("queues/<str:function>/stats/", api.QueueStats.as_view(), name="api-queue-stats"),
    path("workers/", api.WorkerList.as_view(), name="api-workers"),
]
