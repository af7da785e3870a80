"""Account emails (profile change confirmations): queued in Postgres in the caller's transaction
and drained under the email API limit and the recipient's daily cap. (Emails of log entries to
members are the email channel, notifications.channels.email.)

`profile_updated_email_queue` writes an OutboundEmail and kicks the drain lanes on commit;
`outbound_drain` takes rows FOR UPDATE SKIP LOCKED, one limiter grant per email, so any number of
workers never push the provider past the limit. A recipient over their daily cap waits, recorded
(EmailDeferral), until their next local midnight.
"""
import logging
import time
from datetime import timedelta

import redis
from celery import current_app
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from notifications import metrics
from notifications.channels import email as smtp
from notifications.delivery.fence import backoff
from notifications.delivery.kicks import redis_client
from notifications.delivery.types import DrainResult, PermanentFailure, TransientFailure
from notifications.models import EmailDeferral, OutboundEmail, PreferenceCategory
from notifications.ratelimit import Scope, limiter
from organizations.models import User

logger = logging.getLogger("herald.email")

DEFERRED_NOTE = "deferred: recipient_daily_limit"
PROFILE_FIELD_LABELS = {
    "email": "Email address", "first_name": "First name", "last_name": "Last name", "time_zone": "Time zone",
    "phone": "Phone", "postal_code": "Postal code", "slack_user_id": "Slack user ID",
}


def outbound_message(row: OutboundEmail) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(
        subject=row.subject, body=row.body_text, from_email=settings.EMAIL_FROM, to=[row.to_email],
        headers={"Message-ID": smtp.message_id("outbound", str(row.id)), "Auto-Submitted": "auto-generated",
                 "X-Herald-Kind": row.kind, "X-Herald-Outbound": str(row.id)},
    )
    if row.body_html:
        message.attach_alternative(row.body_html, "text/html")
    return message


# --- account emails: the durable outbox ----------------------------------------------------------

def profile_updated_email_queue(*, user: User, changed: list[str]) -> OutboundEmail | None:
    """Queue the confirmation of a profile change. Runs inside the caller's transaction, so the
    email exists exactly when the change commits; the drain is kicked on commit."""
    if not user.email or not changed:
        return None
    now = timezone.now()
    context = {
        "recipient_name": smtp.recipient_name(user), "changed_at": now,
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
    started = 0
    for lane in range(settings.EMAIL_OUTBOUND_LANES):
        try:
            fresh = redis_client().set(_lane_key(lane), 1, nx=True,
                                        ex=max(1, int(settings.EMAIL_OUTBOUND_LEASE_SECONDS)))
        except redis.RedisError:
            logger.warning("outbound lane lease unavailable; enqueueing anyway", extra={"lane": lane})
            fresh = True
        if fresh:
            current_app.send_task("notifications.tasks.drain_outbound_email", kwargs={"lane": lane})
            started += 1
    return started


def outbound_lane_renew(*, lane: int, delay: float = 0.0) -> None:
    """The lane's task goes on (rescheduled in `delay` seconds): keep its lease past that."""
    try:
        redis_client().set(_lane_key(lane), 1, ex=max(1, int(settings.EMAIL_OUTBOUND_LEASE_SECONDS + delay)))
    except redis.RedisError:
        pass


def outbound_lane_release(*, lane: int) -> None:
    """The lane found nothing due: drop its lease, then look once more, so an email committed
    between our last look and the release (whose kick saw the lease) is not stranded."""
    try:
        redis_client().delete(_lane_key(lane))
    except redis.RedisError:
        pass
    if outbound_due_exists():
        outbound_kick()


def outbound_due_exists() -> bool:
    return OutboundEmail.objects.filter(status__in=[OutboundEmail.Status.PENDING, OutboundEmail.Status.DEFERRED],
                                        next_attempt_at__lte=timezone.now()).exists()


def _outbound_defer(row: OutboundEmail, now, until) -> None:
    row.next_attempt_at = until
    row.status, row.last_error = OutboundEmail.Status.DEFERRED, DEFERRED_NOTE
    updated = EmailDeferral.objects.filter(outbound=row, released_at__isnull=True).update(release_at=until)
    if not updated:
        EmailDeferral.objects.create(user_id=row.user_id, category=PreferenceCategory.PROFILE_UPDATED,
                                     outbound=row, release_at=until)
        metrics.EMAIL_DEFERRED.labels(category=PreferenceCategory.PROFILE_UPDATED).inc()
        metrics.EMAIL_OUTBOUND.labels(kind=row.kind, outcome="deferred").inc()
    row.save(update_fields=["next_attempt_at", "status", "last_error"])


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
        row = (OutboundEmail.objects.select_for_update(skip_locked=True, of=("self",)).select_related("user")
               .filter(status__in=[OutboundEmail.Status.PENDING, OutboundEmail.Status.DEFERRED],
                       next_attempt_at__lte=now)
               .order_by("next_attempt_at", "id").first())
        if row is None:
            return DrainResult("idle")
        route = smtp.route()
        if not route.open:
            metrics.EMAIL_OUTBOUND.labels(kind=row.kind, outcome="breaker_wait").inc()
            return DrainResult("wait", wait=route.wait)
        if row.attempts == 0 and not row.admitted:  # the recipient's slot is spent once per email
            if not smtp.recipient_daily_take(user=row.user, channel="email", now=now):
                _outbound_defer(row, now, smtp.next_local_midnight(row.user, now))
                return DrainResult("deferred")
            row.admitted = True
            row.save(update_fields=["admitted"])
        decision = limiter.acquire([Scope("email.api")])
        if not decision.allowed:
            metrics.LIMITER.labels(scope=decision.blocked_by.name, outcome="wait").inc()
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
            row.next_attempt_at = timezone.now() + timedelta(seconds=backoff(max(1, row.attempts)))
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

def email_sweep() -> int:
    """Kick the account-email lanes when something is due (a lost kick, a deferral that ended).
    Streams of the email channel are swept by notifications.delivery.sweeper."""
    if outbound_due_exists():
        return outbound_kick()
    return 0
