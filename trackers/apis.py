"""Tracker endpoints: list/create per organization, start, stop, and the ordered event log."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination, StrictSerializer
from config.errors import ApplicationError
from organizations.selectors import organization_get_for_user
from trackers import selectors, services

EVENTS_MAX_LIMIT = 500


class TrackerOutput(serializers.Serializer):
    id = serializers.IntegerField()
    organization_id = serializers.IntegerField()
    name = serializers.CharField()
    is_running = serializers.BooleanField()
    started_at = serializers.DateTimeField(allow_null=True)
    started_by = serializers.CharField(source="started_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()


class EventOutput(serializers.Serializer):
    org_id = serializers.IntegerField(source="organization_id")
    seq = serializers.IntegerField()
    event_id = serializers.IntegerField(source="id")
    tracker_id = serializers.IntegerField()
    tracker_name = serializers.CharField(source="tracker.name")
    action = serializers.CharField()
    actor = serializers.CharField(source="actor_name")
    occurred_at = serializers.DateTimeField()


class TrackerListCreateApi(APIView):
    class Input(StrictSerializer):
        name = serializers.CharField(max_length=120)

    @extend_schema(responses=TrackerOutput(many=True))
    def get(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.tracker_list(organization=organization), request, view=self)
        return paginator.get_paginated_response(TrackerOutput(page, many=True).data)

    @extend_schema(request=Input, responses={201: TrackerOutput})
    def post(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id, admin=True)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        tracker = services.tracker_create(organization=organization, **data.validated_data)
        return Response(TrackerOutput(tracker).data, status=status.HTTP_201_CREATED)


_ACTION_OUTPUT = inline_serializer("TrackerActionOutput", {"tracker": TrackerOutput(), "event": EventOutput()})


class _TrackerActionApi(APIView):
    action = ""

    def post(self, request, tracker_id: int):
        tracker = selectors.tracker_get_for_user(user=request.user, id=tracker_id)
        change = services.tracker_start if self.action == "start" else services.tracker_stop
        event = change(tracker_id=tracker.id, actor=request.user)
        tracker.refresh_from_db()
        return Response({"tracker": TrackerOutput(tracker).data, "event": EventOutput(event).data})


class TrackerStartApi(_TrackerActionApi):
    action = "start"

    @extend_schema(request=None, responses={200: _ACTION_OUTPUT})
    def post(self, request, tracker_id: int):
        return super().post(request, tracker_id)


class TrackerStopApi(_TrackerActionApi):
    action = "stop"

    @extend_schema(request=None, responses={200: _ACTION_OUTPUT})
    def post(self, request, tracker_id: int):
        return super().post(request, tracker_id)


class EventListApi(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("after_seq", OpenApiTypes.INT, description="Return events with seq > after_seq"),
            OpenApiParameter("limit", OpenApiTypes.INT, description=f"Page size (max {EVENTS_MAX_LIMIT})"),
        ],
        responses=inline_serializer("EventPage", {
            "results": EventOutput(many=True), "next_after_seq": serializers.IntegerField(allow_null=True)}),
    )
    def get(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id)
        try:
            after_seq = int(request.query_params.get("after_seq", 0))
            limit = int(request.query_params.get("limit", 100))
        except ValueError as exc:
            raise ApplicationError("after_seq and limit must be integers.", code="validation_error") from exc
        if after_seq < 0 or not 1 <= limit <= EVENTS_MAX_LIMIT:
            raise ApplicationError(f"after_seq must be >= 0 and limit 1..{EVENTS_MAX_LIMIT}.",
                                   code="validation_error")
        events = list(selectors.event_list(organization_id=organization.id, after_seq=after_seq)[: limit + 1])
        more = len(events) > limit
        events = events[:limit]
        return Response({
            "results": EventOutput(events, many=True).data,
            "next_after_seq": events[-1].seq if more else None,
        })
