"""The send API's writes: accept a send (one org-log entry of kind "message" plus a status row per
recipient x channel, all set-based), cancel what has not gone out, dispatch scheduled sends.

A send's entry goes through the same log, fence and channels as every other fact: the in-app
fan-out and the fence move each status row out of `queued` exactly once (notifications.SendDelivery
is unique per send x user x channel; channels/inapp.py and delivery/status.py).
"""
import json
import logging
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models.functions import Now
from django.utils import timezone

from config.errors import ApplicationError, Conflict, NotFound
from notifications import policy
from notifications.categories import category_get
from notifications.channels import registry
from notifications.delivery.kicks import streams_kick_all
from notifications.delivery.streams import streams_ensure_for_send
from notifications.errors import NotificationsError
from notifications.kinds import kind_get
from notifications.models import Send, SendDelivery
from notifications.publish import publish, publish_many
from notifications.send.rendering import send_render
from notifications.send.schedule import LOCAL_TIME, local_due

logger = logging.getLogger("herald.delivery")

MESSAGE_KIND = "message"
MAX_RECIPIENTS = 10_000
MAX_BATCH_SENDS = 1_000  # POST /send/batch: sends per request ...
MAX_BATCH_RECIPIENTS = 10_000  # ... and recipients of all of them together (a topic counts its members)
TOPICS = ("members",)

# The members a send reaches: every member (a topic), or those it names by id or email. The named
# read starts from the names (primary key, user_email_unique_ci) and never reads the organization's
# membership or the users table whole: with `OR` across the two tables (and the organization's
# members joined first) the planner hash-joined a scan of every user on each send (2.6 ms against
# 0.4 ms for 10 recipients, with the statistics of a table that grew since it was last analyzed).
_MEMBERS_ALL_SQL = """
SELECT u.id, lower(u.email), u.time_zone, q.quiet_hours_start, q.quiet_hours_end
FROM organizations_membership m JOIN organizations_user u ON u.id = m.user_id AND u.is_active
LEFT JOIN notifications_membernotificationsettings q ON q.user_id = u.id
WHERE m.organization_id = %(org)s
ORDER BY u.id
"""
_MEMBERS_NAMED_SQL = """
SELECT u.id, lower(u.email), u.time_zone, q.quiet_hours_start, q.quiet_hours_end
FROM organizations_user u
JOIN organizations_membership m ON m.organization_id = %(org)s AND m.user_id = u.id
LEFT JOIN notifications_membernotificationsettings q ON q.user_id = u.id
WHERE u.is_active AND u.id IN (
    SELECT unnest(%(ids)s::bigint[])
    UNION
    SELECT n.id FROM organizations_user n WHERE lower(n.email) = ANY(%(emails)s::text[]) AND n.email <> '')
ORDER BY u.id
"""
# Named by id only (the usual integration): the same read without the email branch. Postgres made a
# custom plan of the statement above on every send (0.4 ms of planning for 0.1 ms of execution,
# pg_stat_statements under bench/send_api.py); this one gets a generic plan after five executions.
_MEMBERS_IDS_SQL = """
SELECT u.id, lower(u.email), u.time_zone, q.quiet_hours_start, q.quiet_hours_end
FROM organizations_user u
JOIN organizations_membership m ON m.organization_id = %(org)s AND m.user_id = u.id
LEFT JOIN notifications_membernotificationsettings q ON q.user_id = u.id
WHERE u.is_active AND u.id = ANY(%(ids)s::bigint[])
ORDER BY u.id
"""

# The send row, written out (the ORM's create and save cost about a millisecond of CPU each on every
# send, config.rawrows); its payload and entry are written by the first status-row statement
# (_SEND_DONE_CTE), once the entry is published.
_SEND_INSERT_SQL = """
INSERT INTO notifications_send
    (organization_id, kind, category, data, payload, channels, priority, status, ordering_key, send_at,
     deliver_at_local, due_at, entry_id, recipients, created_by_id, api_key_id, created_at, cancelled_at)
VALUES (%(org)s, %(kind)s, %(category)s, %(data)s::jsonb, '{}'::jsonb, %(channels)s::varchar(32)[], %(priority)s,
        %(status)s, %(ordering_key)s, %(send_at)s, %(deliver_at_local)s, %(due_at)s, NULL, %(recipients)s,
        %(created_by)s, %(api_key)s, now(), NULL)
RETURNING id, created_at
"""
_SEND_DONE_CTE = """
WITH send_done AS (
    UPDATE notifications_send SET payload = %(payload)s::jsonb, entry_id = %(send_entry)s WHERE id = %(send)s
)
"""

# How far the organization's log is ahead of the slowest active stream of the send's channels.
_BACKLOG_SQL = """
SELECT COALESCE(max(o.last_event_seq - s.delivered_seq), 0)
FROM notifications_deliverystream s JOIN organizations_organization o ON o.id = s.organization_id
WHERE s.organization_id = %s AND s.channel = ANY(%s) AND s.active
"""


def send_backlog(*, organization_id: int, channels: list[str]) -> int:
    """Log entries not yet through the send's channels for this organization: the backlog a
    promotional send yields to (one indexed read)."""
    with connection.cursor() as cursor:
        cursor.execute(_BACKLOG_SQL, [organization_id, list(channels)])
        return int(cursor.fetchone()[0])


