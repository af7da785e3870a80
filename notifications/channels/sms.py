"""SMS through a Twilio-compatible HTTP API, with failover to a second provider.

One stream per (organization, "sms", str(user id)); the destination is the member's phone number
(`User.phone`, E.164, set with `PATCH /api/v1/me`), read when the run is sent. The stream exists
while the member has a phone (notifications.preferences.recipient_streams_sync); it gets the
entries whose kind lists "sms" and whose audience holds the member (an API send: kind "message").

Each request: `POST {url}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded To/From/Body and
StatusCallback (`<status callback URL>/<provider>`, unless `status_callbacks` is off), HTTP basic
auth (account SID, auth token).
- 2xx: sent (the message SID is the provider reference).
- 429 (Twilio 20429): the account sends too fast: scope `sms.api` is paused for Retry-After for
  every worker (no failover: the secondary is for outages, not extra capacity).
- A refused connection, a connect timeout, 5xx, 401/403/404 (the account or the URL is wrong):
  the same message goes to the secondary at once; both failing: retried with backoff.
- A read timeout or a broken answer after the request went out: uncertain, no failover (the
  provider may have queued it); before sending again the channel lists the account's messages to
  that number and takes a matching body as sent.
- Other 4xx (21211 invalid number, 21610 unsubscribed, 21617 too long, ...): a dead letter.
Bodies over 1,600 characters are refused before any call (`validate`, which the send API calls).

Limits: `sms.api` (the account's messages per second, every worker) and `sms.recipient` (per phone
number). Breakers `sms-primary`, `sms-secondary`, asked before a grant is spent.

Status callbacks: `POST /api/v1/callbacks/twilio/{provider}` (form MessageSid, MessageStatus,
ErrorCode, ...), signed with X-Twilio-Signature (base64 HMAC-SHA1, keyed with that provider's auth
token, of the callback URL followed by every POST parameter's name and value sorted by name): a
bad signature is 403 `invalid_signature`. `delivered` marks the message's status rows delivered,
`undelivered` / `failed` failed (with the ErrorCode); the other states are acknowledged and ignored.
"""
import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

import httpx
from django.conf import settings
from django.core.checks import Error
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.parsers import FormParser
from rest_framework.response import Response

from config.errors import ApplicationError, NotFound
from notifications.breaker import BreakerDecision, CircuitBreaker
from notifications.channels import registry
from notifications.channels.base import Run, http_client
from notifications.channels.callbacks import (
    CallbackApi,
    CallbackError,
    StatusReportOutput,
    bad_signature,
    report_answer,
    report_record,
    signature_matches,
)
from notifications.channels.parts import run_text
from notifications.channels.provider import PhoneChannel, PhoneTarget, retry_after
from notifications.delivery.types import (
    Gate,
    PermanentFailure,
    RateLimitedFailure,
    TransientFailure,
    UncertainFailure,
)
from notifications.ratelimit import Scope

logger = logging.getLogger("herald.sms")

MAX_BODY = 1600
PROVIDERS = ("primary", "secondary")


class SmsError(StrEnum):
    SMS_TOO_LONG = "sms_too_long"


@dataclass
class Route:
    """The providers a send may use now, first choice first, with the breaker decisions taken."""

    gates: dict[str, BreakerDecision] = field(default_factory=dict)
    wait: float = 0.0

    @property
    def open(self) -> bool:
        return any(g.allowed for g in self.gates.values())


class _Failover(Exception):
    """This provider did not take the message and cannot have: try the next one."""


def twilio_signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 (key: the auth token) of the full URL followed by each
    POST parameter's name and value, sorted by name."""
    data = url + "".join(f"{k}{v}" for k, v in sorted(params, key=lambda kv: kv[0]))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def error_of(response: httpx.Response) -> tuple[int | None, str]:
    """Twilio's error body: {"code", "message", "more_info", "status"}."""
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:200]
    if not isinstance(body, dict):
        return None, str(body)[:200]
    return body.get("code"), str(body.get("message", ""))[:200]


