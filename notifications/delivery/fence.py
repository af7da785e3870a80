"""The ordering fence: one step of one stream (organization, channel, destination).

For every destination, entries arrive in the order of the organization's log (DESIGN.md):
- A worker sends only while it holds the stream row's lock (SELECT ... FOR UPDATE SKIP LOCKED; a
  killed worker's lock dies with its connection, a frozen host's with
  idle_in_transaction_session_timeout and TCP keepalives, see settings.DATABASES).
- It sends strictly the head: the pending Delivery if an earlier attempt failed (its range is
  frozen once attempted), else the entries right after the cursor (a contiguous run, coalesced).
- It records the outcome and advances the cursor in the same transaction, after the provider
  answered. A failed head is retried first; nothing overtakes it.
- Times that gate work (next_attempt_at, the retry deadline, updated_at) come from Postgres'
  clock (clock_timestamp()), never a worker's.

The fence never names a channel: it asks the registry, and the channel answers through the
interface of notifications.channels.base. Cheap checks (is there work, is the stream waiting,
do breaker and limiter grant a slot) run before the lock, so waiting streams poll cheaply.
"""
import json
import logging
import random
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Greatest

from notifications import metrics, policy
from notifications.breaker import CircuitBreaker
from notifications.channels import registry
from notifications.channels.base import Channel, Run
from notifications.delivery.types import (
    DrainResult,
    PermanentFailure,
    RateLimitedFailure,
    TransientFailure,
    UncertainFailure,
)
from notifications.delivery import status
from notifications.delivery.streams import DbClock, stream_deactivate, stream_ensure, stream_rest
from notifications.models import Delivery, DeliveryStream, LogEntry

logger = logging.getLogger("herald.delivery")

# Cheap look before the lock: is there work, is the stream waiting, when did its head occur, and
# (when no head is pending and the stream is not waiting) the entries after its cursor, up to
# `limit`: one statement, one row per entry (one row without an entry when none is read). One clock
# reading (`c.now`) decides both the wait and whether the entries are read.
_ENTRY_COLUMNS = "id, seq, kind, payload, actor_id, actor_name, audience, occurred_at"
_PEEK_SQL = f"""
SELECT s.delivered_seq, o.last_event_seq, s.held, s.active,
       GREATEST(0, extract(epoch FROM s.next_attempt_at - c.now)),
       (SELECT extract(epoch FROM e.occurred_at) FROM notifications_logentry e
        WHERE e.organization_id = s.organization_id AND e.seq = s.delivered_seq + 1),
       p.pending, s.sends_only, {", ".join("r." + c.strip() for c in _ENTRY_COLUMNS.split(","))}
FROM notifications_deliverystream s
JOIN organizations_organization o ON o.id = s.organization_id
CROSS JOIN LATERAL (SELECT clock_timestamp() AS now) c
CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM notifications_delivery d
                                   WHERE d.stream_id = s.id AND d.status = 'pending' AND NOT d.late) AS pending) p
LEFT JOIN LATERAL (  -- the cursor bounds the index scan
    SELECT {_ENTRY_COLUMNS} FROM notifications_logentry e
    WHERE e.organization_id = s.organization_id AND e.seq > s.delivered_seq
      AND e.seq <= LEAST(o.last_event_seq, s.delivered_seq + %(limit)s)
    ORDER BY e.seq
) r ON NOT s.held AND s.active AND NOT p.pending AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= c.now)
WHERE s.organization_id = %(org)s AND s.channel = %(channel)s AND s.destination = %(destination)s
ORDER BY r.seq
"""
_ENTRIES_SQL = (f"SELECT {_ENTRY_COLUMNS} FROM notifications_logentry "
                "WHERE organization_id = %s AND seq >= %s AND seq <= %s ORDER BY seq")


