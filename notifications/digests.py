"""Digests: a member gets the entries of one kind held and sent as one message per window (hourly,
or daily at a local HH:MM in their time zone), listing them in seq order.

Built on the log. When an entry is published, each audience member with a DigestSetting for its
kind gets a DigestItem (in publish's statement): the in-app fan-out, the send fan-out and the fence
skip that (entry, member), deciding from the record, the same on every attempt. Beat's
`digests_publish_due` takes the items whose window ended (`digestitem_due`, FOR UPDATE SKIP LOCKED),
and per member x kind x window publishes one `digest` entry (audience = the member) whose payload
lists them; every channel renders it like any entry (in-app: one inbox row; email: one mail).
Exactly once: a Digest row is unique per member x kind x window and is written in the transaction
that publishes the entry and marks the items, so a crashed or retried run publishes nothing twice
and loses nothing. Items that arrive for a window already sent (their publish committed after the
run) move to the member's next window.
"""
import logging

from django.db import connection, transaction
from django.utils import timezone

from notifications import policy
from notifications.categories import CATEGORIES
from notifications.channels import registry
from notifications.delivery.kicks import streams_kick_all
from notifications.delivery.streams import streams_ensure_for_members
from notifications.kinds import KINDS, kind_get
from notifications.models import DigestSetting, LogEntry
from notifications.publish import publish

logger = logging.getLogger("herald.delivery")

DIGEST_KIND = "digest"

_DUE_SQL = """
SELECT DISTINCT organization_id, user_id, kind, due_at FROM notifications_digestitem
WHERE digest_id IS NULL AND due_at <= now()
ORDER BY due_at, organization_id, user_id, kind
LIMIT %s
"""

_LOCK_SQL = """
SELECT id, entry_id FROM notifications_digestitem
WHERE organization_id = %s AND user_id = %s AND kind = %s AND due_at = %s AND digest_id IS NULL
ORDER BY seq
FOR UPDATE SKIP LOCKED
"""

_CLAIM_WINDOW_SQL = """
INSERT INTO notifications_digest (organization_id, user_id, kind, window_end, items, created_at)
VALUES (%s, %s, %s, %s, %s, now())
ON CONFLICT (user_id, organization_id, kind, window_end) DO NOTHING
RETURNING id
"""


def _item(entry: LogEntry) -> dict:
    kind, view = kind_get(entry.kind), entry.view()
    return {"seq": entry.seq, "kind": entry.kind, "title": kind.title(view)[:255], "body": kind.body(view)[:1000],
            "occurred_at": entry.occurred_at.isoformat()}


def _category(entries: list[LogEntry]) -> str:
    first = entries[0]
    kind = KINDS.get(first.kind)
    if kind is not None and kind.payload_category:
        return str((first.payload or {}).get("category") or kind.category)
    return kind.category if kind is not None and kind.category in CATEGORIES else "activity"


def _daily(*, organization_id: int, user_id: int, kind: str) -> bool:
    setting = DigestSetting.objects.filter(organization_id=organization_id, user_id=user_id, kind=kind).first()
    return bool(setting and setting.frequency == DigestSetting.Frequency.DAILY)


# The member's next window after the one these items missed: the next hour, or the same local time
# on the next local day (not 24 hours later: across a DST change that is another local time, a
# window of its own).
_NEXT_WINDOW_SQL = """
UPDATE notifications_digestitem i
SET due_at = CASE WHEN %(daily)s THEN ((i.due_at AT TIME ZONE u.time_zone) + interval '1 day') AT TIME ZONE u.time_zone
                  ELSE i.due_at + interval '1 hour' END
FROM organizations_user u WHERE u.id = i.user_id AND i.id = ANY(%(ids)s)
"""


_QUIET_SQL = """
SELECT u.time_zone, q.quiet_hours_start, q.quiet_hours_end FROM organizations_user u
JOIN notifications_membernotificationsettings q ON q.user_id = u.id WHERE u.id = %s
"""