def _promotional_lane(*, organization_id: int, channels: list[str]) -> str | None:
    """None: go now; "hold": wait (transactional sends go first); "shed": past the limit."""
    backlog = send_backlog(organization_id=organization_id, channels=channels)
    if backlog >= settings.SEND_PROMOTIONAL_SHED_BACKLOG:
        return "shed"
    if backlog >= settings.SEND_PROMOTIONAL_DELAY_BACKLOG:
        return "hold"
    return None


@dataclass(frozen=True)
class Recipient:
    user_id: int
    time_zone: str
    locale: str | None = None  # the recipient's own locale, if known (else the organization's)
    quiet_hours_start: time | None = None
    quiet_hours_end: time | None = None


MAX_BIGINT = 2**63 - 1  # ids are bigints: a larger one names nothing, and Postgres refuses it as a parameter


def _field_error(field: str, message: str, code: str = "validation_error", status: int = 400) -> ApplicationError:
    return ApplicationError(message, code=code, status=status, extra={"fields": {field: [message]}})


def _recipients_parse(*, recipients: list | None, topic: str | None) -> tuple[list[int], list[str]]:
    """The user ids and emails a send names (checked for shape and count), none for a topic."""
    if topic is not None:
        if topic not in TOPICS:
            raise _field_error("recipients", f"Unknown topic {topic!r}; topics: {', '.join(TOPICS)}.")
        return [], []
    if not recipients:
        raise _field_error("recipients", "At least one recipient is required.")
    if len(recipients) > MAX_RECIPIENTS:
        raise _field_error("recipients", f"At most {MAX_RECIPIENTS} recipients per send.",
                           code=NotificationsError.TOO_MANY_RECIPIENTS)
    if not all((type(r) is int and 0 < r <= MAX_BIGINT) or (isinstance(r, str) and "@" in r and len(r) <= 254)
               for r in recipients):
        raise _field_error("recipients", "Each recipient is a user id (a positive integer) or an email address.")
    return sorted({r for r in recipients if type(r) is int}), sorted({r.strip().lower() for r in recipients
                                                                      if isinstance(r, str)})


def _members_read(*, organization_id: int, everyone: bool, ids: list[int], emails: list[str]) -> list[tuple]:
    with connection.cursor() as cursor:
        if everyone:
            cursor.execute(_MEMBERS_ALL_SQL, {"org": organization_id})
        elif not emails:
            cursor.execute(_MEMBERS_IDS_SQL, {"org": organization_id, "ids": ids})
        else:
            cursor.execute(_MEMBERS_NAMED_SQL, {"org": organization_id, "ids": ids, "emails": emails})
        return cursor.fetchall()


def _recipients_pick(rows: list[tuple], *, ids: list[int], emails: list[str], topic: str | None) -> list[Recipient]:
    """Of the members read (`rows`, by user id), those a send names; 404 `recipient_not_found` for
    a name that is not an active member (another organization's users look the same)."""
    if topic is None:
        found_ids = {row[0] for row in rows}
        found_emails = {row[1] for row in rows}
        missing = [i for i in ids if i not in found_ids] + [e for e in emails if e not in found_emails]
        if missing:
            raise NotFound(f"{len(missing)} recipient(s) are not members of this organization.",
                           code=NotificationsError.RECIPIENT_NOT_FOUND, extra={"recipients": missing[:100]})
    if not rows:
        raise _field_error("recipients", "The topic has no members.")
    return [Recipient(user_id=row[0], time_zone=row[2] or "UTC", quiet_hours_start=row[3], quiet_hours_end=row[4])
            for row in rows]


def send_recipients_resolve(*, organization_id: int, recipients: list | None, topic: str | None) -> list[Recipient]:
    """The members a send reaches, in one query. A user id or email that is not an active member of
    the organization is 404 `recipient_not_found` (another organization's users look the same)."""
    ids, emails = _recipients_parse(recipients=recipients, topic=topic)
    rows = _members_read(organization_id=organization_id, everyone=topic is not None, ids=ids, emails=emails)
    return _recipients_pick(rows, ids=ids, emails=emails, topic=topic)


def _channels_validate(channels: list[str] | None, template_channels: tuple[str, ...]) -> list[str]:
    kind = kind_get(MESSAGE_KIND)
    chosen = list(channels) if channels else [c for c in template_channels if c in kind.channels] or ["inapp"]
    if len(set(chosen)) != len(chosen):
        raise _field_error("channels", "A channel is listed twice.")
    for name in chosen:
        try:
            registry.get(name)
        except registry.UnknownChannel:
            raise _field_error("channels", f"Unknown channel {name!r}.", code=NotificationsError.UNKNOWN_CHANNEL)
        if name not in kind.channels:
            raise _field_error("channels", f"Sends cannot go to {name!r}; channels: {', '.join(kind.channels)}.",
                               code=NotificationsError.CHANNEL_NOT_SUPPORTED)
        if name not in template_channels:
            raise _field_error("channels", f"The template has no {name!r} part.",
                               code=NotificationsError.CHANNEL_NOT_SUPPORTED)
    return chosen


def deliver_at_local_validate(value: str) -> str:
    match = LOCAL_TIME.match(value or "")
    try:
        if match is None:
            raise ValueError(value)
        time.fromisoformat(match["time"])
        if match["date"]:
            date.fromisoformat(match["date"])
    except ValueError:
        raise _field_error("deliver_at_local", "Expected \"HH:MM\" or \"YYYY-MM-DD HH:MM\" (recipient's local time).")
    return value


