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
    A stream that carried sends only (`sends_only`) carries every entry it wants from now on.
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
                SET active = true, sends_only = false, updated_at = clock_timestamp(),
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


# A transactional send's rows on a channel whose member destination is their account (email: a
# stream per (organization, channel, str(user id)), `Channel.on_demand`) need the member's stream
# (a stream of sends only carries its member's sends and entries of a transactional category):
# one statement makes it for the recipients who lack an active stream of their own, as a stream of
# sends only that starts right before the send's entry (no replay of the organization's history),
# or wakes their resting one there. Run under the organization's row lock publish() took, so the
# entry is the organization's last. An active stream of sends only is locked, not rewritten (ON
# CONFLICT locks every conflicting row, updates those its WHERE allows): the lock waits for a fence
# that is putting it to rest, so it cannot rest past this entry; if it did, it is woken; else
# publish() kicks it with the organization's active streams. The members' own streams are read once,
# as a hashed set (a probe per row also scans the index entries this statement adds: quadratic).
_SENDS_ONLY_INSERT = """
INSERT INTO notifications_deliverystream AS s
    (organization_id, channel, destination, user_id, delivered_seq, head_attempts, last_error, on_dead_letter,
     held, active, sends_only, updated_at)
SELECT %(org)s, n.channel, n.user_id::text, n.user_id, %(seq)s - 1, 0, '', 'skip', false, true, true,
       clock_timestamp()
FROM ({needed}) n
WHERE (n.user_id, n.channel::text) NOT IN (  -- a hashed subplan, read once before the first insert
    SELECT a.user_id, a.channel::text FROM notifications_deliverystream a
    WHERE a.organization_id = %(org)s AND a.channel = ANY(%(channels)s) AND a.active AND NOT a.sends_only
      AND a.user_id IS NOT NULL)
ON CONFLICT (organization_id, channel, destination) DO UPDATE
    SET active = true, sends_only = true, user_id = EXCLUDED.user_id, updated_at = clock_timestamp(),
        delivered_seq = GREATEST(s.delivered_seq, EXCLUDED.delivered_seq)
    WHERE NOT s.active
RETURNING s.channel, s.destination
"""
# The send's recipients of the entry whose rows on those channels are queued.
_SEND_STREAMS_SQL = _SENDS_ONLY_INSERT.format(needed="""
    SELECT d.user_id, d.channel FROM notifications_senddelivery d
    WHERE d.send_id = %(send)s AND d.entry_id = %(entry)s AND d.state = 'queued' AND d.channel = ANY(%(channels)s)""")
# Members, on each of the channels (a digest of a transactional kind).
_MEMBER_STREAMS_SQL = _SENDS_ONLY_INSERT.format(needed="""
    SELECT u.user_id, c.channel FROM unnest(%(users)s::bigint[]) AS u(user_id)
    CROSS JOIN unnest(%(channels)s::text[]) AS c(channel)""")


def _sends_only_ensure(sql: str, params: dict) -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [(channel, destination) for channel, destination in cursor.fetchall()]


def streams_ensure_for_send(*, org_id: int, send_id: int, entry_id: int, seq: int,
                            channels: list[str]) -> list[tuple[str, str]]:
    """The streams a transactional send's entry needs on `channels` (on-demand channels), made or
    woken in one statement whatever the number of recipients; returns them (to kick after commit)."""
    if not channels:
        return []
    return _sends_only_ensure(_SEND_STREAMS_SQL, {"org": org_id, "send": send_id, "entry": entry_id, "seq": seq,
                                                  "channels": list(channels)})


def streams_ensure_for_members(*, org_id: int, user_ids: list[int], seq: int,
                               channels: list[str]) -> list[tuple[str, str]]:
    """The same for an entry of a transactional category to `user_ids` that is not a send (a digest
    of a transactional send kind), in the entry's transaction."""
    if not channels or not user_ids:
        return []
    return _sends_only_ensure(_MEMBER_STREAMS_SQL, {"org": org_id, "users": list(user_ids), "seq": seq,
                                                    "channels": list(channels)})


# A stream of sends only rests once it is caught up: nothing pending, its cursor at the
# organization's last seq as this statement reads it (a new snapshot, taken after the caller locked
# the stream: a send that committed since is seen; one still open wakes it after this commits).
_REST_SQL = """
UPDATE notifications_deliverystream s SET active = false, updated_at = clock_timestamp()
FROM organizations_organization o
WHERE s.id = %s AND s.sends_only AND s.active AND NOT s.held AND o.id = s.organization_id
  AND s.delivered_seq >= o.last_event_seq
  AND NOT EXISTS (SELECT 1 FROM notifications_delivery d WHERE d.stream_id = s.id AND d.status = 'pending')
"""


def stream_rest(*, stream_id: int) -> bool:
    """The fence, under the stream's lock, after it moved the cursor: a caught-up stream of sends
    only goes inactive (no kick, no sweep, no backlog) until a send wakes it."""
    with connection.cursor() as cursor:
        cursor.execute(_REST_SQL, [stream_id])
        return cursor.rowcount == 1


def stream_sends_only(*, org_id: int, channel: str, destination: str) -> None:
    """The member opted out of the channel: their stream stops carrying log entries at once, keeps
    the sends already accepted for them (their rows say queued) and rests when caught up."""
    with connection.cursor() as cursor:
        cursor.execute("""UPDATE notifications_deliverystream SET sends_only = true, updated_at = clock_timestamp()
                          WHERE organization_id = %s AND channel = %s AND destination = %s AND active
                          RETURNING id""", [org_id, channel, destination])
        row = cursor.fetchone()
    if row is not None:
        stream_rest(stream_id=row[0])
