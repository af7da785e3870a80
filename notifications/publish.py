"""The one way into notifications from other apps: append a fact to the organization's log.

`publish()` runs in the caller's transaction: it takes the organization's next seq (the row lock
of that UPDATE serializes writers per organization; a rollback returns the number, so the log
stays gapless) and writes the entry in the same statement. On commit it kicks every stream of the
organization; with the broker or Redis down the kick is lost and the sweeper finds the stream.

`push_user` / `push_org` send an ephemeral WebSocket message (progress bars, presence) after
commit: not logged, no seq, lost if nobody listens.
"""
import json
import logging
from collections.abc import Iterable
from datetime import datetime

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from config.errors import NotFound

from notifications import events, metrics, realtime
from notifications.kinds import kind_get
from notifications.models import LogEntry
from notifications.preferences import email_streams_sync, recipient_streams_sync
from notifications.delivery.streams import stream_ensure
from notifications.delivery.kicks import streams_kick_all
from notifications.email import profile_updated_email_queue
from notifications.send.schedule import member_schedules_move
from organizations.models import Organization

logger = logging.getLogger("herald.delivery")

# When a digested entry is due (its DigestItem.due_at), for entry `e` held for member `u` by digest
# setting `d`: the end of the member's local hour (Asia/Kolkata's ends at :30 UTC), or the next
# `daily_at` in their zone. Shared by the single and the batch append.
_DIGEST_DUE_SQL = """CASE WHEN d.frequency = 'hourly'
                THEN (date_trunc('hour', e.occurred_at AT TIME ZONE u.time_zone) + interval '1 hour')
                     AT TIME ZONE u.time_zone
                WHEN ((e.occurred_at AT TIME ZONE u.time_zone)::date + d.daily_at) AT TIME ZONE u.time_zone
                     > e.occurred_at
                THEN ((e.occurred_at AT TIME ZONE u.time_zone)::date + d.daily_at) AT TIME ZONE u.time_zone
                ELSE ((e.occurred_at AT TIME ZONE u.time_zone)::date + 1 + d.daily_at) AT TIME ZONE u.time_zone END"""

# Allocates the seq and writes the entry in one round trip. Audience NULL: the members right now.
# Also returns the organization's active streams, which the kick on commit wakes (a stream that
# becomes active between this statement and the commit starts at the current seq or is swept).
# In the same statement, the audience members who get this kind as a digest have the entry held for
# it (notifications.digests): a DigestItem due at the end of their window (hourly, or daily at a local
# time in their zone), so every channel decides from that record, the same on every attempt.
# Two texts, by whether the audience is given: in one statement `COALESCE(%(audience)s, ARRAY(...))`
# folds to the array in a custom plan but keeps the membership read in the generic one, which then
# never looks as cheap, so every send (an audience given) was planned anew (0.48 ms of planning for
# 0.2 ms of execution, pg_stat_statements under bench/send_api.py).
_AUDIENCE_GIVEN = "%(audience)s::bigint[]"
_AUDIENCE_MEMBERS = ("ARRAY(SELECT m.user_id FROM organizations_membership m WHERE m.organization_id = org.id "
                     "ORDER BY m.user_id)")
_APPEND_TEMPLATE = f"""
WITH org AS (
    UPDATE organizations_organization SET last_event_seq = last_event_seq + 1, {Organization.LAST_EVENT_AT_SQL}
    WHERE id = %(org)s RETURNING id, last_event_seq, clock_timestamp() AS at
), entry AS (
    INSERT INTO notifications_logentry
        (organization_id, seq, kind, payload, actor_id, actor_name, audience, occurred_at)
    SELECT org.id, org.last_event_seq, %(kind)s, %(payload)s::jsonb, %(actor_id)s, %(actor_name)s, {{audience}},
           COALESCE(%(occurred_at)s, org.at)
    FROM org
    RETURNING id, organization_id, seq, audience, occurred_at
), held AS (
    INSERT INTO notifications_digestitem (organization_id, user_id, entry_id, seq, kind, due_at)
    SELECT e.organization_id, d.user_id, e.id, e.seq, d.kind,
           {_DIGEST_DUE_SQL}
    FROM entry e
    JOIN notifications_digestsetting d ON d.organization_id = e.organization_id AND d.kind = %(digest_key)s
         AND d.user_id = ANY(e.audience)
    JOIN organizations_user u ON u.id = d.user_id
    ON CONFLICT DO NOTHING
)
SELECT e.id, e.seq, e.audience, e.occurred_at,
       ARRAY(SELECT ARRAY[s.channel, s.destination] FROM notifications_deliverystream s
             WHERE s.organization_id = e.organization_id AND s.active AND NOT s.held
             ORDER BY s.id)
FROM entry e
"""
_APPEND_SQL = {True: _APPEND_TEMPLATE.replace("{audience}", _AUDIENCE_GIVEN),
               False: _APPEND_TEMPLATE.replace("{audience}", _AUDIENCE_MEMBERS)}