def _quiet_hours_hold(recipients: list[Recipient], due: list[datetime | None], now: datetime) -> list[datetime | None]:
    """A promotional send is held for a recipient whose quiet hours it would fall into (now, or at
    its scheduled time): due when they end, in the recipient's zone (notifications.policy)."""
    out, cache = [], {}
    for recipient, at in zip(recipients, due, strict=True):
        if recipient.quiet_hours_start is None:
            out.append(at)
            continue
        when = at or now
        key = (recipient.time_zone, recipient.quiet_hours_start, recipient.quiet_hours_end, when)
        if key not in cache:
            cache[key] = policy.quiet_release(when, zone=recipient.time_zone, start=recipient.quiet_hours_start,
                                              end=recipient.quiet_hours_end)
        out.append(cache[key] or at)
    return out


def _due_times(recipients: list[Recipient], *, send_at: datetime | None, deliver_at_local: str,
               now: datetime) -> list[datetime | None]:
    if send_at is not None:
        return [send_at if send_at > now else None] * len(recipients)
    if deliver_at_local:
        by_zone: dict[str, datetime] = {}
        out = []
        for recipient in recipients:
            if recipient.time_zone not in by_zone:
                by_zone[recipient.time_zone] = local_due(deliver_at_local, recipient.time_zone, now)
            due = by_zone[recipient.time_zone]
            out.append(due if due > now else None)
        return out
    return [None] * len(recipients)


@dataclass
class _Prepared:
    """A send validated, resolved and rendered, ready to be written (alone or in a batch)."""
    fields: dict  # the send row's columns (as _send_insert takes them)
    people: list[Recipient]
    due: list[datetime | None]  # per recipient: None = now
    lane: str | None  # the promotional lane: None, "hold" or "shed"
    payload: dict  # the log entry's payload, without send_id

    @property
    def now_ids(self) -> list[int]:
        return [p.user_id for p, d in zip(self.people, self.due, strict=True) if d is None]


def _send_prepare(*, organization_id: int, people: list[Recipient] | None, recipients: list | None,
                  topic: str | None, kind: str, data: dict, channels: list[str] | None = None,
                  priority: str | None = None, send_at: datetime | None = None, deliver_at_local: str = "",
                  ordering_key: str = "", created_by_id: int | None = None, api_key_id: int | None = None,
                  templates: dict | None = None, lanes: dict | None = None) -> _Prepared:
    """Every check of a send and everything it needs written, without writing. `people`: its
    recipients if resolved already (a batch reads its members once); `templates`, `lanes`: caches
    shared by the sends of one batch (one template lookup per kind and locales, one backlog read
    per channel set)."""
    if send_at is not None and deliver_at_local:
        raise ApplicationError("Give send_at or deliver_at_local, not both.", code="validation_error",
                               extra={"fields": {"send_at": ["Not with deliver_at_local."],
                                                 "deliver_at_local": ["Not with send_at."]}})
    now = timezone.now()
    if send_at is not None and send_at > now + timedelta(days=settings.SEND_MAX_SCHEDULE_DAYS):
        raise _field_error("send_at", f"At most {settings.SEND_MAX_SCHEDULE_DAYS} days ahead.")
    if deliver_at_local:
        deliver_at_local_validate(deliver_at_local)
    if people is None:
        people = send_recipients_resolve(organization_id=organization_id, recipients=recipients, topic=topic)
    rendered = send_render(organization_id=organization_id, kind=kind, locales={p.locale for p in people}, data=data,
                           channels=channels, templates=templates)
    people = [replace(p, locale=rendered.locale) if p.locale is None else p for p in people]
    chosen = _channels_validate(channels, rendered.channels)
    for parts in rendered.parts.values():  # e.g. an SMS over 1,600 characters: 400 sms_too_long
        for name in chosen:
            registry.get(name).validate(parts.get(name) or {})
    if priority is None:
        priority = rendered.priority
    due = _due_times(people, send_at=send_at, deliver_at_local=deliver_at_local, now=now)
    if category_get(rendered.category).promotional:
        due = _quiet_hours_hold(people, due, now)
    lane = None
    if priority == Send.Priority.PROMOTIONAL and any(d is None for d in due):
        lane_key = tuple(chosen)
        if lanes is not None and lane_key in lanes:
            lane = lanes[lane_key]
        else:
            lane = _promotional_lane(organization_id=organization_id, channels=chosen)
            if lanes is not None:
                lanes[lane_key] = lane
        if lane == "hold":  # yields: due again after a hold, re-checked by the dispatcher
            held = now + timedelta(seconds=settings.SEND_PROMOTIONAL_HOLD_SECONDS)
            due = [d or held for d in due]
    scheduled = [d for d in due if d is not None]
    fields = {"organization_id": organization_id, "kind": kind, "category": rendered.category, "data": data,
              "channels": chosen, "priority": priority, "ordering_key": ordering_key, "send_at": send_at,
              "deliver_at_local": deliver_at_local, "recipients": len(people), "created_by_id": created_by_id,
              "api_key_id": api_key_id, "status": Send.Status.SCHEDULED if scheduled else Send.Status.QUEUED,
              "due_at": min(scheduled) if scheduled else None}
    payload = {"kind": kind, "locale": rendered.locale, "parts": rendered.parts, "data": data, "priority": priority,
               "category": rendered.category, "ordering_key": ordering_key}
    return _Prepared(fields=fields, people=people, due=due, lane=lane, payload=payload)


