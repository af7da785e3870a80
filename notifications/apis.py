"""Inbox endpoints: list, unread count, mark one read, mark all read."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination
from config.errors import ApplicationError
from notifications import inbox, selectors
from organizations.apis import require_user

_BOOLEAN = {"": False, "0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}


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
    @extend_schema(parameters=[OpenApiParameter("unread", OpenApiTypes.BOOL, description="Only unread")],
                   responses=NotificationOutput(many=True))
    def get(self, request):
        user = require_user(request)
        raw = request.query_params.get("unread", "").lower()
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