def _entry(org_id: int, row) -> LogEntry:
    """A LogEntry from the columns of _ENTRY_COLUMNS, without the ORM's query building."""
    id_, seq, kind, payload, actor_id, actor_name, audience, occurred_at = row
    entry = LogEntry(id=id_, organization_id=org_id, seq=seq, kind=kind,
                     payload=json.loads(payload) if isinstance(payload, str) else payload,
                     actor_id=actor_id, actor_name=actor_name, audience=audience, occurred_at=occurred_at)
    entry._state.adding, entry._state.db = False, connection.alias
    return entry


def backoff(attempts: int) -> float:
    """Exponential backoff with "equal jitter": never less than half the step."""
    ceiling = min(settings.DELIVERY_BACKOFF_MAX, settings.DELIVERY_BACKOFF_BASE * (2 ** max(0, attempts - 1)))
    return random.uniform(ceiling / 2, ceiling)


def _later(seconds: float):
    """The database's clock + seconds, as an expression (one clock for every worker)."""
    return DbClock() + timedelta(seconds=seconds)


def _entries(org_id: int, first: int, last: int, known: list[LogEntry] | None = None) -> list[LogEntry]:
    """The entries first..last in seq order. `known`: a contiguous run read earlier in this step
    (entries never change once written), so only what it lacks is read."""
    have: list[LogEntry] = []
    if known and known[0].seq <= first <= known[-1].seq:
        have = [e for e in known if first <= e.seq <= last]
        if known[-1].seq >= last:
            return have
        first = known[-1].seq + 1
    with connection.cursor() as cursor:
        cursor.execute(_ENTRIES_SQL, [org_id, first, last])
        return have + [_entry(org_id, row) for row in cursor.fetchall()]


def _wanted(ch: Channel, target, entries: list[LogEntry], *, sends_only: bool = False) -> list[LogEntry]:
    """The entries of a range this destination gets (its kind lists the channel; a per-recipient
    channel's user is in the audience; private kinds never reach org-wide channels), minus, for a
    per-recipient channel, the entries held for the member's digest and the untracked entries whose
    category the member turned off (API sends carry their own per-recipient status, decided at
    acceptance). Preferences change: a range once
    recorded keeps the seqs decided then (`_recorded`). A stream of sends only
    (DeliveryStream.sends_only: a member who has not opted in) gets its member's tracked entries
    (whether each goes is its status row's: status.run_claim) and entries of a transactional
    category (a digest of a transactional send kind) only."""
    wanted = [e for e in entries if ch.wants(target, e) and (not sends_only or _for_sends_only(e))]
    if not ch.per_recipient or not wanted:
        return wanted
    held = policy.digested_entry_ids(user_id=ch.recipient_id(target), entry_ids=[e.id for e in wanted])
    if held:  # held for the member's digest, which goes out as an entry of its own
        wanted = [e for e in wanted if e.id not in held]
        if not wanted:
            return wanted
    untracked = {policy.entry_category(e) for e in wanted if not status.is_tracked(e)}
    if not untracked:
        return wanted
    muted = policy.muted_categories(organization_id=wanted[0].organization_id, channel=ch.name,
                                    user_id=ch.recipient_id(target), categories=untracked)
    if not muted:
        return wanted
    return [e for e in wanted if status.is_tracked(e) or policy.entry_category(e) not in muted]


def _for_sends_only(entry: LogEntry) -> bool:
    return status.is_tracked(entry) or policy.is_locked(policy.entry_category(entry))


def _recorded(head: Delivery, entries: list[LogEntry]) -> list[LogEntry]:
    """The entries of an attempted head: exactly the seqs decided when it was recorded."""
    seqs = set(head.seqs)
    return [e for e in entries if e.seq in seqs]


def _skip(ch: Channel, stream: DeliveryStream, last_seq: int) -> DrainResult:
    """A range with nothing for this destination: the cursor moves past it without a provider call
    (no Delivery record, no limiter grant spent beyond the one this step holds)."""
    _touch(stream.pk, delivered_seq=Greatest(F("delivered_seq"), last_seq), head_attempts=0, head_since=None,
           next_attempt_at=None, last_error="")
    if stream.sends_only:
        stream_rest(stream_id=stream.pk)
    metrics.DELIVERIES.labels(channel=ch.name, outcome="skipped").inc()
    return DrainResult("delivered", count=0)