def _shed_prepared(prepared: _Prepared) -> Send:
    f = prepared.fields
    return _shed(organization_id=f["organization_id"], kind=f["kind"], category=f["category"], data=f["data"],
                 channels=f["channels"], priority=f["priority"], ordering_key=f["ordering_key"],
                 people=prepared.people, created_by_id=f["created_by_id"], api_key_id=f["api_key_id"])


@transaction.atomic(savepoint=False)
def send_create(*, organization_id: int, recipients: list | None, topic: str | None, kind: str, data: dict,
                channels: list[str] | None = None, priority: str | None = None, send_at: datetime | None = None,
                deliver_at_local: str = "", ordering_key: str = "", actor=None, created_by_id: int | None = None,
                api_key_id: int | None = None) -> Send:
    """Accept a send: resolve the recipients, render the template per locale, write the send, its
    log entry (unless every recipient is scheduled later) and one status row per recipient x
    channel, each in one statement. Nothing is half-written: any error rolls it all back."""
    prepared = _send_prepare(
        organization_id=organization_id, people=None, recipients=recipients, topic=topic, kind=kind, data=data,
        channels=channels, priority=priority, send_at=send_at, deliver_at_local=deliver_at_local,
        ordering_key=ordering_key, created_by_id=created_by_id, api_key_id=api_key_id)
    if prepared.lane == "shed":
        return _shed_prepared(prepared)
    send = _send_insert(**prepared.fields)
    send.payload = {"send_id": send.pk, **prepared.payload}
    now_ids = prepared.now_ids
    entry = None
    if now_ids:
        entry = publish(organization_id=organization_id, kind=MESSAGE_KIND, payload=send.payload, actor=actor,
                        audience=now_ids)
        send.entry_id = entry.id
    _rows_insert(send=send, people=prepared.people, due=prepared.due, entry_id=entry.id if entry else None)
    if entry is not None:
        _streams_for_send(send, entry)
    return send


def _streams_for_send(send: Send, entry) -> None:
    """A transactional send on an on-demand channel (email): the recipients of `entry` without an
    active stream of their own get one of sends only, made or woken in one statement (after the
    rows, under the organization's row lock publish took), and only those are kicked on commit."""
    if not policy.is_locked(send.category):
        return
    channels = [c for c in send.channels if registry.get(c).on_demand]
    if not channels:
        return
    streams = streams_ensure_for_send(org_id=send.organization_id, send_id=send.pk, entry_id=entry.id,
                                      seq=entry.seq, channels=channels)
    if streams:
        transaction.on_commit(lambda: _kick(send.organization_id, streams), robust=True)


def _kick(org_id: int, streams: list[tuple[str, str]]) -> None:
    try:
        streams_kick_all(org_id=org_id, streams=streams)
    except Exception:
        logger.warning("send streams not kicked (broker or Redis unavailable); the sweeper will re-kick them",
                       extra={"org_id": org_id}, exc_info=True)


# The sends of a batch, one statement: ids reserved beforehand (their entries' payloads carry them).
# Batch statements take their rows as one JSON array each ([column, ...] per row): one json.dumps,
# where arrays of parameters cost the client-side binding an escape per element (py-spy: most of the
# web's CPU of a batch went there).
_SENDS_INSERT_SQL = """
INSERT INTO notifications_send
    (id, organization_id, kind, category, data, payload, channels, priority, status, ordering_key, send_at,
     deliver_at_local, due_at, entry_id, recipients, created_by_id, api_key_id, created_at, cancelled_at)
SELECT (u.e ->> 0)::bigint, %(org)s, u.e ->> 1, u.e ->> 2, u.e -> 3, u.e -> 4,
       ARRAY(SELECT jsonb_array_elements_text(u.e -> 5))::varchar(32)[], u.e ->> 6, u.e ->> 7, u.e ->> 8,
       (u.e ->> 9)::timestamptz, u.e ->> 10, (u.e ->> 11)::timestamptz, (u.e ->> 12)::bigint, (u.e ->> 13)::int,
       %(created_by)s, %(api_key)s, now(), NULL
FROM jsonb_array_elements(%(sends)s::jsonb) AS u(e)
RETURNING id, created_at
"""

# The status rows of one send (/send) or of every send of a batch, in one statement: each send's
# columns (s) and channels (c) joined per send ordinal to each of its recipients (r), taken as JSON
# arrays (_rows_params) parsed as jsonb: with `json`, every `->>` re-parsed its element's text, and the
# joins' keys and the CASEs read them per row (EXPLAIN ANALYZE of a 200 x 10 batch: 89 ms, 33 ms as
# jsonb; docs/benchmarks.md). A recipient due now is `queued` with the send's entry, one due later
# `scheduled` without it. One row per recipient x channel. A member who turned the send's category
# off on a channel (their choice for the organization, their global one, the organization's default;
# never for a transactional category: notifications.policy) is `suppressed` with error 'preference'.
# A per-recipient channel (email, sms, push, ...) reaches a member through their streams
# (DeliveryStream.user: their email, phone or devices); a member without an active one (no phone, no
# device, email not opted in) is `suppressed` at once with the channel's reason rather than left
# queued: one indexed probe per row. A stream of sends only (DeliveryStream.sends_only) does not
# count: it is no opt-in. Except on an on-demand channel (email) for a transactional category,
# which cannot be turned off: the row is queued and the send makes the stream (_streams_for_send).
# A member who gets the send's kind as a digest has the entry held for it (publish records that):
# `digested`, and their digest lists it.
_PREF_ON = policy.effective_sql(user="r.user_id", org="%(org)s", channel="c.channel",
                                category="s.category", builtin="c.builtin")
