"""Tracker endpoints: list/create per organization, start, stop, time entry
notes and comment threads."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination, StrictSerializer, activity_organization
from config.errors import ApplicationError
from organizations.selectors import organization_get_for_user
from notifications import publish
from trackers import selectors, services
from trackers.models import Comment, TimeEntry


class TrackerOutput(serializers.Serializer):
    id = serializers.IntegerField()
    organization_id = serializers.IntegerField()
    name = serializers.CharField()
    is_running = serializers.BooleanField()
    started_at = serializers.DateTimeField(allow_null=True)
    started_by = serializers.CharField(source="started_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()


class EventOutput(serializers.Serializer):
    """A tracker entry of the org log, as on the WebSocket (`tracker.event` without its type)."""

    org_id = serializers.IntegerField()
    seq = serializers.IntegerField()
    event_id = serializers.IntegerField()
    tracker_id = serializers.IntegerField()
    tracker_name = serializers.CharField()
    action = serializers.CharField()
    actor = serializers.CharField()
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
_DATETIME = serializers.DateTimeField()


def tracker_data(tracker) -> dict:
    """TrackerOutput(tracker).data, built directly: start and stop answer it on every tracker event,
    and a DRF serializer costs a deep copy of its fields per instance (tests/trackers/test_api.py
    checks both give the same answer)."""
    started_by = tracker.started_by
    return {"id": tracker.id, "organization_id": tracker.organization_id, "name": tracker.name,
            "is_running": tracker.is_running,
            "started_at": _DATETIME.to_representation(tracker.started_at) if tracker.started_at else None,
            "started_by": started_by.username if started_by is not None else None,
            "created_at": _DATETIME.to_representation(tracker.created_at)}


def event_data(event: dict) -> dict:
    """EventOutput(event).data for publish.entry_message's tracker event, built directly."""
    occurred_at = event["occurred_at"]
    return {"org_id": event["org_id"], "seq": event["seq"], "event_id": event["event_id"],
            "tracker_id": event["tracker_id"], "tracker_name": event["tracker_name"], "action": event["action"],
            "actor": event["actor"],
            "occurred_at": occurred_at if isinstance(occurred_at, str) else _DATETIME.to_representation(occurred_at)}


class _TrackerActionApi(APIView):
    action = ""

    def post(self, request, tracker_id: int):
        # One locking SELECT checks access too (404 for a tracker the caller cannot see); the answer
        # is built from the row as written, without reading it back.
        change = services.tracker_start_for if self.action == "start" else services.tracker_stop_for
        tracker, entry = change(tracker_id=tracker_id, principal=request.user)
        activity_organization(request, tracker.organization_id)
        return Response({"tracker": tracker_data(tracker), "event": event_data(publish.entry_message(entry))})


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



class TimeEntryOutput(serializers.Serializer):
    id = serializers.IntegerField()
    organization_id = serializers.IntegerField()
    tracker_id = serializers.IntegerField()
    started_by = serializers.CharField(source="started_by.username", allow_null=True, default=None)
    started_at = serializers.DateTimeField()
    stopped_at = serializers.DateTimeField(allow_null=True)
    duration_seconds = serializers.SerializerMethodField()
    notes = serializers.CharField()

    def get_duration_seconds(self, obj) -> int | None:
        return int(obj.duration.total_seconds()) if obj.duration is not None else None