def _touch(stream_id: int, **fields) -> None:
    DeliveryStream.objects.filter(pk=stream_id).update(updated_at=DbClock(), **fields)


def stream_deliver(*, org_id: int, channel: str, destination: str = "",
                   published: list | None = None) -> DrainResult:
    """Deliver the next run of one stream, if this worker can take its lock. `published`: a local
    channel's outcome is appended to it after commit, as (channel, outcome), for the caller to
    announce with others (Channel.published_batch), instead of being announced at once."""
    try:
        ch = registry.get(channel)
    except registry.UnknownChannel:
        logger.warning("drain for an unknown channel dropped", extra={"org_id": org_id, "channel": channel})
        return DrainResult("missing")
    if not ch.external:
        return _deliver_local(ch, org_id, destination, published)
    known: list[LogEntry] = []
    gated = _stream_gate(ch, org_id, destination, known)
    if isinstance(gated, DrainResult):
        return gated
    target, gate = gated
    return _deliver_external(ch, target, gate, org_id, destination, known=known)


def stream_gate(*, org_id: int, channel: str, destination: str = ""):
    """The cheap part of an external send, before any lock: is there work, is the stream waiting,
    is its destination still there, do breaker and limiter grant a slot? Waiting streams poll
    this, so it is one indexed read and the channel's Redis scripts. Returns (target, gate) when
    a slot is granted, else the DrainResult to report. Streams share a provider's global limit
    oldest pending entry first (the head's occurred_at), so a failed send keeps its place."""
    return _stream_gate(registry.get(channel), org_id, destination, [])


def _stream_gate(ch: Channel, org_id: int, destination: str, known: list[LogEntry]):
    """stream_gate; the entries it read are appended to `known` (the send under the lock reuses
    them instead of reading the same range again)."""
    channel = ch.name
    with connection.cursor() as cursor:
        cursor.execute(_PEEK_SQL, {"org": org_id, "channel": channel, "destination": destination,
                                   "limit": ch.batch_max})
        rows = cursor.fetchall()
    if not rows:
        return DrainResult("missing")
    delivered, last, held, active, wait, head_at, pending, sends_only = rows[0][:8]
    if held:
        return DrainResult("held")
    if not active or delivered >= last:
        return DrainResult("idle")
    if wait and wait > 0:
        return DrainResult("wait", wait=float(wait))
    target = ch.target(organization_id=org_id, destination=destination)
    if target is None:
        stream_deactivate(org_id=org_id, channel=channel, destination=destination)
        return DrainResult("idle")
    if not pending:
        known += [_entry(org_id, row[8:]) for row in rows if row[8] is not None]
        if not _wanted(ch, target, known, sends_only=sends_only):
            # Nothing ahead is for this destination: move past it without asking for a slot.
            return _skip_unwanted(ch, target, org_id, destination)
    gate = ch.gate(target, since=float(head_at) if head_at is not None else None,
                   member=f"{org_id}:{channel}:{destination}")
    if not gate.allowed:
        metrics.DELIVERIES.labels(channel=channel, outcome="gate_wait").inc()
        return DrainResult("wait", wait=gate.wait, notes={"reason": gate.reason})
    return target, gate


# Every column of the stream (from the model, so a new field is read too), the organization's last
# seq and Postgres' clock, in one statement without the ORM's query building (this runs per drain).
_STREAM_FIELDS = [f for f in DeliveryStream._meta.concrete_fields]
_LOCK_SQL = (
    "SELECT " + ", ".join(f"s.{f.column}" for f in _STREAM_FIELDS) + ", o.last_event_seq, clock_timestamp() "
    "FROM notifications_deliverystream s JOIN organizations_organization o ON o.id = s.organization_id "
    "WHERE s.organization_id = %s AND s.channel = %s AND s.destination = %s FOR UPDATE OF s SKIP LOCKED"
)


