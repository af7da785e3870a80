"""Email delivery: tracker events to members who opted in, and account emails (profile change
confirmations) queued in Postgres and drained under the email API limit.

Tracker events: one DeliveryStream per (organization, "email", destination=str(user_id)), drained
by `deliver_email_stream` under stream_deliver's lock with the fence/retry/dead-letter/limiter/
breaker pattern of Slack. Each send covers every pending event, so a backlog goes as one digest,
in seq order. When the recipient's daily limit denies, the run is parked: it stays the stream's
head as a pending Delivery with an open EmailDeferral, the cursor moves past it (so nothing
re-kicks it every few seconds), events that arrive meanwhile join it, and when the limit frees
(`sweep_email` re-kicks it) it goes out as one digest. Nothing is dropped.

Account emails: `profile_updated_email_queue` writes an OutboundEmail in the caller's transaction
and kicks the drain lanes on commit; `outbound_drain` takes rows FOR UPDATE SKIP LOCKED, one
limiter grant per email, so any number of workers never push the provider past the limit.
"""
import logging
import time
from datetime import timedelta
from email.utils import parseaddr

import redis
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from notifications import metrics
from notifications.kinds import kind_get
from notifications.channels import PermanentFailure, TransientFailure
from notifications.channels import email as smtp
from notifications.models import (
    Channel,
    Delivery,
    DeliveryStream,
    EmailDeferral,
    LogEntry,
    OutboundEmail,
    PreferenceCategory,
)
from notifications.ratelimit import Scope, limiter
from notifications.services import DrainResult, _backoff, _dead_letter, _redis_client, stream_kick
from organizations.models import Organization, User

logger = logging.getLogger("herald.email")

DEFERRED_NOTE = "deferred: recipient_daily_limit"
PROFILE_FIELD_LABELS = {
    "email": "Email address", "first_name": "First name", "last_name": "Last name", "time_zone": "Time zone",
    "phone": "Phone", "postal_code": "Postal code", "slack_user_id": "Slack user ID",
}


# --- messages --------------------------------------------------------------------------------

def _domain() -> str:
    address = parseaddr(settings.EMAIL_FROM)[1]
    return address.rsplit("@", 1)[1] if "@" in address else "herald.local"


def _message_id(kind: str, key: str) -> str:
    """Deterministic, so a resend after a crash between the provider's 250 and our commit carries
    the same Message-ID and the receiving side can drop the duplicate."""
    return f"<herald.{kind}.{key}@{_domain()}>"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:250]


def _recipient_name(user: User) -> str:
    return user.first_name or user.username


def _event_context(entry: LogEntry) -> dict:
    view = entry.view()
    return {"seq": entry.seq, "actor": view.actor, "tracker": entry.payload.get("tracker_name", ""),
            "verb": "started" if entry.payload.get("action") == "start" else "stopped",
            "title": kind_get(entry.kind).title(view), "occurred_at": entry.occurred_at}