def _actor_fields(actor) -> tuple[int | None, str]:
    if actor is None:
        return None, ""
    if getattr(actor, "pk", None):
        return actor.pk, actor.get_username()
    return None, str(actor)[:150]  # an API key or a system actor: a name only


def publish(*, organization_id: int, kind: str, payload: dict, actor=None,
            audience: Iterable[int] | None = None, occurred_at: datetime | None = None) -> LogEntry:
    """Append an entry to the organization's log and notify its streams after commit.

    `audience`: the user ids to notify, or None for every member (taken now, with the entry).
    Must be called inside transaction.atomic(); raises ApplicationError for an unknown kind and
    organizations' NotFound when the organization does not exist."""
    declared = kind_get(kind)
    if not connection.in_atomic_block:
        raise RuntimeError("publish() must run inside the caller's transaction")
    actor_id, actor_name = _actor_fields(actor)
    with connection.cursor() as cursor:
        params = {"org": organization_id, "kind": kind, "payload": json.dumps(payload, cls=DjangoJSONEncoder),
                  "actor_id": actor_id, "actor_name": actor_name, "occurred_at": occurred_at,
                  "digest_key": declared.digest_key_for(payload)}
        if audience is not None:
            params["audience"] = sorted(set(audience))
        cursor.execute(_APPEND_SQL[audience is not None], params)
        row = cursor.fetchone()
    if row is None:
        raise NotFound("Organization not found.", code="organization_not_found")
    entry = LogEntry(id=row[0], organization_id=organization_id, seq=row[1], kind=kind, payload=payload,
                     actor_id=actor_id, actor_name=actor_name, audience=row[2], occurred_at=row[3])
    entry._state.adding, entry._state.db = False, "default"
    streams = [(channel, destination) for channel, destination in row[4]]
    transaction.on_commit(lambda: _committed(entry, streams), robust=True)
    return entry


# publish() for N entries of one organization at once (an API batch send): the organization's next N
# seqs reserved in one UPDATE ... RETURNING (its row lock serializes writers; a rollback returns them,
# so the log stays gapless), the entries written in input order (seq = first + ordinality), their
# digest holds, and the organization's active streams, all in one statement. The entries come as one
# JSON array of [payload, digest key, sorted audience]: one json.dumps, where arrays of parameters
# cost the client-side binding an escape per element (most of the web's CPU of a batch, py-spy).
# occurred_at is the clock when the organization's row lock was granted, not when the transaction
# began (now()): a send batch prepares its rows inside the transaction first, and the drains' lag
# counts from occurred_at, so that preparation would read as backlog and trip admission control.
# Taken under the lock, it grows with seq within an organization.
_APPEND_MANY_SQL = f"""
WITH org AS (
    UPDATE organizations_organization SET last_event_seq = last_event_seq + %(n)s, {Organization.LAST_EVENT_AT_SQL}
    WHERE id = %(org)s RETURNING id, last_event_seq - %(n)s AS base, clock_timestamp() AS at
), input AS (
    SELECT x.ord, x.e -> 0 AS payload, x.e ->> 1 AS digest_key,
           ARRAY(SELECT jsonb_array_elements_text(x.e -> 2)::bigint) AS audience
    FROM jsonb_array_elements(%(entries)s::jsonb) WITH ORDINALITY AS x(e, ord)
), entry AS (
    INSERT INTO notifications_logentry
        (organization_id, seq, kind, payload, actor_id, actor_name, audience, occurred_at)
    SELECT org.id, org.base + i.ord, %(kind)s, i.payload, %(actor_id)s, %(actor_name)s, i.audience, org.at
    FROM org CROSS JOIN input i
    ORDER BY i.ord
    RETURNING id, organization_id, seq, audience, occurred_at
), held AS (
    INSERT INTO notifications_digestitem (organization_id, user_id, entry_id, seq, kind, due_at)
    SELECT e.organization_id, d.user_id, e.id, e.seq, d.kind,
           {_DIGEST_DUE_SQL}
    FROM entry e
    JOIN org ON true
    JOIN input i ON i.ord = e.seq - org.base
    JOIN notifications_digestsetting d ON d.organization_id = e.organization_id AND d.kind = i.digest_key
         AND d.user_id = ANY(e.audience)
    JOIN organizations_user u ON u.id = d.user_id
    ON CONFLICT DO NOTHING
)
SELECT e.id, e.seq, e.audience, e.occurred_at, st.streams
FROM entry e CROSS JOIN (
    SELECT ARRAY(SELECT ARRAY[s.channel, s.destination] FROM notifications_deliverystream s
                 WHERE s.organization_id = %(org)s AND s.active AND NOT s.held ORDER BY s.id) AS streams) st
ORDER BY e.seq
"""