_ROWS_SQL = f"""
INSERT INTO notifications_senddelivery
    (send_id, organization_id, user_id, channel, locale, entry_id, state, due_at, created_at, updated_at,
     sent_at, delivered_at, error)
SELECT x.send_id, %(org)s, x.user_id, x.channel, x.locale, x.entry_id,
       CASE WHEN NOT x.wanted OR NOT x.reachable THEN 'suppressed'
            WHEN x.entry_id IS NOT NULL AND EXISTS (
                SELECT 1 FROM notifications_digestitem di WHERE di.entry_id = x.entry_id
                  AND di.user_id = x.user_id) THEN 'digested'
            WHEN x.due_at IS NULL THEN 'queued' ELSE 'scheduled' END,
       x.due_at, now(), now(), NULL, NULL,
       CASE WHEN NOT x.wanted THEN 'preference' WHEN NOT x.reachable THEN x.no_destination ELSE '' END
FROM (
    SELECT s.send_id, CASE WHEN r.due_at IS NULL THEN s.entry_id END AS entry_id, r.user_id, r.locale, r.due_at,
           c.channel, c.no_destination,
           s.locked OR {_PREF_ON} AS wanted,
           NOT c.per_recipient OR (c.on_demand AND s.locked) OR EXISTS (
                SELECT 1 FROM notifications_deliverystream ds
                WHERE ds.organization_id = %(org)s AND ds.channel = c.channel AND ds.user_id = r.user_id
                  AND ds.active AND NOT ds.sends_only) AS reachable
    FROM (SELECT (e ->> 0)::int, (e ->> 1)::bigint, e ->> 2, (e ->> 3)::timestamptz
          FROM jsonb_array_elements(%(recipients)s::jsonb) e) AS r(ord, user_id, locale, due_at)
    JOIN (SELECT (e ->> 0)::int, (e ->> 1)::bigint, (e ->> 2)::bigint, e ->> 3, (e ->> 4)::boolean
          FROM jsonb_array_elements(%(sends)s::jsonb) e) AS s(ord, send_id, entry_id, category, locked) ON s.ord = r.ord
    JOIN (SELECT (e ->> 0)::int, e ->> 1, (e ->> 2)::boolean, e ->> 3, (e ->> 4)::boolean, (e ->> 5)::boolean
          FROM jsonb_array_elements(%(channels)s::jsonb) e)
         AS c(ord, channel, per_recipient, no_destination, builtin, on_demand) ON c.ord = r.ord
) x
"""


def _batch_error(index: int, exc: ApplicationError) -> ApplicationError:
    """A send's error, as the batch answers it: the same status and code, its fields named
    `sends[<index>].<field>` and the index in `extra`."""
    extra = dict(exc.extra)
    fields = extra.pop("fields", None)
    if isinstance(fields, dict):
        fields = {f"sends[{index}].{name}": errors for name, errors in fields.items()}
    elif exc.code == NotificationsError.RECIPIENT_NOT_FOUND:
        fields = {f"sends[{index}].recipients": [exc.message]}
    else:
        fields = {f"sends[{index}]": [exc.message]}
    error = type(exc)(f"sends[{index}]: {exc.message}", code=exc.code, status=exc.status_code,
                      extra={**extra, "index": index, "fields": fields})
    return error


@transaction.atomic(savepoint=False)
def sends_create_batch(*, organization_id: int, sends: list[dict], actor=None, created_by_id: int | None = None,
                       api_key_id: int | None = None) -> list[Send]:
    """Accept several sends of one organization at once, all or nothing: each is validated,
    resolved and rendered as send_create does it (any error is that send's, named by its index,
    and nothing is written), then written set-based: the members in one query, the sends in one
    INSERT, their log entries in one statement (the organization's seqs reserved together, gapless
    and in request order), every status row in one INSERT, one kick after commit. Written one send at
    a time, as /send does: a promotional send past the shed limit (_shed), and the on-demand
    streams of a transactional send on email (_streams_for_send). Returns the sends in order.

    Each item: {recipients or topic, kind, data, channels, priority, send_at, deliver_at_local,
    ordering_key} as send_create takes them."""
    if not 1 <= len(sends) <= MAX_BATCH_SENDS:
        raise _field_error("sends", f"From 1 to {MAX_BATCH_SENDS} sends per batch.")
    parsed = []
    for index, item in enumerate(sends):
        try:
            parsed.append(_recipients_parse(recipients=item.get("recipients"), topic=item.get("topic")))
        except ApplicationError as exc:
            raise _batch_error(index, exc) from None
    everyone = any(item.get("topic") is not None for item in sends)
    rows = _members_read(organization_id=organization_id, everyone=everyone,
                         ids=sorted({i for ids, _ in parsed for i in ids}),
                         emails=sorted({e for _, emails in parsed for e in emails}))
    by_id, by_email = {row[0]: row for row in rows}, {row[1]: row for row in rows}
    templates: dict = {}
    lanes: dict = {}
    prepared: list[_Prepared] = []
    total = 0
    for index, (item, (ids, emails)) in enumerate(zip(sends, parsed, strict=True)):
        try:
            topic = item.get("topic")
            if topic is not None:
                mine = rows
            else:  # the members this send names, by user id (as _MEMBERS_NAMED_SQL orders them)
                picked = {by_id[i][0]: by_id[i] for i in ids if i in by_id}
                picked.update((by_email[e][0], by_email[e]) for e in emails if e in by_email)
                mine = [picked[k] for k in sorted(picked)]
            people = _recipients_pick(mine, ids=ids, emails=emails, topic=topic)
            total += len(people)
            if total > MAX_BATCH_RECIPIENTS:
                raise _field_error("recipients", f"At most {MAX_BATCH_RECIPIENTS} recipients in all the sends of a "
                                   "batch together.", code=NotificationsError.TOO_MANY_RECIPIENTS)
            values = {k: v for k, v in item.items() if k not in ("recipients", "topic")}
            prepared.append(_send_prepare(organization_id=organization_id, people=people, recipients=None,
                                          topic=topic, created_by_id=created_by_id, api_key_id=api_key_id,
                                          templates=templates, lanes=lanes, **values))
        except ApplicationError as exc:
            raise _batch_error(index, exc) from None
    return _sends_write(organization_id=organization_id, prepared=prepared, actor=actor,
                        created_by_id=created_by_id, api_key_id=api_key_id)