def tracker_email_build(*, organization: Organization, user: User, delivery: Delivery,
                        deferred: bool = False) -> tuple[EmailMultiAlternatives, list[LogEntry]]:
    """One event -> a single-event mail; a run -> a digest listing up to EMAIL_DIGEST_MAX_LINES events
    in seq order and summarizing the rest. Returns the message and the events it lists."""
    first, last = delivery.first_seq, delivery.last_seq
    events = list(LogEntry.objects.filter(organization_id=organization.id, seq__gte=first, seq__lte=last)
                  .order_by("seq")[:settings.EMAIL_DIGEST_MAX_LINES])
    total = last - first + 1
    lines = [_event_context(e) for e in events]
    context = {"organization": organization, "recipient_name": _recipient_name(user), "first_seq": first,
               "last_seq": last, "total": total, "events": lines, "deferred": deferred,
               "more": total - len(lines), "more_first_seq": first + len(lines)}
    if total == 1 and lines:
        template, kind = "email/tracker_event", "tracker_event"
        event = context["event"] = lines[0]
        subject = f"[{organization.name}] {event['actor']} {event['verb']} {event['tracker']}"
    else:
        template, kind = "email/tracker_digest", "tracker_digest"
        subject = f"[{organization.name}] {total} tracker updates (#{first}–#{last})"
    context["subject"] = subject = _one_line(subject)
    message = EmailMultiAlternatives(
        subject=subject, body=render_to_string(f"{template}.txt", context), from_email=settings.EMAIL_FROM,
        to=[user.email],
        headers={"Message-ID": _message_id("delivery", f"{delivery.id}.{first}-{last}"),
                 "Auto-Submitted": "auto-generated", "X-Herald-Kind": kind,
                 "X-Herald-Org": str(organization.id), "X-Herald-First-Seq": str(first),
                 "X-Herald-Last-Seq": str(last), "X-Herald-Delivery": str(delivery.id)},
    )
    message.attach_alternative(render_to_string(f"{template}.html", context), "text/html")
    return message, events


def outbound_message(row: OutboundEmail) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(
        subject=row.subject, body=row.body_text, from_email=settings.EMAIL_FROM, to=[row.to_email],
        headers={"Message-ID": _message_id("outbound", str(row.id)), "Auto-Submitted": "auto-generated",
                 "X-Herald-Kind": row.kind, "X-Herald-Outbound": str(row.id)},
    )
    if row.body_html:
        message.attach_alternative(row.body_html, "text/html")
    return message


# --- tracker events: one stream per (organization, member) -------------------------------------

def _stream_user(stream: DeliveryStream) -> User | None:
    """The member the stream mails, or None when the user is gone or left the organization."""
    if not stream.destination.isdigit():
        return None
    return User.objects.filter(pk=int(stream.destination), is_active=True,
                               memberships__organization_id=stream.organization_id).first()


def _open_deferral(delivery: Delivery | None) -> EmailDeferral | None:
    if delivery is None:
        return None
    return EmailDeferral.objects.filter(delivery=delivery, released_at__isnull=True).first()


def _close_deferral(delivery: Delivery, at) -> None:
    EmailDeferral.objects.filter(delivery=delivery, released_at__isnull=True).update(released_at=at)


def _head_cover(stream: DeliveryStream, head: Delivery | None, first: int, last: int) -> Delivery:
    """The head delivery, created or extended so it covers first..last (newer events coalesce
    into the run about to be sent; its start never moves)."""
    if head is None:
        return Delivery.objects.create(organization_id=stream.organization_id, stream=stream, channel=Channel.EMAIL,
                                       first_seq=first, last_seq=last)
    if last > head.last_seq:
        head.last_seq = last
        head.save(update_fields=["last_seq"])
    return head


def _park(stream: DeliveryStream, head: Delivery, deferral: EmailDeferral | None, user_id: int, now,
          release_at=None) -> DrainResult:
    """Hold the head back until the recipient's limit frees: record it, move the cursor past it."""
    head.last_error = DEFERRED_NOTE
    head.save(update_fields=["last_error"])
    if deferral is None:
        EmailDeferral.objects.create(user_id=user_id, category=PreferenceCategory.TRACKER_EVENT, delivery=head,
                                     release_at=release_at or now)
        metrics.EMAIL_DEFERRED.labels(category=PreferenceCategory.TRACKER_EVENT).inc()
        metrics.DELIVERIES.labels(channel="email", outcome="deferred").inc()
        logger.info("email deferred by the recipient daily limit",
                    extra={"org_id": stream.organization_id, "user_id": user_id, "first_seq": head.first_seq,
                           "last_seq": head.last_seq, "release_at": str(release_at)})
    elif release_at is not None:
        deferral.release_at = release_at
        deferral.save(update_fields=["release_at"])
    DeliveryStream.objects.filter(pk=stream.pk).update(
        delivered_seq=head.last_seq, head_attempts=0, head_since=None, next_attempt_at=None,
        last_error=DEFERRED_NOTE, updated_at=timezone.now())
    # "idle": nothing to do until the limit frees; sweep_email re-kicks the stream then.
    return DrainResult("idle", count=max(0, head.last_seq - stream.delivered_seq))