def _quiet_release(cursor, user_id: int):
    """When the member's quiet hours in progress end (None: not in quiet hours). A digest of a
    promotional kind is held like the sends it lists (notifications.policy)."""
    cursor.execute(_QUIET_SQL, [user_id])
    row = cursor.fetchone()
    if row is None:
        return None
    return policy.quiet_release(timezone.now(), zone=row[0] or "UTC", start=row[1], end=row[2])


def _publish_window(cursor, organization_id: int, user_id: int, kind: str, window_end) -> bool:
    cursor.execute(_LOCK_SQL, [organization_id, user_id, kind, window_end])
    rows = cursor.fetchall()
    if not rows:
        return False  # another run has them
    item_ids = [r[0] for r in rows]
    entries = list(LogEntry.objects.filter(id__in=[r[1] for r in rows]).order_by("seq"))
    category = _category(entries)
    if CATEGORIES.get(category) is not None and CATEGORIES[category].promotional:
        release = _quiet_release(cursor, user_id)
        if release is not None:  # the member's quiet hours: the digest waits until they end
            cursor.execute("UPDATE notifications_digestitem SET due_at = %s WHERE id = ANY(%s)", [release, item_ids])
            return False
    cursor.execute(_CLAIM_WINDOW_SQL, [organization_id, user_id, kind, window_end, len(rows)])
    claimed = cursor.fetchone()
    if claimed is None:
        # This window went out already; these were published as it closed: the next window takes them.
        cursor.execute(_NEXT_WINDOW_SQL, {"daily": _daily(organization_id=organization_id, user_id=user_id, kind=kind),
                                          "ids": item_ids})
        return False
    label = kind_get(entries[0].kind).name if entries[0].kind != "message" else kind
    payload = {"kind": kind, "label": label, "category": category, "window_end": window_end.isoformat(),
               "count": len(entries), "first_seq": entries[0].seq, "last_seq": entries[-1].seq,
               "items": [_item(e) for e in entries]}
    entry = publish(organization_id=organization_id, kind=DIGEST_KIND, payload=payload, audience=[user_id])
    if policy.is_locked(payload["category"]):  # a transactional kind: it reaches the member opted in or not
        _streams_wake(organization_id, user_id, entry)
    cursor.execute("UPDATE notifications_digest SET entry_id = %s WHERE id = %s", [entry.id, claimed[0]])
    cursor.execute("UPDATE notifications_digestitem SET digest_id = %s WHERE id = ANY(%s)", [claimed[0], item_ids])
    return True


def _streams_wake(organization_id: int, user_id: int, entry: LogEntry) -> None:
    """The member's on-demand streams (email) the digest needs, made or woken (sends only) and
    kicked on commit, as a transactional send does (notifications.send.services)."""
    channels = [c.name for c in registry.all_channels() if c.on_demand and c.name in kind_get(DIGEST_KIND).channels]
    streams = streams_ensure_for_members(org_id=organization_id, user_ids=[user_id], seq=entry.seq,
                                         channels=channels)
    if streams:
        transaction.on_commit(lambda: _kick(organization_id, streams), robust=True)


def _kick(organization_id: int, streams: list[tuple[str, str]]) -> None:
    try:
        streams_kick_all(org_id=organization_id, streams=streams)
    except Exception:
        logger.warning("digest streams not kicked (broker or Redis unavailable); the sweeper will re-kick them",
                       extra={"org_id": organization_id}, exc_info=True)


def digests_publish_due(*, limit: int = 200) -> int:
    """Beat: one digest entry per member x kind x window whose window ended; each in its own
    transaction (a failure rolls back that digest only, and the next run retries it)."""
    with connection.cursor() as cursor:
        cursor.execute(_DUE_SQL, [limit])
        windows = cursor.fetchall()
    published = 0
    for organization_id, user_id, kind, window_end in windows:
        with transaction.atomic(), connection.cursor() as cursor:
            published += _publish_window(cursor, organization_id, user_id, kind, window_end)
    return published

