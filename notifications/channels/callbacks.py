"""What the status-callback endpoints of the provider channels share (Twilio's StatusCallback in
sms.py, WhatsApp's status webhooks in whatsapp.py): no Herald credentials (the provider proves
itself with a signature over the request), one answer shape, and every report counted by outcome
(`herald_status_callbacks_total`): applied, unchanged (a repeat or an older state), ignored (a
state Herald does not record, such as `queued`), unknown (no message has this id: not ours, or it
overtook the commit of the send), bad_signature, not_configured. Unknown ids are answered 200 like
the others (providers retry anything else) and held: a provider may report before the fence's
transaction that records the reference has committed, so notifications.tasks.
sweep_early_status_reports applies held reports once the reference is known (`applied_late`)
and drops those nobody claims within EARLY_STATUS_REPORT_WAIT_SECONDS (`expired`)."""
import hmac
import logging
from enum import StrEnum

from django.conf import settings
from django.db import transaction
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from config.errors import Forbidden
from notifications import metrics
from notifications.delivery import status

logger = logging.getLogger("herald.callbacks")

OUTCOMES = ("applied", "unchanged", "ignored", "unknown")


class CallbackError(StrEnum):
    INVALID_SIGNATURE = "invalid_signature"
    CALLBACK_NOT_CONFIGURED = "callback_not_configured"
    INVALID_VERIFY_TOKEN = "invalid_verify_token"
    SMS_PROVIDER_NOT_FOUND = "sms_provider_not_found"


class StatusReportOutput(serializers.Serializer):
    received = serializers.IntegerField(help_text="Status reports in the request")
    applied = serializers.IntegerField(help_text="Reports that moved a status row (delivered, failed)")
    unchanged = serializers.IntegerField(help_text="Repeats, or older than what is recorded")
    ignored = serializers.IntegerField(help_text="States Herald does not record (queued, sent, ...)")
    unknown = serializers.IntegerField(help_text="Message ids Herald has no record of")


class CallbackApi(APIView):
    """A provider's request: no session, token or API key; the view checks the signature first."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    channel_name = ""


def signature_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())


def bad_signature(channel: str, message: str = "The request's signature does not match.") -> Forbidden:
    metrics.STATUS_CALLBACKS.labels(channel=channel, outcome="bad_signature").inc()
    logger.warning("status callback with a bad signature", extra={"channel": channel})
    return Forbidden(message, code=CallbackError.INVALID_SIGNATURE)


def not_configured(channel: str, what: str) -> Forbidden:
    metrics.STATUS_CALLBACKS.labels(channel=channel, outcome="not_configured").inc()
    return Forbidden(f"{channel} status callbacks are not configured ({what}).",
                     code=CallbackError.CALLBACK_NOT_CONFIGURED)


def report_record(*, channel: str, ref: str, state: str | None, at=None, error: str = "") -> str:
    """Apply one provider report ({"delivered", "failed"} or None for a state not recorded); returns
    its outcome, counted."""
    if state is None:
        outcome = "ignored"
    else:
        with transaction.atomic():
            moved = status.provider_report(channel=channel, ref=ref, state=state, at=at, error=error)
            if moved is None:  # not ours, or it overtook the commit of the send: held for a while
                status.provider_report_hold(channel=channel, ref=ref, state=state, at=at, error=error)
        outcome = "unknown" if moved is None else "applied" if moved else "unchanged"
        if moved is None:
            logger.info("status callback for an unknown message, held", extra={"channel": channel, "ref": ref[:120]})
    metrics.STATUS_CALLBACKS.labels(channel=channel, outcome=outcome).inc()
    return outcome


def held_reports_sweep() -> int:
    """Apply the held reports whose message is known now; drop the ones held too long (beat, every
    EARLY_STATUS_REPORT_SWEEP_SECONDS). Returns how many were applied."""
    with transaction.atomic():
        applied, expired = status.held_reports_apply(wait_seconds=settings.EARLY_STATUS_REPORT_WAIT_SECONDS)
    for channel, _moved in applied:
        metrics.STATUS_CALLBACKS.labels(channel=channel, outcome="applied_late").inc()
    if expired:
        metrics.STATUS_CALLBACKS.labels(channel="any", outcome="expired").inc(expired)
        logger.info("held status reports expired", extra={"count": expired})
    return len(applied)


def report_answer(outcomes: list[str]) -> dict:
    return {"received": len(outcomes), **{name: outcomes.count(name) for name in OUTCOMES}}