def deliver_email_stream(*, stream: DeliveryStream, now) -> DrainResult:
    """Send the next run of one member's email stream. Called by stream_deliver inside its
    transaction, holding the stream row's lock."""
    user = _stream_user(stream)
    if user is None:  # nobody to mail any more; the stream goes (with its records)
        DeliveryStream.objects.filter(pk=stream.pk).delete()
        return DrainResult("idle")
    # Requeued dead letters (late=True) go out of band (email_late_send), never as the head.
    head = (Delivery.objects.filter(stream=stream, status=Delivery.Status.PENDING, late=False)
            .order_by("first_seq").first())
    organization = Organization.objects.get(pk=stream.organization_id)
    first = head.first_seq if head else stream.delivered_seq + 1
    # Events are gapless per organization and committed with last_event_seq, so first..last all exist.
    last = max(head.last_seq if head else 0, organization.last_event_seq)
    if last < first:
        return DrainResult("idle")
    deferral = _open_deferral(head)
    if deferral is not None and deferral.release_at > now:
        return _park(stream, _head_cover(stream, head, first, last), deferral, user.id, now)
    if not user.email:
        head = _head_cover(stream, head, first, last)
        _dead_letter(stream, head, "recipient has no email address")
        _close_deferral(head, now)
        return DrainResult("delivered", count=0)

    route = smtp.route()
    if not route.open:  # both providers failing: wait without spending an attempt or a grant
        metrics.DELIVERIES.labels(channel="email", outcome="breaker_wait").inc()
        return DrainResult("wait", wait=route.wait)
    # The recipient's daily slot is spent once per message, not again on a retry of the same message.
    charge_recipient = head is None or head.attempts == 0
    scopes = [Scope("email.api")] + ([Scope("email.recipient", str(user.id))] if charge_recipient else [])
    decision = limiter.acquire(scopes)
    if not decision.allowed:
        metrics.LIMITER.labels(scope=decision.blocked_by.name, outcome="wait").inc()
        if decision.blocked_by.name == "email.recipient" and decision.wait > settings.EMAIL_DEFER_MIN_SECONDS:
            head = _head_cover(stream, head, first, last)
            return _park(stream, head, deferral, user.id, now, release_at=now + timedelta(seconds=decision.wait))
        # No attempt spent; while we wait, more events may join this run (coalescing).
        return DrainResult("wait", wait=decision.wait)
    metrics.LIMITER.labels(scope="email", outcome="grant").inc()

    head = _head_cover(stream, head, first, last)
    head.attempts += 1
    message, events = tracker_email_build(organization=organization, user=user, delivery=head,
                                          deferred=deferral is not None)
    try:
        sent = smtp.send(message=message, route=route)
    except PermanentFailure as exc:
        _dead_letter(stream, head, str(exc))
        _close_deferral(head, now)
        return DrainResult("delivered", count=0)
    except TransientFailure as exc:
        if getattr(exc, "outage", False):
            head.attempts -= 1  # only half-open probes failed: the providers are down, not this message
        metrics.DELIVERIES.labels(channel="email", outcome="retry").inc()
        if head.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
            _dead_letter(stream, head, f"gave up after {head.attempts} attempts: {exc}")
            _close_deferral(head, now)
            return DrainResult("delivered", count=0)
        delay = _backoff(max(1, head.attempts))
        head.last_error = str(exc)
        head.save(update_fields=["attempts", "last_error"])
        DeliveryStream.objects.filter(pk=stream.pk).update(
            head_attempts=head.attempts, head_since=stream.head_since or now, last_error=str(exc)[:2000],
            next_attempt_at=timezone.now() + timedelta(seconds=delay), updated_at=timezone.now())
        return DrainResult("wait", wait=delay)
    sent_at = timezone.now()
    head.status, head.sent_at, head.provider_ref, head.last_error = Delivery.Status.SENT, sent_at, sent.ref[:120], ""
    head.save(update_fields=["status", "sent_at", "provider_ref", "last_error", "attempts"])
    DeliveryStream.objects.filter(pk=stream.pk).update(
        delivered_seq=head.last_seq, head_attempts=0, head_since=None, next_attempt_at=None, last_error="",
        updated_at=sent_at)
    _close_deferral(head, sent_at)
    count = head.last_seq - head.first_seq + 1
    metrics.DELIVERIES.labels(channel="email", outcome="sent").inc()
    metrics.BATCH_SIZE.labels(channel="email").observe(count)
    for event in events:
        metrics.LATENCY.labels(channel="email").observe((sent_at - event.occurred_at).total_seconds())
    return DrainResult("delivered", count=count)


