"""Delivery of tracker events: kicking streams on commit and draining one stream under its fence.

The ordering rule (DESIGN.md): for each (organization, destination) events arrive in seq order.
`stream_deliver` holds the stream row's lock (FOR UPDATE SKIP LOCKED) for the whole send, sends
only the events right after the cursor, and advances the cursor in the transaction that records
the outcome. A failure leaves the head in place; nothing behind it can overtake it.
"""
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from notifications import metrics, realtime
from notifications.breaker import CircuitBreaker
from notifications.channels import PermanentFailure, RateLimitedFailure, TransientFailure
from notifications.channels import slack as slack_channel
from notifications.events import entry_message
from notifications.kinds import kind_get
from notifications.models import Channel, Delivery, DeliveryStream, LogEntry
from notifications.ratelimit import Scope, limiter
from organizations import secrets
from organizations.models import SlackIntegration
from organizations.services import slack_token

logger = logging.getLogger("herald.delivery")

KICK_TTL_SECONDS = 60
_redis: redis.Redis | None = None


def _redis_client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    return _redis


def _kick_key(org_id: int, channel: str, destination: str = "") -> str:
    return f"herald:kick:{org_id}:{channel}:{destination}"


# KEYS: kick flag, retry token. 1 = enqueue a drain; 0 = one is already queued; 2 = a retry chain is
# waiting and will see the event (the flag tells it so when it releases the token, atomically).
_KICK = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
  return 2
end
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then return 1 end
return 0
"""
# KEYS: retry token, kick flag. Releases the token; 1 if a kick arrived meanwhile (drain again).
_RELEASE = """
redis.call('DEL', KEYS[1])
return redis.call('EXISTS', KEYS[2])
"""


def stream_kick(*, org_id: int, channel: str, destination: str = "", force: bool = False) -> bool:
    """Enqueue a drain of the stream unless one is already queued or a retry chain is waiting.

    The drain clears the flag before it reads, so an event committed after that read sets the flag
    again and gets its own drain; one committed before is seen by the read. While a retry chain
    holds the token, a kick only sets the flag: the chain sees the event on its next poll, and if
    it goes idle first, releasing the token reports the flag and it drains once more."""
    from notifications.tasks import deliver_stream

    key = _kick_key(org_id, channel, destination)
    try:
        fresh = _redis_client().eval(_KICK, 2, key, key + ":retry", KICK_TTL_SECONDS) == 1
    except redis.RedisError:
        logger.warning("kick flag unavailable; enqueueing anyway", extra={"org_id": org_id})
        fresh = True
    if fresh or force:
        kwargs = {"org_id": org_id, "channel": channel}
        if destination:
            kwargs["destination"] = destination
        deliver_stream.apply_async(kwargs=kwargs)
    return bool(fresh or force)


def stream_kick_clear(*, org_id: int, channel: str, destination: str = "") -> None:
    try:
        _redis_client().delete(_kick_key(org_id, channel, destination))
    except redis.RedisError:
        pass


def stream_retry_token(*, org_id: int, channel: str, destination: str = "", delay: float | None,
                       owner: bool) -> bool:
    """At most one delayed-retry chain per stream. A drain that must wait claims the token (NX) and
    schedules the retry; other drains (kicks that arrived meanwhile) stop, since that retry will see
    their events too. The chain that owns the token refreshes it while it keeps waiting and releases
    it (delay=None) when the stream is idle. The TTL outlives a lost retry only briefly."""
    key = _kick_key(org_id, channel, destination) + ":retry"
    try:
        if delay is None:  # idle: release; True means a kick arrived meanwhile and must be served
            if owner:
                return bool(_redis_client().eval(_RELEASE, 2, key, _kick_key(org_id, channel, destination)))
            return False
        ttl_ms = int(delay * 1000) + 5000
        return bool(_redis_client().set(key, 1, px=ttl_ms, nx=not owner))
    except redis.RedisError:
        return True


def streams_kick_all(*, org_id: int) -> None:
    """Wake every stream of the organization (after a log entry committed)."""
    stream_kick(org_id=org_id, channel=Channel.INAPP)
    with connection.cursor() as cursor:  # one round trip: is Slack on, which members get email
        cursor.execute(
            """SELECT EXISTS (SELECT 1 FROM organizations_slackintegration
                              WHERE organization_id = %s AND enabled),
                      ARRAY (SELECT destination FROM notifications_deliverystream
                             WHERE organization_id = %s AND channel = 'email')""",
            [org_id, org_id])
        slack_on, email_destinations = cursor.fetchone()
    if slack_on:
        stream_kick(org_id=org_id, channel=Channel.SLACK)
    for destination in email_destinations:
        stream_kick(org_id=org_id, channel=Channel.EMAIL, destination=destination)


def stream_ensure(*, org_id: int, channel: str, destination: str = "", start_at_current: bool = False) -> None:
    """Create the stream if missing. A stream added later (Slack configured today) starts at the
    organization's current seq rather than replaying its whole history."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO notifications_deliverystream
                (organization_id, channel, destination, delivered_seq, head_attempts, last_error,
                 on_dead_letter, held, updated_at)
            SELECT o.id, %s, %s, CASE WHEN %s THEN o.last_event_seq ELSE 0 END, 0, '', 'skip', false, now()
            FROM organizations_organization o WHERE o.id = %s
            ON CONFLICT (organization_id, channel, destination) DO NOTHING
            """,
            [channel, destination, start_at_current, org_id],
        )


@transaction.atomic
def slack_integration_set(*, organization, channel: str, token: str) -> SlackIntegration:
    """Store the channel and the encrypted token; Slack delivery starts with the next event."""
    integration, _ = SlackIntegration.objects.update_or_create(
        organization=organization,
        defaults={"channel": channel, "token_encrypted": secrets.encrypt(token), "enabled": True},
    )
    stream_ensure(org_id=organization.id, channel=Channel.SLACK, start_at_current=True)
    return integration


@dataclass
class DrainResult:
    kind: str  # delivered | idle | busy | wait | held | missing
    count: int = 0
    wait: float = 0.0


def _backoff(attempts: int) -> float:
    ceiling = min(settings.DELIVERY_BACKOFF_MAX, settings.DELIVERY_BACKOFF_BASE * (2 ** max(0, attempts - 1)))
    return random.uniform(ceiling / 2, ceiling)  # "equal jitter": never less than half the step


def _pending(stream: DeliveryStream, limit: int) -> list[LogEntry]:
    return list(
        LogEntry.objects.filter(organization_id=stream.organization_id, seq__gt=stream.delivered_seq)
        .order_by("seq")[:limit]
    )


def _entry_range(org_id: int, first_seq: int, last_seq: int) -> list[LogEntry]:
    return list(LogEntry.objects.filter(organization_id=org_id, seq__gte=first_seq, seq__lte=last_seq).order_by("seq"))


_GATE_SQL = """
SELECT s.delivered_seq, o.last_event_seq, s.next_attempt_at, s.held, i.channel, i.enabled,
       extract(epoch FROM e.occurred_at)