_DELIVERY_FIELDS = [f for f in Delivery._meta.concrete_fields]
_DELIVERY_COLUMNS = ", ".join(f.column for f in _DELIVERY_FIELDS)
# Under the stream's lock: its pending head, or, when it has none and a new run is given, that run
# inserted as the head (admitted: see _deliver_external), in one statement. Every writer of a
# stream's heads holds the stream's lock, and this statement's snapshot is taken after it was
# granted, so "none pending" is not stale. (The lock statement cannot read the head itself: a
# commit between its snapshot and its lock would show the new stream row with the old heads.)
_HEAD_OR_NEW_SQL = f"""
WITH pending AS (
    SELECT {_DELIVERY_COLUMNS} FROM notifications_delivery
    WHERE stream_id = %(stream)s AND status = 'pending' AND NOT late ORDER BY first_seq LIMIT 1
), created AS (
    INSERT INTO notifications_delivery (organization_id, stream_id, channel, first_seq, last_seq, status, attempts,
                                        created_at, sent_at, last_error, late, provider_ref, verify_first, admitted,
                                        seqs, updated_at)
    SELECT %(org)s, %(stream)s, %(channel)s, %(first)s, %(last)s, 'pending', 0, now(), NULL, '', false, '', false,
           true, %(seqs)s::bigint[], now()
    WHERE %(seqs)s::bigint[] IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pending)
    RETURNING {_DELIVERY_COLUMNS}
)
SELECT {_DELIVERY_COLUMNS}, false FROM pending UNION ALL SELECT {_DELIVERY_COLUMNS}, true FROM created
"""
_DELIVERY_ATTNAMES = [f.attname for f in _DELIVERY_FIELDS]


def _head(stream: DeliveryStream, channel: str, first: int, last: int,
          seqs: list[int] | None) -> tuple[Delivery | None, bool]:
    """(the stream's pending head, False), or, when none is pending and `seqs` is given, (the run
    first..last carrying `seqs`, recorded as the new head, True), or (None, False)."""
    with connection.cursor() as cursor:
        cursor.execute(_HEAD_OR_NEW_SQL, {"stream": stream.pk, "org": stream.organization_id, "channel": channel,
                                          "first": first, "last": last, "seqs": seqs})
        row = cursor.fetchone()
    if row is None:
        return None, False
    return Delivery.from_db(connection.alias, _DELIVERY_ATTNAMES, row[:-1]), row[-1]


def _lock(org_id: int, channel: str, destination: str) -> DeliveryStream | None:
    """The stream row, locked (None: another worker holds it, or it does not exist), with
    `org_last_seq` (the organization's last seq) and `db_now` (Postgres' clock) read with it."""
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_SQL, [org_id, channel, destination])
        row = cursor.fetchone()
    if row is None:
        return None
    stream = DeliveryStream.from_db(connection.alias, [f.attname for f in _STREAM_FIELDS], row[:-2])
    stream.org_last_seq, stream.db_now = row[-2], row[-1]
    return stream


def _skip_unwanted(ch: Channel, target, org_id: int, destination: str) -> DrainResult:
    """Under the stream's lock, skip the next range if it still has no pending head and nothing
    wanted (another worker may have moved the cursor meanwhile)."""
    with transaction.atomic():
        stream = _lock(org_id, ch.name, destination)
        if stream is None:
            return _busy_or_missing(org_id, ch.name, destination)
        if stream.held or Delivery.objects.filter(stream=stream, status=Delivery.Status.PENDING, late=False).exists():
            return DrainResult("busy")
        first = stream.delivered_seq + 1
        last = min(stream.org_last_seq, stream.delivered_seq + ch.batch_max)
        if last < first:
            return DrainResult("idle")
        if _wanted(ch, target, _entries(org_id, first, last), sends_only=stream.sends_only):
            return DrainResult("busy")  # the caller's next step takes a slot and sends it
        return _skip(ch, stream, last)


