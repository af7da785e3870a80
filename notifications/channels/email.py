"""SMTP with failover: Django's SMTP EmailBackend to the primary provider, the secondary when the
primary's breaker is open or the primary fails with a connection error, a timeout or a 4xx.

Callers take a `route()` before spending a rate-limit grant (so nothing is spent while both
breakers are open), then `send(message=, route=)`. A 5xx refusal of the recipient or the message
is permanent (PermanentFailure: dead letter); everything else that fails on both providers is a
TransientFailure, the message waits in Postgres. Breakers: "smtp-primary", "smtp-secondary".
"""
import logging
import smtplib
from dataclasses import dataclass, field

from datetime import datetime
from email.utils import parseaddr

import redis
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.backends.smtp import EmailBackend
from django.template.loader import render_to_string

from notifications import metrics, policy
from notifications.breaker import BreakerDecision, CircuitBreaker
from notifications.channels.base import Channel, Run, tls_context
from notifications.delivery.types import Gate
from notifications.kinds import kind_get
from notifications.models import EmailDeferral, PreferenceCategory
from notifications.ratelimit import Scope
from organizations.models import Organization, User
from notifications.delivery.types import PermanentFailure, TransientFailure, UncertainFailure

logger = logging.getLogger("herald.email")

PROVIDERS = ("primary", "secondary")


class ProvidersDown(TransientFailure):
    """No provider delivered. `outage` is True when every provider tried was only being probed
    (its breaker half-open): the provider is still down, which says nothing about this message,
    so the caller does not spend an attempt. `wait` is when a breaker next allows a call."""


@dataclass
class Route:
    """The providers a send may use now, first choice first, with the breaker decisions taken."""

    gates: dict[str, BreakerDecision] = field(default_factory=dict)
    wait: float = 0.0  # when no provider is allowed: until a breaker allows one

    @property
    def open(self) -> bool:
        return any(g.allowed for g in self.gates.values())


@dataclass(frozen=True)
class Sent:
    provider: str
    message_id: str

    @property
    def ref(self) -> str:
        return f"{self.provider}:{self.message_id}"[:200]


def _breaker(provider: str) -> CircuitBreaker:
    return CircuitBreaker(f"smtp-{provider}")


def _record(provider: str, *, ok: bool) -> None:
    """Breaker bookkeeping after the provider answered: a Redis error here must not turn a sent
    message into a failure (and a resend)."""
    try:
        _breaker(provider).record(ok=ok)
    except redis.RedisError:
        logger.warning("breaker not updated (Redis unavailable)", extra={"breaker": f"smtp-{provider}"})


def route() -> Route:
    """Ask the breakers, primary first. The secondary is asked only when the primary is not
    allowed, so a half-open probe slot of the secondary is not taken for nothing."""
    result = Route()
    for provider in PROVIDERS:
        gate = _breaker(provider).allow()
        result.gates[provider] = gate
        if gate.allowed:
            return result
    result.wait = max(0.05, min(g.wait for g in result.gates.values()))
    return result


class SMTPBackend(EmailBackend):
    """Django's SMTP backend on the process's TLS context (Django builds a context, loading the CA
    store, per backend, and a backend serves one email here)."""

    @property
    def ssl_context(self):
        if self.ssl_certfile or self.ssl_keyfile:
            return super().ssl_context
        return tls_context()


def backend(provider: str) -> EmailBackend:
    prefix = f"EMAIL_{provider.upper()}_"
    return SMTPBackend(
        host=getattr(settings, prefix + "HOST"), port=getattr(settings, prefix + "PORT"),
        username=getattr(settings, prefix + "USER", "") or "",
        password=getattr(settings, prefix + "PASSWORD", "") or "",
        use_tls=settings.EMAIL_USE_TLS, use_ssl=False, timeout=settings.EMAIL_TIMEOUT, fail_silently=False,
    )


