"""Reads of a member's inbox, and of the log for the live feed's catch-up."""
from dataclasses import dataclass

from django.db import connection
from django.db.models import QuerySet

from config.errors import NotFound
from notifications.events import entry_message, notification_created_message
from notifications.models import LogEntry, Notification


def notification_list(*, user, unread_only: bool = False) -> QuerySet[Notification]:
    queryset = Notification.objects.filter(recipient=user).order_by("-id")
    if unread_only:
        queryset = queryset.filter(read_at__isnull=True)
    return queryset


def notification_unread_count(*, user) -> int:
    return Notification.objects.filter(recipient=user, read_at__isnull=True).count()


def notification_get_for_user(*, user, id: int) -> Notification:
    notification = Notification.objects.filter(recipient=user, id=id).first()
    if notification is None:
        raise NotFound("Notification not found.", code="notification_not_found")
    return notification


def log_entries_after(*, organization_id: int, after_seq: int, limit: int) -> list[LogEntry]:
    """The organization's log after `after_seq`, in seq order (index logentry_unique_org_seq)."""
    return list(LogEntry.objects.filter(organization_id=organization_id, seq__gt=after_seq).order_by("seq")[:limit])


# --- the live feed's catch-up reads (notifications.consumers) ------------------------------------

@dataclass(frozen=True)
class LiveBacklog:
    """What one member missed of one organization's log, as the WebSocket frames to send, in seq
    order: per entry its org message (redacted when the member is outside its audience) and, when
    the entry notified this member, the `notification.created` for it."""

    entries: list[tuple[int, list[dict]]]
    more: bool  # entries after the last returned were left out (limit)


_LIVE_WATERMARKS_SQL = """
SELECT m.organization_id, COALESCE(s.delivered_seq, 0)
FROM organizations_membership m
LEFT JOIN notifications_deliverystream s
       ON s.organization_id = m.organization_id AND s.channel = 'inapp' AND s.destination = ''
WHERE m.user_id = %s
"""


def live_watermarks(*, user_id: int) -> dict[int, int]:
    """The user's organizations (memberships now) -> the last seq the in-app stream has published.

    The in-app cursor, not the organization's last seq: entries after it have not been fanned out
    yet (no inbox row, no group message), so nothing after it can have been lost. One indexed query."""
    with connection.cursor() as cursor:
        cursor.execute(_LIVE_WATERMARKS_SQL, [user_id])
        return dict(cursor.fetchall())


_LIVE_WATERMARKS_MANY_SQL = """
SELECT m.user_id, m.organization_id, COALESCE(s.delivered_seq, 0)
FROM organizations_membership m
LEFT JOIN notifications_deliverystream s
       ON s.organization_id = m.organization_id AND s.channel = 'inapp' AND s.destination = ''
WHERE m.user_id = ANY(%s)
"""


def live_watermarks_many(*, user_ids) -> dict[int, dict[int, int]]:
    """live_watermarks for many users in one query: user id -> {organization id: seq}; a user
    without memberships maps to {} (so a removed member's connections leave their groups)."""
    marks: dict[int, dict[int, int]] = {user_id: {} for user_id in user_ids}
    if not marks:
        return marks
    with connection.cursor() as cursor:
        cursor.execute(_LIVE_WATERMARKS_MANY_SQL, [list(marks)])
        for user_id, org_id, seq in cursor.fetchall():
            marks[user_id][org_id] = seq
    return marks


def live_backlog(*, user_id: int, organization_id: int, after_seq: int, upto_seq: int, limit: int) -> LiveBacklog:
    """The log entries after_seq < seq <= upto_seq (at most `limit`) as `user_id` is to see them:
    redacted outside their audience, each followed by this user's notification.created for it. Two
    indexed queries (logentry_unique_org_seq; the recipient/entry unique index). The caller has
    checked membership (live_watermarks) just before."""
    entries = list(LogEntry.objects.filter(organization_id=organization_id, seq__gt=after_seq, seq__lte=upto_seq)
                   .order_by("seq")[: limit + 1])
    more, entries = len(entries) > limit, entries[:limit]
    own = {}
    if entries:
        own = {n.entry_id: n for n in Notification.objects.filter(
            recipient_id=user_id, entry_id__in=[e.id for e in entries]).only("id", "entry_id", "title", "body",
                                                                              "created_at")}
    frames = []
    for entry in entries:
        private = user_id not in (entry.audience or [])
        entry_frames = [entry_message(entry=entry, private=private)]
        notification = None if private else own.get(entry.id)
        if notification is not None:
            entry_frames.append(notification_created_message(
                notification_id=notification.id, org_id=organization_id, seq=entry.seq, kind=entry.kind,
                title=notification.title, body=notification.body, created_at=notification.created_at.isoformat()))
        frames.append((entry.seq, entry_frames))
    return LiveBacklog(entries=frames, more=more)