def _busy_or_missing(org_id: int, channel: str, destination: str) -> DrainResult:
    exists = DeliveryStream.objects.filter(organization_id=org_id, channel=channel, destination=destination).exists()
    return DrainResult("busy" if exists else "missing")


# --- local channels (in-app) ------------------------------------------------------------------

# One statement for the fence's part of a local step: lock the stream (SKIP LOCKED: no row when
# another worker holds it or it does not exist), read the run after its cursor, and move the cursor
# to the run's end. The channel's apply() then writes the run in the same transaction; if anything
# fails, the rollback puts the cursor back. A held stream returns one row without entries.
_LOCAL_STEP_SQL = """
WITH s AS (
    SELECT id, held, delivered_seq FROM notifications_deliverystream
    WHERE organization_id = %(org)s AND channel = %(channel)s AND destination = %(destination)s
    FOR UPDATE SKIP LOCKED
), run AS (  -- LATERAL: the cursor bounds the index scan (not a filter over the whole log)
    SELECT e.* FROM s CROSS JOIN LATERAL (
        SELECT id, seq, kind, payload, actor_id, actor_name, audience, occurred_at FROM notifications_logentry
        WHERE organization_id = %(org)s AND seq > s.delivered_seq ORDER BY seq LIMIT %(limit)s) e
    WHERE NOT s.held
), moved AS (
    UPDATE notifications_deliverystream t
    SET delivered_seq = (SELECT max(seq) FROM run), head_attempts = 0, head_since = NULL, last_error = '',
        updated_at = clock_timestamp()
    FROM s WHERE t.id = s.id AND EXISTS (SELECT 1 FROM run)
)
SELECT s.held, run.id, run.seq, run.kind, run.payload, run.actor_id, run.actor_name, run.audience, run.occurred_at
FROM s LEFT JOIN run ON true ORDER BY run.seq
"""


def _local_step(org_id: int, channel: str, destination: str, limit: int) -> tuple[bool, list[LogEntry]] | None:
    """(held, run) under the stream's lock, the cursor already at the run's end; None when the
    stream is locked by another worker or missing."""
    with connection.cursor() as cursor:
        cursor.execute(_LOCAL_STEP_SQL, {"org": org_id, "channel": channel, "destination": destination,
                                         "limit": limit})
        rows = cursor.fetchall()
    if not rows:
        return None
    entries = []
    for _held, id_, seq, kind, payload, actor_id, actor_name, audience, occurred_at in rows:
        if id_ is None:
            continue
        entry = LogEntry(id=id_, organization_id=org_id, seq=seq, kind=kind,
                         payload=json.loads(payload) if isinstance(payload, str) else payload,
                         actor_id=actor_id, actor_name=actor_name, audience=audience, occurred_at=occurred_at)
        entry._state.adding, entry._state.db = False, connection.alias
        entries.append(entry)
    return rows[0][0], entries


def _deliver_local(ch: Channel, org_id: int, destination: str, published: list | None = None) -> DrainResult:
    with transaction.atomic():
        step = _local_step(org_id, ch.name, destination, ch.batch_max)
        if step is None:
            result = _busy_or_missing(org_id, ch.name, destination)
            if result.kind == "missing":
                stream_ensure(org_id=org_id, channel=ch.name, destination=destination)
                return DrainResult("busy")  # the caller retries at once and finds it
            return result
        held, entries = step
        if held:
            return DrainResult("held")
        if not entries:
            return DrainResult("idle")
        outcome = ch.apply(organization_id=org_id, entries=entries)
        # After commit: a rolled-back drain announces nothing.
        if published is None:
            transaction.on_commit(lambda: ch.published(outcome), robust=True)
        else:
            transaction.on_commit(lambda: published.append((ch, outcome)))
    # Fewer than a full run: the read saw every entry committed before it.
    return DrainResult("delivered", count=len(entries), drained=len(entries) < ch.batch_max)


