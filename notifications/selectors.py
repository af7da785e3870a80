"""Reads of a member's inbox."""
from django.db.models import QuerySet

from config.errors import NotFound
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