def _classify(exc: BaseException) -> str:
    """'permanent' when the provider refused this recipient or this message for good (5xx);
    'transient' for anything that says the provider is unreachable, slow or busy."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return "permanent" if codes and all(code >= 500 for code in codes) else "transient"
    if isinstance(exc, smtplib.SMTPDataError):
        return "permanent" if exc.smtp_code >= 500 else "transient"
    # Sender refused, auth failure, bad greeting, disconnects, 421/4xx elsewhere, timeouts,
    # refused connections: the provider (or our account with it) is the problem.
    return "transient"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "; ".join(f"{rcpt}: {code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}"
                         for rcpt, (code, msg) in exc.recipients.items())
    if isinstance(exc, smtplib.SMTPResponseException):
        msg = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return f"{exc.smtp_code} {msg}"
    return f"{exc.__class__.__name__}: {exc}"


class _Uncertain(Exception):
    """The provider accepted the connection and the message was (being) transmitted, then the
    conversation broke: it may have been delivered."""


def _send_via(provider: str, message: EmailMultiAlternatives) -> None:
    """Connect (a failure here: the provider is unreachable, fail over), then transmit (a timeout
    or disconnect here: it may have been delivered, do not fail over; retry later with the same
    Message-ID so the receiver can drop a duplicate)."""
    connection = backend(provider)
    connection.open()
    message.connection = connection
    try:
        connection.send_messages([message])
    except (smtplib.SMTPServerDisconnected, TimeoutError, ConnectionResetError) as exc:
        raise _Uncertain(f"{provider}: {_describe(exc)}") from exc
    finally:
        message.connection = None
        try:
            connection.close()
        except Exception:  # noqa: S110  (closing a broken connection)
            pass


def send(*, message: EmailMultiAlternatives, route: Route) -> Sent:
    """Send one message through the first provider that takes it. Raises PermanentFailure or
    ProvidersDown (a TransientFailure)."""
    message_id = message.extra_headers.get("Message-ID", "")
    errors, probes_only, tried = [], True, 0
    for provider in PROVIDERS:
        gate = route.gates.get(provider)
        if gate is None:  # not asked yet: the primary failed just now, ask the secondary's breaker
            gate = route.gates[provider] = _breaker(provider).allow()
        if not gate.allowed:
            errors.append(f"{provider}: breaker {gate.state}")
            continue
        tried += 1
        probes_only = probes_only and gate.state == "half_open"
        try:
            _send_via(provider, message)
        except _Uncertain as exc:
            _record(provider, ok=False)
            raise UncertainFailure(str(exc)) from exc
        except (smtplib.SMTPException, OSError) as exc:
            if _classify(exc) == "permanent":
                _record(provider, ok=True)  # the provider is fine; this recipient/message is not
                raise PermanentFailure(f"{provider}: {_describe(exc)}") from exc
            _record(provider, ok=False)
            metrics.EMAIL_PROVIDER_FAILURES.labels(provider=provider).inc()
            errors.append(f"{provider}: {_describe(exc)}")
            continue
        _record(provider, ok=True)
        if provider != PROVIDERS[0]:
            metrics.EMAIL_FAILOVERS.inc()
        metrics.EMAIL_SENT.labels(provider=provider).inc()
        return Sent(provider=provider, message_id=message_id)
    waits = [g.wait for g in route.gates.values() if not g.allowed and g.wait]
    raise ProvidersDown("no SMTP provider delivered: " + "; ".join(errors),
                        outage=tried == 0 or probes_only, wait=min(waits) if waits else None)


# --- the email channel: log entries to members who opted in --------------------------------------
# One stream per (organization, "email", destination=str(user_id)); each send covers every pending
# entry (a backlog goes as one digest, in seq order). The recipient's cap is "at most N emails per
# calendar day in the recipient's time zone", counted in Postgres (DailySendCount), so neither a
# Redis restart nor a retry hands out more; a run over the cap is deferred to the recipient's next
# local midnight, recorded (EmailDeferral), and what arrives meanwhile joins it.

@dataclass(frozen=True)
class EmailTarget:
    organization: Organization
    user: User


def _domain() -> str:
    address = parseaddr(settings.EMAIL_FROM)[1]
    return address.rsplit("@", 1)[1] if "@" in address else "herald.local"


def message_id(kind: str, key: str) -> str:
    """Deterministic per delivery, across attempts and providers, so a resend after a lost
    answer carries the same Message-ID and the receiving side can drop the duplicate."""
    return f"<herald.{kind}.{key}@{_domain()}>"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:250]


def recipient_name(user) -> str:
    return user.first_name or user.username


def _entry_context(entry) -> dict:
    view, kind = entry.view(), kind_get(entry.kind)
    tracker = entry.payload.get("tracker_name", "") if entry.kind == "tracker.event" else ""
    return {"seq": entry.seq, "actor": view.actor, "tracker": tracker,
            "verb": "started" if entry.payload.get("action") == "start" else "stopped",
            "title": kind.title(view), "body": kind.body(view), "occurred_at": entry.occurred_at}


def digest_build(*, organization, user, run: Run, deferred: bool = False, late: bool = False) -> EmailMultiAlternatives:
    """One entry -> a single-entry mail; a run -> a digest listing up to EMAIL_DIGEST_MAX_LINES entries
    in seq order and summarizing the rest. The run's entries are those meant for this recipient
    (the fence filtered its seq range), so a digest may skip numbers."""
    first, last = run.first_seq, run.last_seq
    lines = [_entry_context(e) for e in run.entries[:settings.EMAIL_DIGEST_MAX_LINES]]
    total = len(run.entries)
    rest = run.entries[len(lines):]
    context = {"organization": organization, "recipient_name": recipient_name(user), "first_seq": first,
               "last_seq": last, "total": total, "events": lines, "deferred": deferred,
               "more": len(rest), "more_first_seq": rest[0].seq if rest else None}
    if total == 1 and lines:
        template, kind = "email/tracker_event", "tracker_event"
        event = context["event"] = lines[0]
        subject = f"[{organization.name}] {event['title']}"
    else:
        template, kind = "email/tracker_digest", "tracker_digest"
        noun = "tracker updates" if all(e.kind == "tracker.event" for e in run.entries) else "updates"
        subject = f"[{organization.name}] {total} {noun} (#{first}–#{last})"
    context["subject"] = subject = _one_line(("(late) " if late else "") + subject)
    message = EmailMultiAlternatives(
        subject=subject, body=render_to_string(f"{template}.txt", context), from_email=settings.EMAIL_FROM,
        to=[user.email],
        headers={"Message-ID": message_id("delivery", str(run.delivery_id)),
                 "Auto-Submitted": "auto-generated", "X-Herald-Kind": kind,
                 "X-Herald-Org": str(organization.id), "X-Herald-First-Seq": str(first),
                 "X-Herald-Last-Seq": str(last), "X-Herald-Delivery": str(run.delivery_id)},
    )
    message.attach_alternative(render_to_string(f"{template}.html", context), "text/html")
    return message


def next_local_midnight(user, now: datetime) -> datetime:
    return policy.next_local_midnight(user.time_zone, now)


def recipient_daily_take(*, user, channel: str, now: datetime) -> bool:
    """Count one message to `user` on `channel` for their local calendar day, if under their cap."""
    return policy.daily_take(user_id=user.pk, channel=channel, now=now)


class EmailChannel(Channel):
    per_recipient = True
    on_demand = True  # opt-in, but a transactional send reaches every member (to their account's address)
    default_options = {"batch_max": 500}

    def recipient_id(self, target: EmailTarget) -> int:
        return target.user.pk

    @property
    def batch_max(self) -> int:
        return int(self.options.get("batch_max", 500))

    def target(self, *, organization_id: int, destination: str) -> EmailTarget | None:
        if not destination.isdigit():
            return None
        user = User.objects.filter(pk=int(destination), is_active=True,
                                   memberships__organization_id=organization_id).first()
        if user is None:
            return None
        return EmailTarget(organization=Organization.objects.get(pk=organization_id), user=user)

    def scopes(self, target) -> list[Scope]:
        return [Scope("email.api")]

    def breaker_names(self, target) -> list[str]:
        return []  # route() asks both providers' breakers; the transport records them

    def gate(self, target, *, since, member) -> Gate:
        chosen = route()
        if not chosen.open:  # both providers failing: wait without spending an attempt or a grant
            return Gate(False, wait=chosen.wait, reason="smtp breakers open")
        gate = super().gate(target, since=since, member=member)
        return Gate.go(context=chosen) if gate.allowed else gate

    def admit(self, target: EmailTarget, run: Run, *, now: datetime, first_attempt: bool) -> Gate:
        gate = super().admit(target, run, now=now, first_attempt=first_attempt)
        if not gate.allowed:
            metrics.EMAIL_DEFERRED.labels(category=PreferenceCategory.TRACKER_EVENT).inc()
        return gate

    def render(self, target: EmailTarget, run: Run) -> EmailMultiAlternatives:
        if not target.user.email:
            raise PermanentFailure("recipient has no email address")
        deferred = EmailDeferral.objects.filter(delivery_id=run.delivery_id).exists()
        return digest_build(organization=target.organization, user=target.user, run=run, deferred=deferred,
                            late=run.late)

    def send(self, target, run: Run, message: EmailMultiAlternatives, gate: Gate) -> str:
        return send(message=message, route=gate.context or route()).ref