def email_late_send(*, delivery: Delivery, stream: DeliveryStream) -> DrainResult:
    """Send a requeued email dead letter (late=True) out of band, for services.late_delivery_send:
    the caller holds the stream's lock; the cursor is not touched. The subject says "(late)"."""
    user = _stream_user(stream)
    if user is None or not user.email:
        delivery.status, delivery.last_error = Delivery.Status.DEAD, "late send failed: no recipient address"
        delivery.save(update_fields=["status", "last_error"])
        return DrainResult("delivered")
    route = smtp.route()
    if not route.open:
        return DrainResult("wait", wait=route.wait)
    decision = limiter.acquire([Scope("email.api")])  # the recipient's slot was spent on the first try
    if not decision.allowed:
        return DrainResult("wait", wait=decision.wait)
    organization = Organization.objects.get(pk=stream.organization_id)
    message, _ = tracker_email_build(organization=organization, user=user, delivery=delivery)
    message.subject = "(late) " + message.subject
    delivery.attempts += 1
    try:
        sent = smtp.send(message=message, route=route)
    except (TransientFailure, PermanentFailure) as exc:
        delivery.status, delivery.last_error = Delivery.Status.DEAD, f"late send failed: {exc}"
        delivery.save(update_fields=["status", "last_error", "attempts"])
        return DrainResult("delivered")
    delivery.status, delivery.sent_at, delivery.provider_ref = Delivery.Status.SENT, timezone.now(), sent.ref[:120]
    delivery.save(update_fields=["status", "sent_at", "provider_ref", "attempts"])
    metrics.DELIVERIES.labels(channel="email", outcome="sent_late").inc()
    return DrainResult("delivered", count=delivery.last_seq - delivery.first_seq + 1)


# --- account emails: the durable outbox ----------------------------------------------------------

def profile_updated_email_queue(*, user: User, changed: list[str]) -> OutboundEmail | None:
    """Queue the confirmation of a profile change. Runs inside the caller's transaction, so the
    email exists exactly when the change commits; the drain is kicked on commit."""
    if not user.email or not changed:
        return None
    now = timezone.now()
    context = {
        "recipient_name": _recipient_name(user), "changed_at": now,
        "changes": [{"field": f, "label": PROFILE_FIELD_LABELS.get(f, f), "value": getattr(user, f, "")}
                    for f in changed],
    }
    context["subject"] = subject = "Your Herald profile was updated"
    row = OutboundEmail.objects.create(
        user=user, kind=OutboundEmail.Kind.PROFILE_UPDATED, to_email=user.email, subject=subject,
        body_text=render_to_string("email/profile_updated.txt", context),
        body_html=render_to_string("email/profile_updated.html", context), next_attempt_at=now,
    )
    metrics.EMAIL_OUTBOUND.labels(kind=row.kind, outcome="queued").inc()
    transaction.on_commit(outbound_kick, robust=True)  # lost with Redis down: the email sweep re-kicks
    return row


