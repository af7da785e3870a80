"""WhatsApp through a Cloud API-compatible endpoint, to the member's phone number.

One stream per (organization, "whatsapp", str(user id)) while the member has an E.164 phone
(`PATCH /api/v1/me`; notifications.preferences.recipient_streams_sync), getting the entries whose
kind lists "whatsapp" and whose audience holds the member.

Each request: `POST {url}/v{api_version}/{phone_number_id}/messages` with `Authorization: Bearer
<access token>` and {"messaging_product": "whatsapp", "to": <digits>, "type": "text", "text":
{"body"}}; an API send whose part carries a `template` ({name, language, components}) goes as a
template message (what WhatsApp requires outside the 24-hour customer service window).
- 200: sent (messages[0].id, the wamid, is the provider reference).
- 429, or error 130429 (throughput), 131048 (spam rate limit): scope `whatsapp.api` paused for
  Retry-After; 131056 (pair rate limit): only this recipient's scope is paused.
- 5xx (131000, 131016), 401 / 190 (the access token expired), refused connections: retried with
  backoff; breaker `whatsapp`.
- A read timeout after the request went out: uncertain (the Cloud API has no lookup; the resend
  carries the same `biz_opaque_callback_data`, the delivery id, for the status webhook to match).
- Other 4xx (131026 undeliverable, 131047 outside the 24-hour window, 100 invalid parameter): a
  dead letter. Text bodies are at most 4,096 characters (`validate`).

Status webhooks (the Meta app's callback URL, `{HERALD_BASE_URL}/api/v1/callbacks/whatsapp`):
- GET: the subscription handshake (hub.mode=subscribe, hub.verify_token = `webhook_verify_token`)
  answers hub.challenge as text; a wrong token is 403 `invalid_verify_token`.
- POST: `entry[].changes[].value.statuses[]` {id (the wamid), status, timestamp, errors}, signed
  with X-Hub-Signature-256 (`sha256=` + hex HMAC-SHA256 of the raw body, keyed with the app secret):
  a bad signature is 403 `invalid_signature`. `delivered` and `read` mark the message's status
  rows delivered at the report's timestamp, `failed` failed (with the error); `sent` is ignored.
"""
import hashlib
import hmac
import json
from datetime import UTC, datetime
from enum import StrEnum

import httpx
from django.http import HttpResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from config.errors import ApplicationError, Forbidden
from notifications.channels import registry
from notifications.channels.base import Run
from notifications.channels.callbacks import (
    CallbackApi,
    CallbackError,
    StatusReportOutput,
    bad_signature,
    not_configured,
    report_answer,
    report_record,
    signature_matches,
)
from notifications.channels.parts import entry_parts, run_text
from notifications.channels.provider import PhoneChannel, PhoneTarget, retry_after
from notifications.delivery.types import PermanentFailure, RateLimitedFailure, TransientFailure
from notifications.ratelimit import Scope

MAX_BODY = 4096
THROTTLED = {130429, 131048, 80007, 4}
PAIR_THROTTLED = {131056}
TRANSIENT = {1, 2, 131000, 131016, 133004, 190}


class WhatsAppError(StrEnum):
    WHATSAPP_TOO_LONG = "whatsapp_too_long"


def graph_error(response: httpx.Response) -> tuple[int | None, str]:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return None, response.text[:200]
    return error.get("code"), str(error.get("message", ""))[:200]


