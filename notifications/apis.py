"""Inbox endpoints (list, unread count, mark one read, mark all read) and the org log."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination
from config.errors import ApplicationError
from notifications import inbox, selectors
from notifications.events import entry_message
from organizations.apis import require_user
from organizations.selectors import organization_get_for_user

_BOOLEAN = {"0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}


def _origin(request) -> str | None:
    value = request.headers.get("X-Client-Id", "")
    return value[:64] or None


class NotificationOutput(serializers.Serializer):
    id = serializers.IntegerField()
    organization_id = serializers.IntegerField()
    seq = serializers.IntegerField(allow_null=True)
    kind = serializers.CharField()
    title = serializers.CharField()
    body = serializers.CharField()
    data = serializers.JSONField()
    created_at = serializers.DateTimeField()
    read_at = serializers.DateTimeField(allow_null=True)


class NotificationListApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("unread", OpenApiTypes.BOOL, description="Only unread (true/false)")],
                   responses=NotificationOutput(many=True))
    def get(self, request):
        user = require_user(request)
        raw = request.query_params.get("unread", "false").lower()  # absent: all; empty `unread=`: 400
        if raw not in _BOOLEAN:
            raise ApplicationError("unread must be true or false.", code="validation_error",
                                   extra={"fields": {"unread": ["Must be true or false."]}})
        unread = _BOOLEAN[raw]
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.notification_list(user=user, unread_only=unread), request,
                                           view=self)
        return paginator.get_paginated_response(NotificationOutput(page, many=True).data)


class UnreadCountApi(APIView):
    @extend_schema(responses=inline_serializer("UnreadCount", {"unread": serializers.IntegerField()}))
    def get(self, request):
        return Response({"unread": selectors.notification_unread_count(user=require_user(request))})


class NotificationReadApi(APIView):
    @extend_schema(request=None, responses=NotificationOutput)
    def post(self, request, notification_id: int):
        user = require_user(request)
        notification = selectors.notification_get_for_user(user=user, id=notification_id)
        notification = inbox.notification_mark_read(notification=notification, origin=_origin(request))
        return Response(NotificationOutput(notification).data)


class NotificationReadAllApi(APIView):
    @extend_schema(request=None, responses=inline_serializer("ReadAll", {"updated": serializers.IntegerField()}))
    def post(self, request):
        updated = inbox.notification_mark_all_read(user=require_user(request), origin=_origin(request))
        return Response({"updated": updated})


LOG_MAX_LIMIT = 500


class OrgLogListApi(APIView):
    """The organization's log after a seq, for catch-up after a reconnect: every kind, in seq
    order, each in its WebSocket shape; an entry whose audience leaves the caller out is redacted
    to its seq (`private`)."""

    @extend_schema(
        operation_id="org_events_list",
        parameters=[
            OpenApiParameter("after_seq", {"type": "integer", "minimum": 0},
                             description="Return entries with seq > after_seq (>= 0)"),
            OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": LOG_MAX_LIMIT},
                             description=f"Page size (1..{LOG_MAX_LIMIT}, default 100)"),
        ],
        responses=inline_serializer("EventPage", {
            "results": serializers.ListField(child=serializers.DictField()),
            "next_after_seq": serializers.IntegerField(allow_null=True)}),
    )
    def get(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id)
        try:
            after_seq = int(request.query_params.get("after_seq", 0))
            limit = int(request.query_params.get("limit", 100))
        except ValueError as exc:
            raise ApplicationError("after_seq and limit must be integers.", code="validation_error") from exc
        if after_seq < 0 or not 1 <= limit <= LOG_MAX_LIMIT:
            raise ApplicationError(f"after_seq must be >= 0 and limit 1..{LOG_MAX_LIMIT}.", code="validation_error")
        entries = selectors.log_entries_after(organization_id=organization.id, after_seq=after_seq, limit=limit + 1)
        more = len(entries) > limit
        entries = entries[:limit]
        user_id = getattr(request.user, "pk", None)
        results = [entry_message(entry=e, private=user_id is not None and user_id not in e.audience)
                   for e in entries]
        return Response({"results": results, "next_after_seq": entries[-1].seq if more else None})