# --- external channels ------------------------------------------------------------------------

def _deliver_external(ch: Channel, target, gate, org_id: int, destination: str,
                      known: list[LogEntry] | None = None) -> DrainResult:
    locked_at = time.monotonic()
    with transaction.atomic():
        stream = _lock(org_id, ch.name, destination)
        if stream is None:
            return _busy_or_missing(org_id, ch.name, destination)
        if stream.held:
            return DrainResult("held")
        now = stream.db_now
        if stream.next_attempt_at and stream.next_attempt_at > now:
            return DrainResult("wait", wait=(stream.next_attempt_at - now).total_seconds())
        # A new head's range and the entries it gets, from what the gate read when that covers it
        # (the usual case: no head was pending then), so the head is read or recorded in one go.
        first = stream.delivered_seq + 1
        last = min(stream.org_last_seq, stream.delivered_seq + (ch.batch_max if ch.coalesce else 1))
        fresh = None
        if last >= first and known and known[0].seq <= first and known[-1].seq >= last:
            fresh = _wanted(ch, target, _entries(org_id, first, last, known), sends_only=stream.sends_only)
        head, created = _head(stream, ch.name, first, last, [e.seq for e in fresh] if fresh else None)
        if head is None:
            if last < first:
                return DrainResult("idle")
            entries = fresh if fresh is not None else _wanted(ch, target, _entries(org_id, first, last, known),
                                                              sends_only=stream.sends_only)
            if not entries:
                return _skip(ch, stream, last)
            head, created = _head(stream, ch.name, first, last, [e.seq for e in entries])
        elif created:
            entries = fresh
        else:
            if head.attempts == 0 and ch.coalesce:
                # Never sent yet (it waited on a gate or a deferral): later entries may join it. Once
                # attempted, its range is frozen, so every attempt carries the same message.
                newest = min(stream.org_last_seq, head.first_seq + ch.batch_max - 1)
                if newest > head.last_seq:
                    head.last_seq = newest
                    head.save(update_fields=["last_seq"])
            if head.attempts > 0 and head.seqs is not None:
                entries = _recorded(head, _entries(org_id, head.first_seq, head.last_seq, known))
            else:
                entries = _wanted(ch, target, _entries(org_id, head.first_seq, head.last_seq, known),
                                  sends_only=stream.sends_only)
                seqs = [e.seq for e in entries]
                if entries and seqs != head.seqs:
                    head.seqs = seqs
                    head.save(update_fields=["seqs"])
            if not entries:  # nothing in its range is for this destination (any more)
                Delivery.objects.filter(pk=head.pk).delete()
                return _skip(ch, stream, head.last_seq)
        # Tracked entries (API sends) whose status row for this destination was cancelled (or is
        # otherwise not to be sent) leave the run; the rows of the others are locked until the
        # outcome is recorded.
        recipient = ch.recipient_id(target)
        entries = status.run_claim(channel=ch.name, recipient_id=recipient, entries=entries)
        if not entries:
            Delivery.objects.filter(pk=head.pk).delete()
            return _skip(ch, stream, head.last_seq)
        run = Run(organization_id=org_id, destination=destination, delivery_id=head.id, first_seq=head.first_seq,
                  last_seq=head.last_seq, entries=entries, attempt=head.attempts + 1)
        # A new head is recorded admitted (one statement less per send); if the channel defers it
        # instead, _defer records it as not admitted, so its next attempt is a first one again.
        first_attempt = created or not head.admitted
        admitted = ch.admit(target, run, now=now, first_attempt=first_attempt)
        if not admitted.allowed:
            status.run_record(channel=ch.name, recipient_id=recipient, entries=entries, state="deferred",
                              error=admitted.reason or "", due_at=admitted.until)
            return _defer(ch, stream, head, admitted, unadmit=created)
        if not head.admitted:
            Delivery.objects.filter(pk=head.pk).update(admitted=True)
        if head.verify_first:
            ref = ch.verify(target, run)
            if ref:
                return _sent(ch, target, stream, head, run, ref, verified=True)
        budget = settings.DELIVERY_LOCK_BUDGET_SECONDS
        if time.monotonic() - locked_at > budget:
            # This process was frozen while holding the lock (the database may have freed it and
            # another worker moved on): do not send a stale head.
            logger.warning("stream lock held past its budget; not sending",
                           extra={"org_id": org_id, "channel": ch.name, "destination": destination})
            transaction.set_rollback(True)
            return DrainResult("busy")
        head.attempts += 1
        try:
            message = ch.render(target, run)
            ref = ch.send(target, run, message, gate)
        except RateLimitedFailure as exc:
            return _rate_limited(ch, target, stream, head, exc)
        except PermanentFailure as exc:
            _breaker_record(ch, target, ok=True)  # the provider answered; this destination is what is wrong
            _dead_letter(ch, stream, head, str(exc))
            status.run_record(channel=ch.name, recipient_id=recipient, entries=entries, state="dead", error=str(exc))
            return DrainResult("delivered", count=0)
        except TransientFailure as exc:
            result = _transient(ch, target, stream, head, exc)
            status.run_record(channel=ch.name, recipient_id=recipient, entries=entries,
                              state="dead" if result.kind == "delivered" else "failed", error=str(exc))
            return result
        return _sent(ch, target, stream, head, run, ref)


