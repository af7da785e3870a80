"""Inbox writes: read / read-all, synced to the member's other devices over WebSocket."""
from django.db import transaction
from django.utils import timezone

from notifications import realtime
from notifications.events import notification_read_message
from notifications.models import Notification
from notifications.selectors import notification_unread_count


def _publish_read(*, user_id: int, ids: list[int] | None, all_read: bool, origin: str | None) -> None:
    count = notification_unread_count(user=user_id)
    message = notification_read_message(ids=ids, all_read=all_read, unread_count=count, origin=origin)
    # The read is committed; a push that fails (Redis down) must not fail the request: other
    # devices catch up from the API.
    transaction.on_commit(lambda: realtime.publish([(realtime.user_group(user_id), message)]), robust=True)


@transaction.atomic
def notification_mark_read(*, notification: Notification, origin: str | None = None) -> Notification:
    if notification.read_at is None:
        notification.read_at = timezone.now()
        notification.save(update_fields=["read_at"])
        _publish_read(user_id=notification.recipient_id, ids=[notification.id], all_read=False, origin=origin)
    return notification


@transaction.atomic
def notification_mark_all_read(*, user, origin: str | None = None) -> int:
    updated = Notification.objects.filter(recipient=user, read_at__isnull=True).update(read_at=timezone.now())
    if updated:
        _publish_read(user_id=user.pk, ids=None, all_read=True, origin=origin)
    return updated