def _sends_write(*, organization_id: int, prepared: list[_Prepared], actor, created_by_id: int | None,
                 api_key_id: int | None) -> list[Send]:
    results: list[Send | None] = [None] * len(prepared)
    written = [(i, p) for i, p in enumerate(prepared) if p.lane != "shed"]
    for i, p in enumerate(prepared):
        if p.lane == "shed":  # not set-based: rare (the organization is past its backlog limit)
            results[i] = _shed_prepared(p)
    if not written:
        return results
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence('notifications_send', 'id')) "
                       "FROM generate_series(1, %s)", [len(written)])
        ids = [row[0] for row in cursor.fetchall()]
    payloads = [{"send_id": send_id, **p.payload} for send_id, (_, p) in zip(ids, written, strict=True)]
    publishing = [k for k, (_, p) in enumerate(written) if p.now_ids]
    entries = publish_many(organization_id=organization_id, kind=MESSAGE_KIND,
                           payloads=[payloads[k] for k in publishing],
                           audiences=[written[k][1].now_ids for k in publishing], actor=actor)
    entry_ids: list[int | None] = [None] * len(written)
    for k, entry in zip(publishing, entries, strict=True):
        entry_ids[k] = entry.id
    sends_json = []
    for send_id, entry_id, payload, (_, p) in zip(ids, entry_ids, payloads, written, strict=True):
        f = p.fields
        sends_json.append([send_id, f["kind"], f["category"], f["data"], payload, f["channels"], f["priority"],
                           f["status"], f["ordering_key"], _iso(f["send_at"]), f["deliver_at_local"],
                           _iso(f["due_at"]), entry_id, f["recipients"]])
    with connection.cursor() as cursor:
        cursor.execute(_SENDS_INSERT_SQL, {"org": organization_id, "created_by": created_by_id, "api_key": api_key_id,
                                           "sends": json.dumps(sends_json, cls=DjangoJSONEncoder)})
        created = dict(cursor.fetchall())
    for k, (send_id, (index, p)) in enumerate(zip(ids, written, strict=True)):
        send = Send(id=send_id, created_at=created[send_id], payload=payloads[k], entry_id=entry_ids[k],
                    cancelled_at=None, **p.fields)
        send._state.adding, send._state.db = False, connection.alias
        results[index] = send
    params = _rows_params(organization_id=organization_id,
                          sends=[(results[index], p.people, p.due, entry_ids[k])
                                 for k, (index, p) in enumerate(written)])
    with connection.cursor() as cursor:
        cursor.execute(_ROWS_SQL, params)
    for k, entry in zip(publishing, entries, strict=True):  # a statement only for a transactional email send
        _streams_for_send(results[written[k][0]], entry)
    return results


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _send_insert(**fields) -> Send:
    """INSERT the send (its payload comes with its first status rows); the instance as the ORM's
    create would have returned it."""
    with connection.cursor() as cursor:
        cursor.execute(_SEND_INSERT_SQL, {
            "org": fields["organization_id"], "kind": fields["kind"], "category": fields["category"],
            "data": json.dumps(fields["data"]), "channels": list(fields["channels"]), "priority": fields["priority"],
            "status": fields["status"], "ordering_key": fields["ordering_key"], "send_at": fields["send_at"],
            "deliver_at_local": fields["deliver_at_local"], "due_at": fields["due_at"],
            "recipients": fields["recipients"], "created_by": fields["created_by_id"], "api_key": fields["api_key_id"]})
        send_id, created_at = cursor.fetchone()
    send = Send(id=send_id, created_at=created_at, payload={}, entry_id=None, cancelled_at=None, **fields)
    send._state.adding, send._state.db = False, connection.alias
    return send