def _lane_key(lane: int) -> str:
    return f"herald:email:outbound:lane:{lane}"


def outbound_kick() -> int:
    """Give every drain lane a task unless it has one queued or running (its lease is set).
    Returns how many tasks were enqueued. The beat calls this too, so a lost task strands
    nothing longer than its lease."""
    from notifications.tasks import drain_outbound_email

    started = 0
    for lane in range(settings.EMAIL_OUTBOUND_LANES):
        try:
            fresh = _redis_client().set(_lane_key(lane), 1, nx=True,
                                        ex=max(1, int(settings.EMAIL_OUTBOUND_LEASE_SECONDS)))
        except redis.RedisError:
            logger.warning("outbound lane lease unavailable; enqueueing anyway", extra={"lane": lane})
            fresh = True
        if fresh:
            drain_outbound_email.apply_async(kwargs={"lane": lane})
            started += 1
    return started


def outbound_lane_renew(*, lane: int, delay: float = 0.0) -> None:
    """The lane's task goes on (rescheduled in `delay` seconds): keep its lease past that."""
    try:
        _redis_client().set(_lane_key(lane), 1, ex=max(1, int(settings.EMAIL_OUTBOUND_LEASE_SECONDS + delay)))
    except redis.RedisError:
        pass


def outbound_lane_release(*, lane: int) -> None:
    """The lane found nothing due: drop its lease, then look once more, so an email committed
    between our last look and the release (whose kick saw the lease) is not stranded."""
    try:
        _redis_client().delete(_lane_key(lane))
    except redis.RedisError:
        pass
    if outbound_due_exists():
        outbound_kick()


def outbound_due_exists() -> bool:
    return OutboundEmail.objects.filter(status__in=[OutboundEmail.Status.PENDING, OutboundEmail.Status.DEFERRED],
                                        next_attempt_at__lte=timezone.now()).exists()


def _outbound_defer(row: OutboundEmail, now, wait: float) -> None:
    row.next_attempt_at = now + timedelta(seconds=wait)
    fields = ["next_attempt_at"]
    if wait > settings.EMAIL_DEFER_MIN_SECONDS:
        row.status, row.last_error = OutboundEmail.Status.DEFERRED, DEFERRED_NOTE
        fields += ["status", "last_error"]
        updated = EmailDeferral.objects.filter(outbound=row, released_at__isnull=True).update(
            release_at=row.next_attempt_at)
        if not updated:
            EmailDeferral.objects.create(user_id=row.user_id, category=PreferenceCategory.PROFILE_UPDATED,
                                         outbound=row, release_at=row.next_attempt_at)
            metrics.EMAIL_DEFERRED.labels(category=PreferenceCategory.PROFILE_UPDATED).inc()
            metrics.EMAIL_OUTBOUND.labels(kind=row.kind, outcome="deferred").inc()
    row.save(update_fields=fields)


def _outbound_finish(row: OutboundEmail, status: str, at, error: str = "", ref: str = "") -> None:
    row.status, row.last_error = status, error
    fields = ["status", "last_error", "attempts"]
    if status == OutboundEmail.Status.SENT:
        row.sent_at, row.provider_ref = at, ref
        fields += ["sent_at", "provider_ref"]
    row.save(update_fields=fields)
    EmailDeferral.objects.filter(outbound=row, released_at__isnull=True).update(released_at=at)
    metrics.EMAIL_OUTBOUND.labels(kind=row.kind, outcome=status).inc()
    if status == OutboundEmail.Status.DEAD:
        metrics.DEAD_LETTERS.labels(channel="email").inc()
        logger.warning("dead letter", extra={"channel": "email", "outbound_id": row.id, "reason": error})