def publish_many(*, organization_id: int, kind: str, payloads: list[dict], audiences: list[Iterable[int]],
                 actor=None) -> list[LogEntry]:
    """publish() for several entries of one organization, in one statement: gapless seqs in the
    order given, one kick of the organization's streams after commit. Returns the entries in that
    order. Must be called inside transaction.atomic()."""
    declared = kind_get(kind)
    if not connection.in_atomic_block:
        raise RuntimeError("publish_many() must run inside the caller's transaction")
    if len(payloads) != len(audiences):
        raise ValueError("one audience per payload")
    if not payloads:
        return []
    actor_id, actor_name = _actor_fields(actor)
    entries_json = json.dumps([[payload, declared.digest_key_for(payload), sorted(set(audience))]
                               for payload, audience in zip(payloads, audiences, strict=True)],
                              cls=DjangoJSONEncoder)
    with connection.cursor() as cursor:
        cursor.execute(_APPEND_MANY_SQL, {"org": organization_id, "n": len(payloads), "kind": kind,
                                          "entries": entries_json, "actor_id": actor_id, "actor_name": actor_name})
        rows = cursor.fetchall()
    if not rows:
        raise NotFound("Organization not found.", code="organization_not_found")
    entries = []
    for row, payload in zip(rows, payloads, strict=True):
        entry = LogEntry(id=row[0], organization_id=organization_id, seq=row[1], kind=kind, payload=payload,
                         actor_id=actor_id, actor_name=actor_name, audience=row[2], occurred_at=row[3])
        entry._state.adding, entry._state.db = False, "default"
        entries.append(entry)
    streams = [(channel, destination) for channel, destination in rows[0][4]]
    transaction.on_commit(lambda: _committed_many(entries, streams), robust=True)
    return entries


def _committed_many(entries: list[LogEntry], streams: list[tuple[str, str]]) -> None:
    metrics.EVENTS_TOTAL.labels(action=entries[0].kind).inc(len(entries))
    try:
        streams_kick_all(org_id=entries[0].organization_id, streams=streams)
    except Exception:
        logger.warning("streams not kicked (broker or Redis unavailable); the sweeper will re-kick them",
                       extra={"org_id": entries[0].organization_id, "seq": entries[-1].seq}, exc_info=True)


def _committed(entry: LogEntry, streams: list[tuple[str, str]]) -> None:
    metrics.EVENTS_TOTAL.labels(action=entry.payload.get("action", entry.kind)).inc()
    try:
        streams_kick_all(org_id=entry.organization_id, streams=streams)
    except Exception:
        logger.warning("streams not kicked (broker or Redis unavailable); the sweeper will re-kick them",
                       extra={"org_id": entry.organization_id, "seq": entry.seq}, exc_info=True)


def push_user(*, user_id: int, message: dict) -> None:
    """An ephemeral WebSocket message to one user's connections, after commit."""
    transaction.on_commit(lambda: realtime.publish([(realtime.user_group(user_id), message)]), robust=True)


def push_org(*, organization_id: int, message: dict) -> None:
    """An ephemeral WebSocket message to every connection of the organization, after commit."""
    transaction.on_commit(lambda: realtime.publish([(realtime.org_group(organization_id), message)]), robust=True)


def entry_message(entry: LogEntry) -> dict:
    """The public shape of an entry (as on the WebSocket), for other apps' API answers."""
    return events.entry_message(entry=entry)


# --- lifecycle hooks for other apps (organizations) -------------------------------------------

def organization_created(*, organization_id: int) -> None:
    """The organization's in-app stream exists from the start, so the sweeper can find its first
    entries even if their kick was lost (broker down at commit)."""
    stream_ensure(org_id=organization_id, channel="inapp")


def membership_changed(*, user_id: int) -> None:
    """After commit, tell the user's open connections to re-read their organizations. Lost with
    Redis down: the live consumer's periodic check re-reads memberships."""
    def push() -> None:
        try:
            realtime.membership_changed_push(user_id=user_id)
        except Exception:
            logger.warning("membership change not pushed", extra={"user_id": user_id}, exc_info=True)

    transaction.on_commit(push)


def destination_enabled(*, organization_id: int, channel: str, destination: str = "") -> None:
    """A destination was configured (e.g. the organization's Slack channel): its stream starts at
    the organization's current seq, not with its whole history. Call in the caller's transaction."""
    stream_ensure(org_id=organization_id, channel=channel, destination=destination, start_at_current=True)


def membership_added(*, user, organization_id: int) -> None:
    """A member who opted in to emails everywhere gets this organization's email stream, and their
    phone and devices get its SMS, WhatsApp and push streams."""
    email_streams_sync(user=user, organization_ids=[organization_id])
    recipient_streams_sync(user=user, organization_ids=[organization_id])


def member_time_zone_changed(*, user_id: int, old_zone: str, new_zone: str) -> int:
    """A member changed zone: their deliver_at_local sends not yet due move to the same local time in
    the new zone (rows and each send's due time), in the caller's transaction. Returns the sends."""
    return member_schedules_move(user_id=user_id, old_zone=old_zone, new_zone=new_zone, now=timezone.now())


def profile_updated(*, user, changed: list[str]) -> None:
    """Queue the confirmation email of a profile change, in the caller's transaction; a changed
    phone number starts (or stops) the member's SMS and WhatsApp streams."""
    profile_updated_email_queue(user=user, changed=changed)
    if "phone" in changed:
        recipient_streams_sync(user=user)
