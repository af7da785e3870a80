"""Times of scheduled sends in each recipient's zone: `deliver_at_local` ("HH:MM", optionally with a
date) as a UTC instant, at acceptance and again when a recipient changes zone before their time
(PATCH /api/v1/me time_zone: their rows follow them, in the transaction of the change)."""
import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db import connection

LOCAL_TIME = re.compile(r"^(?:(?P<date>\d{4}-\d{2}-\d{2})[T ])?(?P<time>\d{2}:\d{2})$")


def local_due(value: str, zone: str, now: datetime) -> datetime:
    """`HH:MM` (the next such time in the zone) or `YYYY-MM-DD HH:MM` in the zone, as UTC. A local
    time that does not exist (DST gap) moves forward by the gap; an ambiguous one (DST overlap)
    takes the first occurrence (fold=0)."""
    match = LOCAL_TIME.match(value)
    tz = ZoneInfo(zone)
    at = time.fromisoformat(match["time"])
    day = date.fromisoformat(match["date"]) if match["date"] else now.astimezone(tz).date()
    due = datetime.combine(day, at, tzinfo=tz).astimezone(UTC)
    if not match["date"] and due <= now:
        due = datetime.combine(day + timedelta(days=1), at, tzinfo=tz).astimezone(UTC)
    return due


def local_due_moved(value: str, *, due: datetime, old_zone: str, new_zone: str, now: datetime) -> datetime:
    """The same local time on the same local day, in the new zone: the day the recipient was to get
    it (the send's date, or the day of its due time in the old zone). Already past in the new
    zone: due now (late rather than a day later)."""
    match = LOCAL_TIME.match(value)
    at = time.fromisoformat(match["time"])
    day = date.fromisoformat(match["date"]) if match["date"] else due.astimezone(ZoneInfo(old_zone)).date()
    moved = datetime.combine(day, at, tzinfo=ZoneInfo(new_zone)).astimezone(UTC)
    return max(moved, now)


# The member's rows of deliver_at_local sends not yet due, one per send (a send's rows for one member
# share their due time), their sends locked first (the dispatcher and a cancel lock a send before
# its rows: the same order, no deadlock).
_MEMBER_SCHEDULED_SQL = """
SELECT s.id, s.deliver_at_local, min(sd.due_at)
FROM notifications_senddelivery sd JOIN notifications_send s ON s.id = sd.send_id
WHERE sd.user_id = %(user)s AND sd.state = 'scheduled' AND sd.due_at > %(now)s
  AND s.status = 'scheduled' AND s.deliver_at_local <> ''
GROUP BY s.id, s.deliver_at_local
"""

_LOCK_SQL = "SELECT id FROM notifications_send WHERE id = ANY(%s) ORDER BY id FOR UPDATE"

_MOVE_SQL = """
UPDATE notifications_senddelivery sd SET due_at = m.due_at, updated_at = now()
FROM unnest(%(sends)s::bigint[], %(dues)s::timestamptz[]) AS m(send_id, due_at)
WHERE sd.send_id = m.send_id AND sd.user_id = %(user)s AND sd.state = 'scheduled' AND sd.due_at > %(now)s
"""

_SEND_DUE_SQL = """
UPDATE notifications_send s
SET due_at = (SELECT min(sd.due_at) FROM notifications_senddelivery sd
              WHERE sd.send_id = s.id AND sd.state = 'scheduled')
WHERE s.id = ANY(%s) AND s.status = 'scheduled'
"""


def member_schedules_move(*, user_id: int, old_zone: str, new_zone: str, now: datetime) -> int:
    """A member changed zone: their rows of deliver_at_local sends that are not yet due move to the
    same local time in the new zone, and each send's due time follows (set-based: one read, one
    lock, two updates, whatever the number of sends). Sends at an absolute time (send_at) stay.
    Returns how many sends moved. Call in the transaction of the change."""
    if old_zone == new_zone:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(_MEMBER_SCHEDULED_SQL, {"user": user_id, "now": now})
        rows = cursor.fetchall()
        if not rows:
            return 0
        sends = [row[0] for row in rows]
        cursor.execute(_LOCK_SQL, [sends])
        dues = [local_due_moved(value, due=due, old_zone=old_zone or "UTC", new_zone=new_zone or "UTC", now=now)
                for _, value, due in rows]
        cursor.execute(_MOVE_SQL, {"sends": sends, "dues": dues, "user": user_id, "now": now})
        cursor.execute(_SEND_DUE_SQL, [sends])
    return len(sends)