class WhatsAppChannel(PhoneChannel):
    api_scope = "whatsapp.api"
    destination_scope = ("whatsapp.recipient", "recipient_per_minute", "recipient_burst")
    label = "whatsapp"
    not_configured = "no phone number id or access token"
    default_options = {"batch_max": 10, "timeout": 10.0, "url": "https://graph.facebook.com", "api_version": "21.0",
                       "phone_number_id": "", "access_token": "", "rate_per_second": 80.0, "burst": 20,
                       "recipient_per_minute": 10.0, "recipient_burst": 3}

    @property
    def configured(self) -> bool:
        return bool(self.options.get("phone_number_id") and self.options.get("access_token"))

    def validate(self, part: dict) -> None:
        text = str((part or {}).get("text") or "")
        if len(text) > MAX_BODY:
            raise ApplicationError(f"A WhatsApp text is at most {MAX_BODY} characters; this one has {len(text)}.",
                                   code=WhatsAppError.WHATSAPP_TOO_LONG,
                                   extra={"channel": self.name, "field": "text", "length": len(text), "max": MAX_BODY})

    # --- destination ---------------------------------------------------------------------------
    def scopes(self, target: PhoneTarget) -> list[Scope]:
        return [Scope("whatsapp.api"), Scope("whatsapp.recipient", target.phone)]

    def breaker_names(self, target) -> list[str]:
        return ["whatsapp"]

    # --- sending ---------------------------------------------------------------------------------
    def render(self, target: PhoneTarget, run: Run) -> dict:
        message = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": target.phone.lstrip("+"),
                   "biz_opaque_callback_data": f"herald:{run.delivery_id}"}
        part = entry_parts(run.entries[0], self.name, target.locale) if len(run.entries) == 1 else None
        if part and isinstance(part.get("template"), dict):
            return {**message, "type": "template", "template": part["template"]}
        text = run_text(run.entries, self.name, limit=MAX_BODY, locale=target.locale, late=run.late)
        if len(text) > MAX_BODY:
            raise PermanentFailure(f"whatsapp text of {len(text)} characters (at most {MAX_BODY})")
        return {**message, "type": "text", "text": {"preview_url": False, "body": text}}

    def send(self, target: PhoneTarget, run: Run, message: dict, gate) -> str:
        url = (f"{self.options['url'].rstrip('/')}/v{self.options['api_version']}/"
               f"{self.options['phone_number_id']}/messages")
        response = self.request("POST", url, json=message,
                                headers={"Authorization": f"Bearer {self.options['access_token']}"})
        status = response.status_code
        if status == 200:
            return self.reference(response, lambda body: body["messages"][0]["id"])
        code, text = graph_error(response)
        if code in PAIR_THROTTLED:
            wait = retry_after(response, 6.0)
            raise RateLimitedFailure(f"whatsapp {status} {code} pair rate limit", wait, scope="destination")
        if status == 429 or code in THROTTLED:
            wait = retry_after(response)
            raise RateLimitedFailure(f"whatsapp {status} {code} (Retry-After {wait})", wait, scope="global")
        if status >= 500 or status == 401 or code in TRANSIENT:
            raise TransientFailure(f"whatsapp {status} {code}: {text}")
        raise PermanentFailure(f"whatsapp {status} {code}: {text}")

    # --- API ------------------------------------------------------------------------------------
    def urlpatterns(self) -> list:
        return [path("callbacks/whatsapp", WhatsAppWebhookApi.as_view(channel_name=self.name),
                     name="callbacks-whatsapp")]


# --- status webhooks -------------------------------------------------------------------------------

RECORDED = {"delivered": "delivered", "read": "delivered", "failed": "failed"}