def _shed(*, people: list[Recipient], **fields) -> Send:
    """Past the backlog limit a promotional send is not published: it is recorded as shed, with a
    `shed` row per recipient x channel, and the answer says so."""
    send = Send.objects.create(status=Send.Status.SHED, recipients=len(people), **fields)
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO notifications_senddelivery
                (send_id, organization_id, user_id, channel, locale, state, created_at, updated_at, error)
            SELECT %(send)s, %(org)s, r.user_id, c.channel, r.locale, 'shed', now(), now(),
                   'shed: the organization''s backlog is past SEND_PROMOTIONAL_SHED_BACKLOG'
            FROM unnest(%(users)s::bigint[], %(locales)s::text[]) AS r(user_id, locale)
            CROSS JOIN unnest(%(channels)s::text[]) AS c(channel)""",
                       {"send": send.pk, "org": send.organization_id, "users": [p.user_id for p in people],
                        "locales": [p.locale for p in people], "channels": list(send.channels)})
    return send


def _rows_params(*, organization_id: int,
                 sends: list[tuple[Send, list[Recipient], list[datetime | None], int | None]]) -> dict:
    """_ROWS_SQL's parameters for these sends, each (send, its recipients, their due times, its
    entry): one JSON array each of recipients, sends and channels, per send ordinal."""
    recipients, rows, channels = [], [], []
    backends: dict[tuple[str, str], list] = {}
    for k, (send, people, due, entry_id) in enumerate(sends):
        rows.append([k, send.pk, entry_id, send.category, policy.is_locked(send.category)])
        for channel in send.channels:
            key = (channel, send.category)
            if key not in backends:
                backend = registry.get(channel)
                backends[key] = [channel, backend.per_recipient, backend.no_destination,
                                 policy.builtin_enabled(channel, send.category), backend.on_demand]
            channels.append([k, *backends[key]])
        recipients += [[k, person.user_id, person.locale, _iso(at)] for person, at in zip(people, due, strict=True)]
    return {"org": organization_id, "recipients": json.dumps(recipients), "sends": json.dumps(rows),
            "channels": json.dumps(channels)}


def _rows_insert(*, send: Send, people: list[Recipient], due: list[datetime | None], entry_id: int | None) -> None:
    """The send's status rows in one statement (the batch's, for one send), which also writes the
    send's payload and entry."""
    params = _rows_params(organization_id=send.organization_id, sends=[(send, people, due, entry_id)])
    params.update(payload=json.dumps(send.payload), send_entry=send.entry_id, send=send.pk)
    with connection.cursor() as cursor:
        if people:
            cursor.execute(_SEND_DONE_CTE + _ROWS_SQL, params)
        else:  # no recipient (a send always has one): the send's row still gets its payload
            cursor.execute("UPDATE notifications_send SET payload = %s::jsonb, entry_id = %s WHERE id = %s",
                           [params["payload"], send.entry_id, send.pk])


# A recipient who gets the send's kind as a digest has not had it yet while its digest item waits
# for the window's end: the item is taken out (locked SKIP LOCKED as the digest publisher locks them:
# one being published right now goes out) and the member's rows are cancelled.
_CANCEL_DIGESTED_SQL = """
WITH items AS (
    DELETE FROM notifications_digestitem WHERE id IN (
        SELECT di.id FROM notifications_digestitem di
        WHERE di.digest_id IS NULL AND (di.entry_id, di.user_id) IN (
            SELECT d.entry_id, d.user_id FROM notifications_senddelivery d
            WHERE d.send_id = %(send)s AND d.state = 'digested')
        FOR UPDATE SKIP LOCKED)
    RETURNING entry_id, user_id
)
UPDATE notifications_senddelivery d SET state = 'cancelled', updated_at = now()
FROM items WHERE d.send_id = %(send)s AND d.state = 'digested' AND d.entry_id = items.entry_id
  AND d.user_id = items.user_id
"""


@transaction.atomic
def send_cancel(*, send: Send) -> tuple[Send, int]:
    """Cancel every recipient x channel that has not gone out (queued, scheduled, deferred, failed
    while retried, digested while its digest waits; not a row the provider reported failed after it
    was sent).
    Rows a worker is sending right now are locked and skipped: they go out. 409
    `send_not_cancellable` when nothing was left to cancel."""
    send = Send.objects.select_for_update().get(pk=send.pk)  # waits for a dispatch in progress
    with connection.cursor() as cursor:
        cursor.execute("""
            UPDATE notifications_senddelivery SET state = 'cancelled', updated_at = now()
            WHERE id IN (SELECT id FROM notifications_senddelivery
                         WHERE send_id = %s AND state = ANY(%s) AND sent_at IS NULL FOR UPDATE SKIP LOCKED)""",
                       [send.pk, list(SendDelivery.PENDING)])
        cancelled = cursor.rowcount
        cursor.execute(_CANCEL_DIGESTED_SQL, {"send": send.pk})
        cancelled += cursor.rowcount
    if cancelled == 0 and send.status != Send.Status.CANCELLED:
        raise Conflict("Nothing of this send is left to cancel.", code=NotificationsError.SEND_NOT_CANCELLABLE)
    if cancelled:
        send.status, send.cancelled_at, send.due_at = Send.Status.CANCELLED, Now(), None
        send.save(update_fields=["status", "cancelled_at", "due_at"])
        send.refresh_from_db(fields=["cancelled_at"])
    return send, cancelled