def outbound_send_next() -> DrainResult:
    """Take the oldest due account email no other worker holds, and send it if the limiter grants.
    "delivered" and "deferred" mean a row was handled (go on); "wait" and "idle" mean stop."""
    now = timezone.now()
    with transaction.atomic():
        row = (OutboundEmail.objects.select_for_update(skip_locked=True)
               .filter(status__in=[OutboundEmail.Status.PENDING, OutboundEmail.Status.DEFERRED],
                       next_attempt_at__lte=now)
               .order_by("next_attempt_at", "id").first())
        if row is None:
            return DrainResult("idle")
        route = smtp.route()
        if not route.open:
            metrics.EMAIL_OUTBOUND.labels(kind=row.kind, outcome="breaker_wait").inc()
            return DrainResult("wait", wait=route.wait)
        scopes = [Scope("email.api")]
        if row.attempts == 0:  # the recipient's slot is spent once per email, not per retry
            scopes.append(Scope("email.recipient", str(row.user_id)))
        decision = limiter.acquire(scopes)
        if not decision.allowed:
            metrics.LIMITER.labels(scope=decision.blocked_by.name, outcome="wait").inc()
            if decision.blocked_by.name == "email.recipient":  # this recipient waits; others go on
                _outbound_defer(row, now, decision.wait)
                return DrainResult("deferred")
            return DrainResult("wait", wait=decision.wait)
        metrics.LIMITER.labels(scope="email", outcome="grant").inc()
        row.attempts += 1
        try:
            sent = smtp.send(message=outbound_message(row), route=route)
        except PermanentFailure as exc:
            _outbound_finish(row, OutboundEmail.Status.DEAD, now, error=str(exc))
            return DrainResult("delivered")
        except TransientFailure as exc:
            if getattr(exc, "outage", False):
                row.attempts -= 1
            if row.attempts >= settings.EMAIL_MAX_ATTEMPTS:
                _outbound_finish(row, OutboundEmail.Status.DEAD, now,
                                 error=f"gave up after {row.attempts} attempts: {exc}")
                return DrainResult("delivered")
            row.next_attempt_at = timezone.now() + timedelta(seconds=_backoff(max(1, row.attempts)))
            row.last_error = str(exc)
            row.save(update_fields=["attempts", "next_attempt_at", "last_error"])
            metrics.EMAIL_OUTBOUND.labels(kind=row.kind, outcome="retry").inc()
            return DrainResult("delivered")
        _outbound_finish(row, OutboundEmail.Status.SENT, timezone.now(), ref=sent.ref)
        return DrainResult("delivered", count=1)


def outbound_drain(*, budget_seconds: float = 5.0) -> DrainResult:
    """Send due account emails until the budget is spent ("more"), the limiter or the breakers say
    wait ("wait"), or nothing is due ("idle")."""
    deadline = time.monotonic() + budget_seconds
    total = 0
    while True:
        result = outbound_send_next()
        total += result.count
        if result.kind in ("delivered", "deferred"):
            if time.monotonic() < deadline:
                continue
            return DrainResult("more", count=total)
        result.count = total
        return result


# --- sweeper -------------------------------------------------------------------------------------

def email_sweep(*, limit: int = 1000) -> int:
    """Re-kick what waits on a clock rather than an event: parked tracker digests whose recipient
    limit has freed (or whose retry is due), and due account emails. Returns streams kicked."""
    now = timezone.now()
    stall = timedelta(seconds=settings.DELIVERY_STALL_SECONDS)
    due = (EmailDeferral.objects.filter(released_at__isnull=True, release_at__lte=now, delivery__isnull=False,
                                        delivery__stream__held=False, delivery__stream__updated_at__lt=now - stall)
           .exclude(delivery__stream__next_attempt_at__gt=now)
           .values_list("delivery__stream__organization_id", "delivery__stream__destination")
           .distinct()[:limit])
    kicked = 0
    for org_id, destination in due:
        stream_kick(org_id=org_id, channel=Channel.EMAIL, destination=destination, force=True)
        kicked += 1
    if outbound_due_exists():
        outbound_kick()
    if kicked:
        logger.info("email sweeper re-kicked deferred streams", extra={"count": kicked})
    return kicked