def hub_signature(app_secret: str, body: bytes) -> str:
    """X-Hub-Signature-256: "sha256=" + hex HMAC-SHA256 of the raw body, keyed with the app secret."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


class _StatusError(serializers.Serializer):
    code = serializers.IntegerField(required=False)
    title = serializers.CharField(required=False, allow_blank=True)
    message = serializers.CharField(required=False, allow_blank=True)


class _Status(serializers.Serializer):
    id = serializers.CharField(max_length=200, help_text="The message's wamid")
    status = serializers.CharField(max_length=32, help_text="sent, delivered, read, failed, ...")
    timestamp = serializers.RegexField(r"^[0-9]{1,10}\Z", help_text="Unix seconds")
    recipient_id = serializers.CharField(required=False, allow_blank=True)
    errors = _StatusError(many=True, required=False)


class _Value(serializers.Serializer):
    messaging_product = serializers.CharField(required=False)
    statuses = _Status(many=True, required=False)


class _Change(serializers.Serializer):
    field = serializers.CharField(required=False)
    value = _Value()


class _Entry(serializers.Serializer):
    id = serializers.CharField(required=False)
    changes = _Change(many=True)


class WhatsAppWebhookApi(CallbackApi):
    """The WhatsApp Business Account's webhook: the subscription handshake and status reports."""

    channel_name = "whatsapp"

    class Input(serializers.Serializer):
        object = serializers.CharField(help_text="whatsapp_business_account")
        entry = _Entry(many=True)

    @extend_schema(
        operation_id="callbacks_whatsapp_verify", auth=[],
        parameters=[OpenApiParameter("hub.mode", OpenApiTypes.STR, enum=["subscribe"], required=True),
                    OpenApiParameter("hub.verify_token", OpenApiTypes.STR, required=True),
                    OpenApiParameter("hub.challenge", OpenApiTypes.STR, required=True,
                                     description="Echoed back when the verify token matches")],
        responses={(200, "text/plain"): OpenApiTypes.STR})
    def get(self, request):
        """Meta's verification request when the callback URL is configured: answers the challenge."""
        expected = str(registry.get(self.channel_name).options.get("webhook_verify_token") or "")
        if not expected:
            raise not_configured(self.channel_name, "WHATSAPP_WEBHOOK_VERIFY_TOKEN")
        fields = {}
        mode, challenge = request.query_params.get("hub.mode"), request.query_params.get("hub.challenge")
        if mode != "subscribe":
            fields["hub.mode"] = ["Must be \"subscribe\"."]
        if not challenge:
            fields["hub.challenge"] = ["Required."]
        if fields:
            raise ApplicationError("Invalid verification request.", code="validation_error", extra={"fields": fields})
        if not signature_matches(expected, request.query_params.get("hub.verify_token")):
            raise Forbidden("The verify token does not match.", code=CallbackError.INVALID_VERIFY_TOKEN)
        return HttpResponse(challenge, content_type="text/plain")

    @extend_schema(
        operation_id="callbacks_whatsapp_status", auth=[], request=Input,
        parameters=[OpenApiParameter("X-Hub-Signature-256", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True,
                                     description="sha256=<hex HMAC-SHA256 of the raw body with the app secret>")],
        responses=StatusReportOutput)
    def post(self, request):
        """Record the delivery status of messages Herald sent (delivered, read, failed); other
        states, inbound messages and unknown message ids are acknowledged (and counted)."""
        secret = str(registry.get(self.channel_name).options.get("app_secret") or "")
        if not secret:
            raise not_configured(self.channel_name, "WHATSAPP_APP_SECRET")
        body = request.body  # the raw bytes the signature covers, before any parsing
        if not signature_matches(hub_signature(secret, body), request.headers.get("X-Hub-Signature-256")):
            raise bad_signature(self.channel_name)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApplicationError("The body is not JSON.", code="malformed_request") from None
        data = self.Input(data=payload)
        data.is_valid(raise_exception=True)
        outcomes = []
        for entry in data.validated_data["entry"]:
            for change in entry["changes"]:
                for report in change["value"].get("statuses") or []:
                    errors = report.get("errors") or []
                    error = "; ".join(f"{e.get('code', '')} {e.get('title') or e.get('message') or ''}".strip()
                                      for e in errors)
                    outcomes.append(report_record(
                        channel=self.channel_name, ref=report["id"], state=RECORDED.get(report["status"]),
                        at=datetime.fromtimestamp(int(report["timestamp"]), UTC),
                        error=f"whatsapp: {report['status']}" + (f" ({error})" if error else "")))
        return Response(report_answer(outcomes))