class SmsChannel(PhoneChannel):
    api_scope = "sms.api"
    destination_scope = ("sms.recipient", "recipient_per_minute", "recipient_burst")
    label = ""  # an unreachable provider is a failover ("primary: unreachable: ..."), not a failure
    not_configured = "no provider account"
    default_options = {"batch_max": 10, "timeout": 10.0, "rate_per_second": 10.0, "burst": 10,
                       "recipient_per_minute": 6.0, "recipient_burst": 3, "providers": {},
                       "status_callback_url": ""}

    # --- configuration -----------------------------------------------------------------------
    def providers(self) -> list[tuple[str, dict]]:
        configured = self.options.get("providers") or {}
        return [(name, configured[name]) for name in PROVIDERS
                if configured.get(name) and configured[name].get("account_sid")]

    def check(self) -> list[Error]:
        errors = []
        for name, provider in self.providers():
            missing = [k for k in ("url", "account_sid", "auth_token", "from") if not provider.get(k)]
            if missing:
                errors.append(Error(f"SMS provider {name!r} lacks {', '.join(missing)}", id="herald.E030"))
        return errors

    def status_callback_url(self, provider: str) -> str:
        """Where this provider posts a message's status (given as StatusCallback): the configured
        base (default {HERALD_BASE_URL}/api/v1/callbacks/twilio) + "/<provider>"; "" when off."""
        if not self.options.get("status_callbacks", True):
            return ""
        base = self.options.get("status_callback_url") or f"{settings.HERALD_BASE_URL}/api/v1/callbacks/twilio"
        return f"{base.rstrip('/')}/{provider}"

    def validate(self, part: dict) -> None:
        """The send API's check of a rendered SMS part: over 1,600 characters is 400 `sms_too_long`."""
        text = str((part or {}).get("text") or "")
        if len(text) > MAX_BODY:
            raise ApplicationError(f"An SMS is at most {MAX_BODY} characters; this one has {len(text)}.",
                                   code=SmsError.SMS_TOO_LONG, extra={"channel": self.name, "field": "text",
                                                                      "length": len(text), "max": MAX_BODY})

    # --- destination ---------------------------------------------------------------------------
    @property
    def configured(self) -> bool:
        return bool(self.providers())

    def scopes(self, target: PhoneTarget) -> list[Scope]:
        return [Scope("sms.api"), Scope("sms.recipient", target.phone)]

    def breaker_names(self, target) -> list[str]:
        return []  # route() asks each provider's breaker; send() records them

    # --- gating ----------------------------------------------------------------------------------
    def route(self) -> Route:
        """Ask the breakers, primary first; the secondary only when the primary is not allowed (so
        its half-open probe slot is not taken for nothing)."""
        result = Route()
        for name, _ in self.providers():
            decision = CircuitBreaker(f"sms-{name}").allow()
            result.gates[name] = decision
            if decision.allowed:
                return result
        waits = [g.wait for g in result.gates.values()]
        result.wait = max(0.05, min(waits) if waits else 5.0)
        return result

    def gate(self, target, *, since, member) -> Gate:
        chosen = self.route()
        if not chosen.open:  # every provider's breaker open: wait, spending no attempt and no grant
            return Gate(False, wait=chosen.wait, reason="sms breakers open")
        gate = super().gate(target, since=since, member=member)
        return Gate.go(context=chosen) if gate.allowed else gate

    # --- sending ---------------------------------------------------------------------------------
    def render(self, target: PhoneTarget, run: Run) -> str:
        text = run_text(run.entries, self.name, limit=MAX_BODY, locale=target.locale, late=run.late)
        if len(text) > MAX_BODY:
            raise PermanentFailure(f"sms body of {len(text)} characters (at most {MAX_BODY})")
        if not text:
            raise PermanentFailure("empty sms body")
        return text

    def _record(self, provider: str, *, ok: bool) -> None:
        try:
            CircuitBreaker(f"sms-{provider}").record(ok=ok)
        except Exception:  # bookkeeping after the provider answered never changes the outcome
            logger.warning("breaker not updated (Redis unavailable)", extra={"breaker": f"sms-{provider}"})

    def _post(self, name: str, provider: dict, target: PhoneTarget, body: str) -> str:
        url = f"{provider['url'].rstrip('/')}/2010-04-01/Accounts/{provider['account_sid']}/Messages.json"
        form = {"To": target.phone, "From": provider["from"], "Body": body}
        callback = self.status_callback_url(name)
        if callback:
            form["StatusCallback"] = callback
        # Not connected: the next provider; sent, then the answer timed out or broke: it may be queued.
        response = self.request("POST", url, data=form, auth=(provider["account_sid"], provider["auth_token"]),
                                unreachable=_Failover)
        code = response.status_code
        if 200 <= code < 300:
            return self.reference(response, lambda body: body["sid"])
        error, message = error_of(response)
        if code == 429:
            wait = retry_after(response)
            raise RateLimitedFailure(f"sms 429 {error} (Retry-After {wait})", wait, scope="global")
        if code >= 500 or code in (401, 403, 404):
            raise _Failover(f"{code} {error} {message}".strip())
        raise PermanentFailure(f"sms {code} {error}: {message}".strip())

    def send(self, target: PhoneTarget, run: Run, message: str, gate: Gate) -> str:
        chosen: Route = gate.context if isinstance(gate.context, Route) else self.route()
        errors, probes_only, tried = [], True, 0
        for name, provider in self.providers():
            decision = chosen.gates.get(name)
            if decision is None:  # the primary failed just now: ask the secondary's breaker
                decision = chosen.gates[name] = CircuitBreaker(f"sms-{name}").allow()
            if not decision.allowed:
                errors.append(f"{name}: breaker {decision.state}")
                continue
            tried += 1
            probes_only = probes_only and decision.state == "half_open"
            try:
                sid = self._post(name, provider, target, message)
            except _Failover as exc:
                self._record(name, ok=False)
                errors.append(f"{name}: {exc}")
                continue
            except UncertainFailure:
                self._record(name, ok=False)
                raise
            except (PermanentFailure, RateLimitedFailure):
                self._record(name, ok=True)  # the provider is up; this message or our pace is the problem
                raise
            self._record(name, ok=True)
            return f"{name}:{sid}"
        waits = [g.wait for g in chosen.gates.values() if not g.allowed and g.wait]
        raise TransientFailure("no SMS provider took the message: " + "; ".join(errors),
                               outage=tried == 0 or probes_only, wait=min(waits) if waits else None)

    def verify(self, target: PhoneTarget, run: Run) -> str | None:
        """After an uncertain send: the account's messages to this number since the run's first
        entry; one with this body was queued by us."""
        body = self.render(target, run)
        since = (run.entries[0].occurred_at - timedelta(minutes=5)) if run.entries else None
        for name, provider in self.providers():
            url = f"{provider['url'].rstrip('/')}/2010-04-01/Accounts/{provider['account_sid']}/Messages.json"
            params = {"To": target.phone, "PageSize": 50}
            if since is not None:
                params["DateSent>"] = since.date().isoformat()
            try:
                response = http_client().get(url, params=params, auth=(provider["account_sid"], provider["auth_token"]),
                                     timeout=float(self.options["timeout"]))
                messages = response.json().get("messages", []) if response.status_code == 200 else []
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
            for item in messages:
                if isinstance(item, dict) and item.get("body") == body and item.get("status") != "failed":
                    return f"{name}:{item.get('sid', '')}"
        return None


    # --- API ------------------------------------------------------------------------------------
    def urlpatterns(self) -> list:
        return [path("callbacks/twilio/<slug:provider>", TwilioStatusCallbackApi.as_view(channel_name=self.name),
                     name="callbacks-twilio")]