FROM notifications_deliverystream s
JOIN organizations_organization o ON o.id = s.organization_id
LEFT JOIN organizations_slackintegration i ON i.organization_id = s.organization_id
LEFT JOIN notifications_logentry e ON e.organization_id = s.organization_id AND e.seq = s.delivered_seq + 1
WHERE s.organization_id = %s AND s.channel = 'slack' AND s.destination = ''
"""


def _slack_gate(org_id: int) -> DrainResult | None:
    """The cheap part of a Slack send, before any lock or event is loaded: is there work, is the
    stream backing off, is the breaker open, does the limiter grant a slot? Waiting streams poll
    this often, so it is one indexed read and two Redis scripts. None means: slot granted, send.

    Streams share the global limit oldest-first: each waits in the limiter's queue by the time its
    next undelivered event occurred, so the stream whose events have waited longest (a failed send
    being retried included) gets the next free slot; that is what bounds the worst latency."""
    with connection.cursor() as cursor:
        cursor.execute(_GATE_SQL, [org_id])
        row = cursor.fetchone()
    if row is None:
        return DrainResult("missing")
    delivered, last, next_attempt_at, held, slack_channel_name, enabled, head_at = row
    if held:
        return DrainResult("held")
    if delivered >= last or not slack_channel_name or not enabled:
        return DrainResult("idle")
    now = timezone.now()
    if next_attempt_at and next_attempt_at > now:
        return DrainResult("wait", wait=(next_attempt_at - now).total_seconds())
    gate = CircuitBreaker("slack").allow()
    if not gate.allowed:  # provider failing: wait without spending an attempt
        metrics.DELIVERIES.labels(channel="slack", outcome="breaker_wait").inc()
        return DrainResult("wait", wait=max(0.05, gate.wait))
    decision = limiter.acquire_fair([Scope("slack.global"), Scope("slack.channel", slack_channel_name)],
                                    member=f"{org_id}:{slack_channel_name}",
                                    since=float(head_at) if head_at is not None else None, lookahead=8)
    if not decision.allowed:
        metrics.LIMITER.labels(scope=decision.blocked_by.name, outcome="wait").inc()
        # No attempt spent; while we wait, more events may join this run (coalescing).
        return DrainResult("wait", wait=decision.wait)
    metrics.LIMITER.labels(scope="slack", outcome="grant").inc()
    return None


def stream_deliver(*, org_id: int, channel: str, destination: str = "") -> DrainResult:
    """Deliver the next run of events of one stream, if this worker can take its lock."""
    if channel == Channel.SLACK:
        gated = _slack_gate(org_id)
        if gated is not None:
            return gated
    with transaction.atomic():
        stream = (
            DeliveryStream.objects.select_for_update(skip_locked=True)
            .filter(organization_id=org_id, channel=channel, destination=destination)
            .first()
        )
        if stream is None:
            exists = DeliveryStream.objects.filter(organization_id=org_id, channel=channel,
                                                   destination=destination).exists()
            if exists:
                return DrainResult("busy")
            if channel != Channel.INAPP:
                return DrainResult("missing")
            stream_ensure(org_id=org_id, channel=channel, destination=destination)
            return DrainResult("busy")  # caller retries at once and finds it
        if stream.held:
            return DrainResult("held")
        now = timezone.now()
        if stream.next_attempt_at and stream.next_attempt_at > now:
            return DrainResult("wait", wait=(stream.next_attempt_at - now).total_seconds())
        if channel == Channel.INAPP:
            return _deliver_inapp(stream)
        if channel == Channel.SLACK:
            return _deliver_slack(stream, now)
        if channel == Channel.EMAIL:
            from notifications.email import deliver_email_stream

            return deliver_email_stream(stream=stream, now=now)
        raise ValueError(f"unknown channel {channel}")


# --- in-app + WebSocket ------------------------------------------------------------------------

# One statement per batch: a row per (entry, audience member still active), titles rendered by the
# entry's kind. Idempotent: a redelivered batch inserts nothing twice.
_FANOUT_SQL = """
INSERT INTO notifications_notification
    (organization_id, recipient_id, entry_id, seq, kind, title, body, data, created_at, read_at)