def sends_dispatch_due(*, limit: int = 100) -> int:
    """Beat: publish the entries of scheduled sends that fell due (one entry per send and due batch,
    audience = the recipients due). Sends are locked SKIP LOCKED: dispatchers never collide, and a
    cancel waits for the dispatch of its send."""
    dispatched = 0
    with transaction.atomic():
        sends = list(Send.objects.select_for_update(skip_locked=True)
                     .filter(status=Send.Status.SCHEDULED, due_at__lte=Now()).order_by("due_at")[:limit])
        for send in sends:
            dispatched += _dispatch(send)
    return dispatched


# The due rows of a send whose member has quiet hours now (read at dispatch: they may have set
# them, or changed zone, after the send was accepted; a held promotional send may come due late).
_DUE_QUIET_SQL = """
SELECT DISTINCT d.user_id, u.time_zone, q.quiet_hours_start, q.quiet_hours_end
FROM notifications_senddelivery d
JOIN organizations_user u ON u.id = d.user_id
JOIN notifications_membernotificationsettings q ON q.user_id = d.user_id AND q.quiet_hours_start IS NOT NULL
WHERE d.send_id = %s AND d.state = 'scheduled' AND d.due_at <= now()
"""

_POSTPONE_SQL = """
UPDATE notifications_senddelivery d SET due_at = r.due_at, updated_at = now()
FROM unnest(%(users)s::bigint[], %(dues)s::timestamptz[]) AS r(user_id, due_at)
WHERE d.send_id = %(send)s AND d.state = 'scheduled' AND d.due_at <= now() AND d.user_id = r.user_id
"""


def _quiet_hours_postpone(cursor, send: Send) -> None:
    """A promotional send that falls due inside a member's quiet hours waits, for that member, until
    they end (the same rule as at acceptance, with the member's settings of now)."""
    cursor.execute(_DUE_QUIET_SQL, [send.pk])
    now = timezone.now()
    users, dues = [], []
    for user_id, zone, start, end in cursor.fetchall():
        release = policy.quiet_release(now, zone=zone or "UTC", start=start, end=end)
        if release is not None:
            users.append(user_id)
            dues.append(release)
    if users:
        cursor.execute(_POSTPONE_SQL, {"users": users, "dues": dues, "send": send.pk})


def _dispatch(send: Send) -> int:
    if send.priority == Send.Priority.PROMOTIONAL:
        lane = _promotional_lane(organization_id=send.organization_id, channels=list(send.channels))
        if lane is not None:
            return _hold_or_shed(send, lane)
    with connection.cursor() as cursor:
        if category_get(send.category).promotional:
            _quiet_hours_postpone(cursor, send)
        cursor.execute("""SELECT DISTINCT user_id FROM notifications_senddelivery
                          WHERE send_id = %s AND state = 'scheduled' AND due_at <= now() ORDER BY user_id""",
                       [send.pk])
        users = [row[0] for row in cursor.fetchall()]
        if users:
            entry = publish(organization_id=send.organization_id, kind=MESSAGE_KIND, payload=send.payload,
                            actor=None, audience=users)
            cursor.execute("""UPDATE notifications_senddelivery d
                              SET state = CASE WHEN EXISTS (
                                      SELECT 1 FROM notifications_digestitem di
                                      WHERE di.entry_id = %(entry)s AND di.user_id = d.user_id)
                                  THEN 'digested' ELSE 'queued' END,
                                  entry_id = %(entry)s, updated_at = now()
                              WHERE send_id = %(send)s AND state = 'scheduled' AND due_at <= now()""",
                           {"entry": entry.id, "send": send.pk})
            send.entry_id = entry.id
            _streams_for_send(send, entry)
        cursor.execute("SELECT min(due_at) FROM notifications_senddelivery WHERE send_id = %s AND state = 'scheduled'",
                       [send.pk])
        (next_due,) = cursor.fetchone()
    send.due_at = next_due
    send.status = Send.Status.SCHEDULED if next_due else Send.Status.QUEUED
    send.save(update_fields=["due_at", "status", "entry"])
    return len(users)


def _hold_or_shed(send: Send, lane: str) -> int:
    """A due promotional send under backlog: wait another hold, or be shed (recorded)."""
    with connection.cursor() as cursor:
        if lane == "shed":
            cursor.execute("""UPDATE notifications_senddelivery SET state = 'shed', updated_at = now(),
                                     error = 'shed: the organization''s backlog is past SEND_PROMOTIONAL_SHED_BACKLOG'
                              WHERE send_id = %s AND state = 'scheduled' AND due_at <= now()""", [send.pk])
        else:
            cursor.execute("""UPDATE notifications_senddelivery SET due_at = now() + %s
                              WHERE send_id = %s AND state = 'scheduled' AND due_at <= now()""",
                           [timedelta(seconds=settings.SEND_PROMOTIONAL_HOLD_SECONDS), send.pk])
        cursor.execute("SELECT min(due_at) FROM notifications_senddelivery WHERE send_id = %s AND state = 'scheduled'",
                       [send.pk])
        (next_due,) = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM notifications_senddelivery WHERE send_id = %s AND state <> 'shed'",
                       [send.pk])
        (alive,) = cursor.fetchone()
    send.due_at = next_due
    if next_due is None:
        send.status = Send.Status.SHED if not alive else Send.Status.QUEUED
    send.save(update_fields=["due_at", "status"])
    return 0