class TimeEntryDetailApi(APIView):
    class Input(StrictSerializer):
        notes = serializers.CharField(max_length=4000, allow_blank=True)

    @extend_schema(request=Input, responses=TimeEntryOutput)
    def patch(self, request, entry_id: int):
        entry = selectors.time_entry_get_for_user(user=request.user, id=entry_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(TimeEntryOutput(services.time_entry_update(entry=entry, **data.validated_data)).data)


# --- Comments -----------------------------------------------------------------------------------

COMMENT_BODY_MAX = 10000


class CommentAuthorOutput(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class CommentOutput(serializers.Serializer):
    """One comment; `replies` holds comments of the same shape, to any depth."""

    id = serializers.IntegerField()
    parent = serializers.IntegerField(allow_null=True)
    author = CommentAuthorOutput(allow_null=True)
    body = serializers.CharField()
    created_at = serializers.DateTimeField()
    edited_at = serializers.DateTimeField(allow_null=True)
    deleted = serializers.BooleanField()
    replies = serializers.ListField(child=serializers.DictField())


def comment_data(comment: Comment, replies: list | None = None) -> dict:
    """A deleted comment keeps its place in the thread but shows neither author nor body."""
    deleted = comment.is_deleted
    author = comment.author if comment.author_id and not deleted else None
    return {
        "id": comment.id,
        "parent": comment.parent_id,
        "author": {"id": author.id, "username": author.username} if author else None,
        "body": "" if deleted else comment.body,
        "created_at": serializers.DateTimeField().to_representation(comment.created_at),
        "edited_at": serializers.DateTimeField().to_representation(comment.edited_at) if comment.edited_at else None,
        "deleted": deleted,
        "replies": replies if replies is not None else [],
    }


def _thread_data(nodes: list[selectors.ThreadNode]) -> list[dict]:
    return [comment_data(node.comment, _thread_data(node.replies)) for node in nodes]


def _page_params(request) -> tuple[int, int]:
    try:
        page = int(request.query_params.get("page", 1))
        page_size = int(request.query_params.get("page_size", Pagination.page_size or 50))
    except ValueError as exc:
        raise ApplicationError("page and page_size must be integers.", code="validation_error") from exc
    if page < 1 or not 1 <= page_size <= Pagination.max_page_size:
        raise ApplicationError(f"page must be >= 1 and page_size 1..{Pagination.max_page_size}.",
                               code="validation_error")
    return page, page_size


_COMMENT_PAGE = inline_serializer("CommentPage", {
    "count": serializers.IntegerField(), "next": serializers.URLField(allow_null=True),
    "previous": serializers.URLField(allow_null=True), "results": CommentOutput(many=True)})
_PAGE_PARAMS = [
    OpenApiParameter("page", OpenApiTypes.INT, description="Page of top-level comments (from 1)"),
    OpenApiParameter("page_size", OpenApiTypes.INT, description=f"Top-level comments per page (max "
                     f"{Pagination.max_page_size}); each comes with all its replies"),
]


class _CommentThreadApi(APIView):
    """GET: a page of top-level comments, each with its whole reply tree (one query for the thread).
    POST: a comment, or a reply when `parent` is a comment id of the same thread."""

    class Input(StrictSerializer):
        body = serializers.CharField(max_length=COMMENT_BODY_MAX)
        parent = serializers.IntegerField(required=False, allow_null=True, min_value=1)

    def target(self, request, object_id: int) -> tuple:
        raise NotImplementedError

    def list(self, request, object_id: int):
        tracker, entry = self.target(request, object_id)
        page, page_size = _page_params(request)
        entry_id = entry.id if entry else None
        count = selectors.comment_top_level(tracker_id=tracker.id, time_entry_id=entry_id).count()
        nodes = selectors.comment_thread_page(tracker_id=tracker.id, time_entry_id=entry_id,
                                              offset=(page - 1) * page_size, limit=page_size)
        url = request.build_absolute_uri(request.path)

        def link(number: int) -> str:
            return f"{url}?page={number}&page_size={page_size}"

        return Response({
            "count": count,
            "next": link(page + 1) if page * page_size < count else None,
            "previous": link(page - 1) if page > 1 else None,
            "results": _thread_data(nodes),
        })

    def create(self, request, object_id: int):
        tracker, entry = self.target(request, object_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        comment = services.comment_create(tracker=tracker, time_entry=entry, author=request.user,
                                          body=data.validated_data["body"],
                                          parent_id=data.validated_data.get("parent"))
        return Response(comment_data(comment), status=status.HTTP_201_CREATED)


class TrackerCommentsApi(_CommentThreadApi):
    def target(self, request, object_id: int) -> tuple:
        return selectors.tracker_get_for_user(user=request.user, id=object_id), None

    @extend_schema(parameters=_PAGE_PARAMS, responses=_COMMENT_PAGE)
    def get(self, request, tracker_id: int):
        return self.list(request, tracker_id)

    @extend_schema(request=_CommentThreadApi.Input, responses={201: CommentOutput})
    def post(self, request, tracker_id: int):
        return self.create(request, tracker_id)


class TimeEntryCommentsApi(_CommentThreadApi):
    def target(self, request, object_id: int) -> tuple:
        entry: TimeEntry = selectors.time_entry_get_for_user(user=request.user, id=object_id)
        return entry.tracker, entry

    @extend_schema(parameters=_PAGE_PARAMS, responses=_COMMENT_PAGE)
    def get(self, request, entry_id: int):
        return self.list(request, entry_id)

    @extend_schema(request=_CommentThreadApi.Input, responses={201: CommentOutput})
    def post(self, request, entry_id: int):
        return self.create(request, entry_id)


class CommentDetailApi(APIView):
    class Input(StrictSerializer):
        body = serializers.CharField(max_length=COMMENT_BODY_MAX)

    @extend_schema(request=Input, responses=CommentOutput)
    def patch(self, request, comment_id: int):
        comment = selectors.comment_get_for_user(user=request.user, id=comment_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        comment = services.comment_update(comment_id=comment.id, actor=request.user, **data.validated_data)
        return Response(comment_data(comment))

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, comment_id: int):
        comment = selectors.comment_get_for_user(user=request.user, id=comment_id)
        services.comment_delete(comment_id=comment.id, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
