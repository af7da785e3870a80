"""SMTP with failover: Django's SMTP EmailBackend to the primary provider, the secondary when the
primary's breaker is open or the primary fails with a connection error, a timeout or a 4xx.

Callers take a `route()` before spending a rate-limit grant (so nothing is spent while both
breakers are open), then `send(message=, route=)`. A 5xx refusal of the recipient or the message
is permanent (PermanentFailure: dead letter); everything else that fails on both providers is a
TransientFailure, the message waits in Postgres. Breakers: "smtp-primary", "smtp-secondary".
"""
import smtplib
from dataclasses import dataclass, field

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.backends.smtp import EmailBackend

from notifications import metrics
from notifications.breaker import BreakerDecision, CircuitBreaker
from notifications.channels import PermanentFailure, TransientFailure

PROVIDERS = ("primary", "secondary")


class ProvidersDown(TransientFailure):
    """No provider delivered. `outage` is True when every provider tried was only being probed
    (its breaker half-open): the provider is still down, which says nothing about this message,
    so the caller does not spend an attempt. `wait` is when a breaker next allows a call."""

    def __init__(self, message: str, *, outage: bool = False, wait: float | None = None):
        super().__init__(message)
        self.outage = outage
        self.wait = wait


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


def backend(provider: str) -> EmailBackend:
    prefix = f"EMAIL_{provider.upper()}_"
    return EmailBackend(
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


def _send_via(provider: str, message: EmailMultiAlternatives) -> None:
    connection = backend(provider)
    message.connection = connection
    try:
        connection.send_messages([message])
    finally:
        message.connection = None


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
        except (smtplib.SMTPException, OSError) as exc:
            if _classify(exc) == "permanent":
                _breaker(provider).record(ok=True)  # the provider is fine; this recipient/message is not
                raise PermanentFailure(f"{provider}: {_describe(exc)}") from exc
            _breaker(provider).record(ok=False)
            metrics.EMAIL_PROVIDER_FAILURES.labels(provider=provider).inc()
            errors.append(f"{provider}: {_describe(exc)}")
            continue
        _breaker(provider).record(ok=True)
        if provider != PROVIDERS[0]:
            metrics.EMAIL_FAILOVERS.inc()
        metrics.EMAIL_SENT.labels(provider=provider).inc()
        return Sent(provider=provider, message_id=message_id)
    waits = [g.wait for g in route.gates.values() if not g.allowed and g.wait]
    raise ProvidersDown("no SMTP provider delivered: " + "; ".join(errors),
                        outage=tried == 0 or probes_only, wait=min(waits) if waits else None)
