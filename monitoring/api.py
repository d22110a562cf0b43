"""REST endpoints for servers, queues and workers: thin, they call the selectors (the queue
and worker lists through their shared, once-per-``HQ_SHARED_CACHE_S`` versions)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import selectors

SERVER = OpenApiParameter("server", OpenApiTypes.STR, description="server name")
#: the lists answer ``{"results": [...]}``; the row fields are in the README's REST section
RESULTS = {200: OpenApiTypes.OBJECT}


@extend_schema(responses=RESULTS)
class ServerList(APIView):
    def get(self, request: Request) -> Response:
        return Response({"results": selectors.servers()})


@extend_schema(parameters=[SERVER], responses=RESULTS)
class QueueList(APIView):
    def get(self, request: Request) -> Response:
        rows = selectors.shared_queues(request.query_params.get("server") or None)
        return Response({"results": [{k: v for k, v in row.items() if k != "sparkline"}
                                     for row in rows]})


@extend_schema(parameters=[
    SERVER,
    OpenApiParameter("range", OpenApiTypes.STR, enum=list(selectors.RANGES)),
    OpenApiParameter("step", OpenApiTypes.INT, description="seconds, a multiple of 60"),
], responses=RESULTS)
class QueueStats(APIView):
    def get(self, request: Request, function: str) -> Response:
        params = request.query_params
        range_s, step_s = selectors.parse_range(params.get("range"), params.get("step"))
        return Response(selectors.queue_stats(function, range_s, step_s,
                                              params.get("server") or None))


@extend_schema(parameters=[SERVER], responses=RESULTS)
class WorkerList(APIView):
    def get(self, request: Request) -> Response:
        return Response({"results": selectors.shared_workers(
            request.query_params.get("server"))})