SELECT l.organization_id, u.id, l.id, l.seq, l.kind, v.title, v.body, l.payload, now(), NULL
FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(entry_id, title, body)
JOIN notifications_logentry l ON l.id = v.entry_id
CROSS JOIN LATERAL unnest(l.audience) AS a(user_id)
JOIN organizations_user u ON u.id = a.user_id AND u.is_active
ORDER BY l.seq, u.id
ON CONFLICT (recipient_id, entry_id) WHERE entry_id IS NOT NULL DO NOTHING
RETURNING id, recipient_id, seq
"""


def _deliver_inapp(stream: DeliveryStream) -> DrainResult:
    entries = _pending(stream, settings.DELIVERY_BATCH_MAX)
    if not entries:
        return DrainResult("idle")
    ids, titles, bodies = [], [], []
    for entry in entries:
        kind, view = kind_get(entry.kind), entry.view()
        ids.append(entry.id)
        titles.append(kind.title(view)[:255])
        bodies.append(kind.body(view))
    with connection.cursor() as cursor:
        cursor.execute(_FANOUT_SQL, [ids, titles, bodies])
        rows = cursor.fetchall()
    by_seq: dict[int, dict[str, int]] = {}
    for notification_id, recipient_id, seq in rows:
        by_seq.setdefault(seq, {})[str(recipient_id)] = notification_id
    group = realtime.org_group(stream.organization_id)
    messages = []
    for entry, title, body in zip(entries, titles, bodies, strict=True):
        message = entry_message(entry=entry)
        # The consumer of each member turns its own id into `notification.created`, and shows
        # members outside the audience only the seq.
        message.update(audience=entry.audience, notifications=by_seq.get(entry.seq, {}), title=title, body=body)
        messages.append((group, message))
    DeliveryStream.objects.filter(pk=stream.pk).update(
        delivered_seq=entries[-1].seq, head_attempts=0, head_since=None, last_error="", updated_at=timezone.now()
    )
    # Published after commit: a rolled-back drain announces nothing (no phantom inbox ids). Two
    # drains may then publish out of order; the consumer orders by seq and fills gaps from the log.
    transaction.on_commit(lambda: _publish_live(messages), robust=True)
    now = timezone.now()
    metrics.DELIVERIES.labels(channel="inapp", outcome="sent").inc(len(rows))
    metrics.DELIVERIES.labels(channel="websocket", outcome="sent").inc(len(entries))
    for entry in entries:
        metrics.LATENCY.labels(channel="inapp").observe((now - entry.occurred_at).total_seconds())
    return DrainResult("delivered", count=len(entries))


def _publish_live(messages: list[tuple[str, dict]]) -> None:
    try:
        realtime.publish(messages)
    except Exception:  # the inbox rows are committed; sockets catch up from the log
        logger.warning("live messages not published (channel layer unavailable)", exc_info=True)


# --- Slack -----------------------------------------------------------------------------------

def _dead_letter(stream: DeliveryStream, delivery: Delivery, reason: str) -> None:
    delivery.status, delivery.last_error = Delivery.Status.DEAD, reason
    delivery.save(update_fields=["status", "last_error", "attempts"])
    metrics.DEAD_LETTERS.labels(channel=stream.channel).inc()
    logger.warning("dead letter", extra={"org_id": stream.organization_id, "channel": stream.channel,
                                         "first_seq": delivery.first_seq, "last_seq": delivery.last_seq,
                                         "reason": reason})
    if stream.on_dead_letter == DeliveryStream.OnDeadLetter.HOLD:
        DeliveryStream.objects.filter(pk=stream.pk).update(held=True, last_error=reason, updated_at=timezone.now())
    else:
        DeliveryStream.objects.filter(pk=stream.pk).update(
            delivered_seq=delivery.last_seq, head_attempts=0, head_since=None, next_attempt_at=None,
            last_error=reason, updated_at=timezone.now(),
        )


def _deliver_slack(stream: DeliveryStream, now) -> DrainResult:
    integration = SlackIntegration.objects.filter(organization_id=stream.organization_id).first()
    if integration is None or not integration.enabled:
        return DrainResult("idle")
    # The head delivery, if an earlier attempt failed, is retried first and keeps its range.
    head = (Delivery.objects.filter(stream=stream, status=Delivery.Status.PENDING, late=False)
            .order_by("first_seq").first())
    if head is not None:
        events = _entry_range(stream.organization_id, head.first_seq, head.last_seq)
    else:
        events = _pending(stream, settings.DELIVERY_BATCH_MAX)
        if not events:
            return DrainResult("idle")
    # _slack_gate has granted the slot (breaker closed or probing, limiter passed) before the lock.
    breaker = CircuitBreaker("slack")
    if head is None:
        head = Delivery.objects.create(organization_id=stream.organization_id, stream=stream, channel=Channel.SLACK,
                                       first_seq=events[0].seq, last_seq=events[-1].seq)
    head.attempts += 1
    message = slack_channel.build_message(org_id=stream.organization_id, events=events)
    try:
        ts = slack_channel.send(token=slack_token(integration=integration), channel=integration.channel,
                                message=message)
    except RateLimitedFailure as exc:
        limiter.pause(Scope("slack.channel", integration.channel), exc.retry_after)
        metrics.PROVIDER_429.labels(provider="slack").inc()
        head.last_error = str(exc)
        head.save(update_fields=["attempts", "last_error"])
        DeliveryStream.objects.filter(pk=stream.pk).update(
            last_error=str(exc), head_since=stream.head_since or now, updated_at=timezone.now())
        return DrainResult("wait", wait=exc.retry_after)
    except PermanentFailure as exc:
        breaker.record(ok=True)  # the provider answered; this destination is what is wrong
        _dead_letter(stream, head, str(exc))
        return DrainResult("delivered", count=0)
    except TransientFailure as exc:
        breaker.record(ok=False)
        metrics.DELIVERIES.labels(channel="slack", outcome="retry").inc()
        if head.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
            _dead_letter(stream, head, f"gave up after {head.attempts} attempts: {exc}")
            return DrainResult("delivered", count=0)
        delay = _backoff(head.attempts)
        head.last_error = str(exc)
        head.save(update_fields=["attempts", "last_error"])
        DeliveryStream.objects.filter(pk=stream.pk).update(
            head_attempts=head.attempts, head_since=stream.head_since or now, last_error=str(exc),
            next_attempt_at=timezone.now() + timedelta(seconds=delay), updated_at=timezone.now())
        return DrainResult("wait", wait=delay)
    breaker.record(ok=True)
    sent_at = timezone.now()
    head.status, head.sent_at, head.provider_ref, head.last_error = Delivery.Status.SENT, sent_at, ts, ""
    head.save(update_fields=["status", "sent_at", "provider_ref", "last_error", "attempts"])
    DeliveryStream.objects.filter(pk=stream.pk).update(
        delivered_seq=head.last_seq, head_attempts=0, head_since=None, next_attempt_at=None, last_error="",
        updated_at=sent_at)
    metrics.DELIVERIES.labels(channel="slack", outcome="sent").inc()
    metrics.BATCH_SIZE.labels(channel="slack").observe(len(events))
    for e in events:
        metrics.LATENCY.labels(channel="slack").observe((sent_at - e.occurred_at).total_seconds())
    return DrainResult("delivered", count=len(events))


# --- sweeper ---------------------------------------------------------------------------------

def streams_stalled(*, older_than: float, lookback_hours: float = 24 * 7,
                    limit: int = 1000) -> list[tuple[int, str, str]]:
    """Streams whose next event has waited `older_than` seconds and that were untouched that long
    (a stream that was idle for hours and just got an event is not stalled; its kick is on the
    way). Only
    organizations with an event in the lookback window are read (index org_recent_activity), so a
    sweep costs what the active organizations cost, not what the whole database holds."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT s.organization_id, s.channel, s.destination
            FROM organizations_organization o
            JOIN notifications_deliverystream s ON s.organization_id = o.id
            WHERE o.last_event_at > now() - make_interval(secs => %s)
              AND s.delivered_seq < o.last_event_seq
              AND NOT s.held
              AND s.updated_at < now() - make_interval(secs => %s)
              AND (s.next_attempt_at IS NULL OR s.next_attempt_at < now() - make_interval(secs => %s))
              AND EXISTS (SELECT 1 FROM notifications_logentry e
                          WHERE e.organization_id = s.organization_id AND e.seq = s.delivered_seq + 1
                            AND e.occurred_at < now() - make_interval(secs => %s))
            ORDER BY s.updated_at
            LIMIT %s
            """,
            [lookback_hours * 3600, older_than, older_than, older_than, limit],
        )
        return cursor.fetchall()


def streams_sweep() -> int:
    stalled = streams_stalled(older_than=settings.DELIVERY_STALL_SECONDS)
    for org_id, channel, destination in stalled:
        stream_kick(org_id=org_id, channel=channel, destination=destination, force=True)
    if stalled:
        logger.info("sweeper re-kicked stalled streams", extra={"count": len(stalled)})
    metrics.SWEEPER_KICKS.inc(len(stalled))
    return len(stalled)


def stream_drain(*, org_id: int, channel: str, destination: str = "", budget_seconds: float = 5.0) -> DrainResult:
    """Drain as much as the budget allows; the result says what to do next (retry, wait, stop)."""
    stream_kick_clear(org_id=org_id, channel=channel, destination=destination)
    deadline = time.monotonic() + budget_seconds
    total = 0
    while True:
        result = stream_deliver(org_id=org_id, channel=channel, destination=destination)
        total += result.count
        if result.kind == "delivered" and time.monotonic() < deadline:
            continue
        if result.kind == "delivered":
            return DrainResult("more", count=total)
        result.count = total
        return result


def backlog_by_channel() -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT s.channel, COALESCE(SUM(o.last_event_seq - s.delivered_seq), 0)
               FROM organizations_organization o JOIN notifications_deliverystream s ON s.organization_id = o.id
               WHERE o.last_event_at > now() - interval '7 days'
                 AND s.delivered_seq < o.last_event_seq GROUP BY s.channel"""
        )
        return dict(cursor.fetchall())



