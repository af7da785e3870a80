"""Reads of trackers, time entries and comment threads, through the organization access helpers."""
from dataclasses import dataclass

from django.db.models import QuerySet, Subquery

from config.errors import NotFound
from organizations.selectors import organization_list_for_user
from organizations.models import Organization
from trackers.errors import TrackerErrorCode
from trackers.models import Comment, TimeEntry, Tracker


def tracker_list(*, organization: Organization) -> QuerySet[Tracker]:
    return Tracker.objects.filter(organization=organization).select_related("started_by").order_by("id")


def tracker_get_for_user(*, user, id: int) -> Tracker:
    tracker = (
        Tracker.objects.filter(id=id, organization__in=organization_list_for_user(user=user))
        .select_related("organization")
        .first()
    )
    if tracker is None:
        raise NotFound("Tracker not found.", code=TrackerErrorCode.TRACKER_NOT_FOUND)
    return tracker


def time_entry_list(*, organization: Organization, tracker_id: int | None = None, user_id: int | None = None,
                    started_from=None, started_before=None) -> QuerySet[TimeEntry]:
    """An organization's time entries, newest first, filtered by tracker, member and start time."""
    entries = TimeEntry.objects.filter(organization=organization)
    if tracker_id:
        entries = entries.filter(tracker_id=tracker_id)
    if user_id:
        entries = entries.filter(started_by_id=user_id)
    if started_from is not None:
        entries = entries.filter(started_at__gte=started_from)
    if started_before is not None:
        entries = entries.filter(started_at__lt=started_before)
    return entries.select_related("tracker", "started_by", "stopped_by").order_by("-started_at", "-id")


def time_entry_get_for_user(*, user, id: int) -> TimeEntry:
    entry = (
        TimeEntry.objects.filter(id=id, organization__in=organization_list_for_user(user=user))
        .select_related("tracker", "organization")
        .first()
    )
    if entry is None:
        raise NotFound("Time entry not found.", code=TrackerErrorCode.TIME_ENTRY_NOT_FOUND)
    return entry


def comment_get_for_user(*, user, id: int) -> Comment:
    comment = (
        Comment.objects.filter(id=id, organization__in=organization_list_for_user(user=user))
        .select_related("author")
        .first()
    )
    if comment is None:
        raise NotFound("Comment not found.", code=TrackerErrorCode.COMMENT_NOT_FOUND)
    return comment


def comment_top_level(*, tracker_id: int, time_entry_id: int | None) -> QuerySet[Comment]:
    """The top-level comments of one thread target: the tracker itself, or one of its time entries."""
    return Comment.objects.filter(tracker_id=tracker_id, time_entry_id=time_entry_id, parent__isnull=True)


@dataclass
class ThreadNode:
    comment: Comment
    replies: list["ThreadNode"]


def comment_thread_page(*, tracker_id: int, time_entry_id: int | None, offset: int, limit: int) -> list[ThreadNode]:
    """Top-level comments [offset, offset+limit) in creation order, each with every reply under it
    at any depth: one query (the page of roots is a subquery; authors are joined)."""
    roots = comment_top_level(tracker_id=tracker_id, time_entry_id=time_entry_id).order_by("id")
    rows = (
        Comment.objects.filter(root_id__in=Subquery(roots.values("id")[offset:offset + limit]))
        .select_related("author")
        .order_by("path")
    )
    top: list[ThreadNode] = []
    nodes: dict[int, ThreadNode] = {}
    for comment in rows:  # path order: every parent comes before its replies
        node = ThreadNode(comment=comment, replies=[])
        nodes[comment.id] = node
        parent = nodes.get(comment.parent_id) if comment.parent_id else None
        (parent.replies if parent is not None else top).append(node)
    return top


def comment_thread_participant_ids(*, root_id: int, organization_id: int) -> set[int]:
    """Authors of every comment of one thread (a top-level comment and everything under it) who
    are still members of the organization (one query)."""
    return set(
        Comment.objects.filter(root_id=root_id, author__isnull=False,
                               author__memberships__organization_id=organization_id)
        .values_list("author_id", flat=True).distinct()
    )