_SENT_SQL = """
WITH sent AS (
    UPDATE notifications_delivery
    SET status = 'sent', sent_at = clock_timestamp(), provider_ref = %(ref)s, last_error = '', attempts = %(attempts)s,
        verify_first = false, updated_at = clock_timestamp()
    WHERE id = %(delivery)s
)
UPDATE notifications_deliverystream
SET delivered_seq = GREATEST(delivered_seq, %(last_seq)s), head_attempts = 0, head_since = NULL, next_attempt_at = NULL,
    last_error = '', updated_at = clock_timestamp()
WHERE id = %(stream)s
"""


def _sent(ch: Channel, target, stream: DeliveryStream, head: Delivery, run: Run, ref: str,
          verified: bool = False) -> DrainResult:
    with connection.cursor() as cursor:  # the outcome and the cursor in one statement
        cursor.execute(_SENT_SQL, {"delivery": head.pk, "ref": ref[:120], "attempts": head.attempts,
                                   "stream": stream.pk, "last_seq": head.last_seq})
    if stream.sends_only:
        stream_rest(stream_id=stream.pk)
    ch.sent(target, run, at=stream.db_now)
    status.run_record(channel=ch.name, recipient_id=ch.recipient_id(target), entries=run.entries, state="sent")
    if not verified:
        _breaker_record(ch, target, ok=True)
    count = head.last_seq - head.first_seq + 1
    metrics.DELIVERIES.labels(channel=ch.name, outcome="verified" if verified else "sent").inc()
    metrics.BATCH_SIZE.labels(channel=ch.name).observe(count)
    for entry in run.entries:
        metrics.LATENCY.labels(channel=ch.name).observe(max(0.0, (stream.db_now - entry.occurred_at).total_seconds()))
    # The run ended at the organization's last seq as read under the lock: nothing more to look at.
    return DrainResult("delivered", count=count, drained=head.last_seq >= stream.org_last_seq)


def _rate_limited(ch: Channel, target, stream: DeliveryStream, head: Delivery, exc: RateLimitedFailure):
    head.attempts -= 1  # a 429 says nothing about this message: no attempt spent
    try:
        ch.pause(target, exc.scope, exc.retry_after)
    except Exception:  # Redis down: the retry below still waits Retry-After
        logger.warning("limiter pause failed", exc_info=True)
    metrics.PROVIDER_429.labels(provider=ch.name).inc()
    Delivery.objects.filter(pk=head.pk).update(last_error=str(exc)[:2000])
    _touch(stream.pk, last_error=str(exc)[:2000], head_since=stream.head_since or stream.db_now,
           next_attempt_at=_later(exc.retry_after))
    return DrainResult("wait", wait=exc.retry_after)