# --- dead letters ----------------------------------------------------------------------------

@transaction.atomic
def delivery_requeue(*, delivery: Delivery) -> Delivery:
    """Send a dead letter again. On a held stream it is still the head: the stream resumes in order.
    On a stream that moved on, it goes out late (marked so), without moving the cursor back."""
    delivery = Delivery.objects.select_for_update().get(pk=delivery.pk)
    if delivery.status != Delivery.Status.DEAD:
        from config.errors import Conflict

        raise Conflict("Only dead letters can be requeued.", code="not_dead_letter")
    stream = DeliveryStream.objects.select_for_update().get(pk=delivery.stream_id)
    delivery.attempts, delivery.last_error = 0, ""
    if stream.held and stream.delivered_seq < delivery.first_seq:
        delivery.status = Delivery.Status.PENDING
        delivery.save(update_fields=["status", "attempts", "last_error"])
        DeliveryStream.objects.filter(pk=stream.pk).update(held=False, head_attempts=0, next_attempt_at=None,
                                                           updated_at=timezone.now())
        transaction.on_commit(lambda: stream_kick(org_id=stream.organization_id, channel=stream.channel,
                                                  destination=stream.destination, force=True), robust=True)
    else:
        from notifications.tasks import send_late_delivery

        delivery.status, delivery.late = Delivery.Status.PENDING, True
        delivery.save(update_fields=["status", "attempts", "last_error", "late"])
        transaction.on_commit(lambda: send_late_delivery.apply_async(kwargs={"delivery_id": delivery.pk}),
                              robust=True)
    return delivery


