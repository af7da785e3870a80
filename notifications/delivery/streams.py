"""Stream rows: create, re-activate, deactivate, and the database clock every gating time uses.
Below the channels in the layers (channels that manage destinations, like webhooks, call it);
the fence that drains streams is notifications.delivery.fence."""
from django.db import connection
from django.db.models import DateTimeField, Func

from notifications.models import DeliveryStream


class DbClock(Func):
    """Postgres' clock_timestamp(): the database's current time, even inside a long transaction
    (now() is the transaction's start). Every time that gates work is read or written with it."""

    template = "clock_timestamp()"
    output_field = DateTimeField()


def stream_ensure(*, org_id: int, channel: str, destination: str = "", start_at_current: bool = False,
                  user_id: int | None = None) -> None:
    """Create the stream if missing, or re-activate it. A stream added later (Slack configured
    today) starts at the organization's current seq rather than replaying its whole history.
    `user_id`: the member a per-recipient destination belongs to (DeliveryStream.user)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO notifications_deliverystream
                (organization_id, channel, destination, user_id, delivered_seq, head_attempts, last_error,
                 on_dead_letter, held, active, updated_at)
            SELECT o.id, %s, %s, %s, CASE WHEN %s THEN o.last_event_seq ELSE 0 END, 0, '', 'skip', false, true,
                   clock_timestamp()
            FROM organizations_organization o WHERE o.id = %s
            ON CONFLICT (organization_id, channel, destination) DO UPDATE
                SET active = true, updated_at = clock_timestamp(),
                    user_id = COALESCE(EXCLUDED.user_id, notifications_deliverystream.user_id),
                    delivered_seq = CASE WHEN notifications_deliverystream.active OR NOT %s
                                         THEN notifications_deliverystream.delivered_seq
                                         ELSE GREATEST(notifications_deliverystream.delivered_seq,
                                                       EXCLUDED.delivered_seq) END
            """,
            [channel, destination, user_id, start_at_current, org_id, start_at_current],
        )


def stream_deactivate(*, org_id: int, channel: str, destination: str = "") -> None:
    """The destination is gone or disabled: the stream stops being kicked or swept. Not deleted: a
    send in flight keeps its rows, and the stream's records stay."""
    DeliveryStream.objects.filter(organization_id=org_id, channel=channel, destination=destination).update(
        active=False, updated_at=DbClock())