def _transient(ch: Channel, target, stream: DeliveryStream, head: Delivery, exc: TransientFailure) -> DrainResult:
    if exc.outage:
        head.attempts -= 1  # only breaker probes failed: the provider is down, not this message
    else:
        _breaker_record(ch, target, ok=False)
    metrics.DELIVERIES.labels(channel=ch.name, outcome="retry").inc()
    age = (stream.db_now - head.created_at).total_seconds()
    if age >= ch.retry_seconds:
        _dead_letter(ch, stream, head, f"gave up after {age:.0f} s and {head.attempts} attempts: {exc}")
        return DrainResult("delivered", count=0)
    delay = exc.wait if exc.outage and exc.wait else backoff(max(1, head.attempts))
    delay = min(delay, max(0.05, ch.retry_seconds - age))
    Delivery.objects.filter(pk=head.pk).update(attempts=head.attempts, last_error=str(exc)[:2000],
                                               verify_first=isinstance(exc, UncertainFailure) or head.verify_first)
    _touch(stream.pk, head_attempts=head.attempts, head_since=stream.head_since or stream.db_now,
           last_error=str(exc)[:2000], next_attempt_at=_later(delay))
    return DrainResult("wait", wait=delay)


def _defer(ch: Channel, stream: DeliveryStream, head: Delivery, gate, *, unadmit: bool = False) -> DrainResult:
    """The channel holds the run back until `gate.until` (e.g. the recipient's next calendar day):
    the head stays pending and unattempted, so what arrives meanwhile joins it. `unadmit`: a head
    recorded in this step (as admitted) is recorded as not admitted."""
    fields = {"admitted": False} if unadmit else {}
    Delivery.objects.filter(pk=head.pk).update(last_error=f"deferred: {gate.reason}"[:2000], **fields)
    _touch(stream.pk, next_attempt_at=gate.until, last_error=f"deferred: {gate.reason}"[:2000])
    metrics.DELIVERIES.labels(channel=ch.name, outcome="deferred").inc()
    wait = (gate.until - stream.db_now).total_seconds() if gate.until else gate.wait
    return DrainResult("wait", wait=max(0.05, wait), notes={"deferred": gate.reason})


def _dead_letter(ch: Channel, stream: DeliveryStream, head: Delivery, reason: str) -> None:
    Delivery.objects.filter(pk=head.pk).update(status=Delivery.Status.DEAD, last_error=reason[:2000],
                                               attempts=head.attempts)
    metrics.DEAD_LETTERS.labels(channel=ch.name).inc()
    logger.warning("dead letter", extra={"org_id": stream.organization_id, "channel": ch.name,
                                         "first_seq": head.first_seq, "last_seq": head.last_seq, "reason": reason})
    if stream.on_dead_letter == DeliveryStream.OnDeadLetter.HOLD:
        _touch(stream.pk, held=True, last_error=reason[:2000])
    else:
        _touch(stream.pk, delivered_seq=Greatest(F("delivered_seq"), head.last_seq), head_attempts=0,
               head_since=None, next_attempt_at=None, last_error=reason[:2000])
        if stream.sends_only:
            stream_rest(stream_id=stream.pk)


def _breaker_record(ch: Channel, target, *, ok: bool) -> None:
    """Breaker bookkeeping never decides an outcome: a Redis error here is logged, not raised, so
    the provider's answer is recorded in Postgres either way (no rollback, no resend)."""
    for name in ch.breaker_names(target):
        try:
            CircuitBreaker(name).record(ok=ok)
        except Exception:
            logger.warning("breaker not updated (Redis unavailable)", extra={"breaker": name})