# --- status callbacks ------------------------------------------------------------------------------

# Twilio's message states; the final ones Herald records.
TWILIO_STATES = ("accepted", "scheduled", "queued", "sending", "sent", "receiving", "received", "delivered",
                 "undelivered", "failed", "read", "partially_delivered", "canceled")
RECORDED = {"delivered": "delivered", "read": "delivered", "undelivered": "failed", "failed": "failed"}


class TwilioStatusCallbackApi(CallbackApi):
    """Twilio's StatusCallback for a message Herald sent through `provider` (primary, secondary)."""

    channel_name = "sms"
    parser_classes = [FormParser]

    class Input(serializers.Serializer):
        """The parameters Herald reads; Twilio sends more (AccountSid, From, To, ApiVersion, ...)."""

        MessageSid = serializers.RegexField(r"^[A-Za-z0-9]{2,64}\Z", help_text="The message's SID (SM...)")
        MessageStatus = serializers.ChoiceField(choices=TWILIO_STATES)
        ErrorCode = serializers.CharField(required=False, allow_blank=True, max_length=16)

    @extend_schema(
        operation_id="callbacks_twilio_status", auth=[],
        request={"application/x-www-form-urlencoded": Input},
        parameters=[OpenApiParameter("X-Twilio-Signature", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True,
                                     description="base64 HMAC-SHA1 of the URL and the sorted POST parameters")],
        responses=StatusReportOutput)
    def post(self, request, provider: str):
        """Record a message's delivery status as the provider reports it (delivered, undelivered,
        failed); other states are acknowledged. An unknown message id is acknowledged and counted."""
        channel = registry.get(self.channel_name)
        account = dict(channel.providers()).get(provider)
        if account is None:
            raise NotFound("No such SMS provider.", code=CallbackError.SMS_PROVIDER_NOT_FOUND)
        url = channel.status_callback_url(provider) or request.build_absolute_uri(request.path)
        if request.META.get("QUERY_STRING"):
            url += "?" + request.META["QUERY_STRING"]
        params = [(k, v) for k, values in request.POST.lists() for v in values]
        if not signature_matches(twilio_signature(account["auth_token"], url, params),
                                 request.headers.get("X-Twilio-Signature")):
            raise bad_signature(self.channel_name)
        data = self.Input(data=request.POST)
        data.is_valid(raise_exception=True)
        state = data.validated_data["MessageStatus"]
        code = data.validated_data.get("ErrorCode") or ""
        outcome = report_record(channel=self.channel_name, ref=f"{provider}:{data.validated_data['MessageSid']}",
                                state=RECORDED.get(state),
                                error=f"{provider}: {state}" + (f" (Twilio error {code})" if code else ""))
        return Response(report_answer([outcome]))