@transaction.atomic
def delivery_discard(*, delivery: Delivery) -> Delivery:
    """Give up on a dead letter for good (it stays recorded as discarded)."""
    if delivery.status == Delivery.Status.DEAD:
        delivery.status = Delivery.Status.DISCARDED
        delivery.save(update_fields=["status"])
        stream = DeliveryStream.objects.select_for_update().get(pk=delivery.stream_id)
        if stream.held and stream.delivered_seq < delivery.first_seq:  # skip it and resume
            DeliveryStream.objects.filter(pk=stream.pk).update(
                held=False, delivered_seq=delivery.last_seq, head_attempts=0, next_attempt_at=None,
                updated_at=timezone.now())
            transaction.on_commit(lambda: stream_kick(org_id=stream.organization_id, channel=stream.channel,
                                                      destination=stream.destination, force=True), robust=True)
    return delivery


def late_delivery_send(*, delivery_id: int) -> DrainResult:
    """Send a requeued dead letter out of band, holding the stream's lock so it never interleaves
    with a regular send; the cursor is not touched."""
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id, late=True,
                                                               status=Delivery.Status.PENDING).first()
        if delivery is None:
            return DrainResult("idle")
        stream = DeliveryStream.objects.select_for_update(skip_locked=True).filter(pk=delivery.stream_id).first()
        if stream is None:
            return DrainResult("busy")
        if delivery.channel == Channel.EMAIL:
            from notifications.email import email_late_send

            return email_late_send(delivery=delivery, stream=stream)
        if delivery.channel != Channel.SLACK:
            return DrainResult("idle")
        integration = SlackIntegration.objects.filter(organization_id=stream.organization_id).first()
        if integration is None:
            return DrainResult("idle")
        decision = limiter.acquire([Scope("slack.global"), Scope("slack.channel", integration.channel)])
        if not decision.allowed:
            return DrainResult("wait", wait=decision.wait)
        events = _entry_range(stream.organization_id, delivery.first_seq, delivery.last_seq)
        message = slack_channel.build_message(org_id=stream.organization_id, events=events)
        message["text"] = "(late) " + message["text"]
        message["metadata"]["event_payload"]["late"] = True
        delivery.attempts += 1
        try:
            delivery.provider_ref = slack_channel.send(token=slack_token(integration=integration),
                                                       channel=integration.channel, message=message)
        except RateLimitedFailure as exc:
            limiter.pause(Scope("slack.channel", integration.channel), exc.retry_after)
            delivery.save(update_fields=["attempts"])
            return DrainResult("wait", wait=exc.retry_after)
        except (TransientFailure, PermanentFailure) as exc:
            delivery.status, delivery.last_error = Delivery.Status.DEAD, f"late send failed: {exc}"
            delivery.save(update_fields=["status", "last_error", "attempts"])
            return DrainResult("delivered")
        delivery.status, delivery.sent_at = Delivery.Status.SENT, timezone.now()
        delivery.save(update_fields=["status", "sent_at", "provider_ref", "attempts"])
        return DrainResult("delivered", count=len(events))
