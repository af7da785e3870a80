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
"""
from dataclasses import dataclass
from enum import StrEnum

import httpx

from config.errors import ApplicationError
from notifications.channels.base import Channel, Run
from notifications.channels.parts import entry_parts, run_text
from notifications.delivery.types import PermanentFailure, RateLimitedFailure, TransientFailure, UncertainFailure
from notifications.ratelimit import Scope
from organizations.models import E164, User

MAX_BODY = 4096
THROTTLED = {130429, 131048, 80007, 4}
PAIR_THROTTLED = {131056}
TRANSIENT = {1, 2, 131000, 131016, 133004, 190}


class WhatsAppError(StrEnum):
    WHATSAPP_TOO_LONG = "whatsapp_too_long"


@dataclass(frozen=True)
class WhatsAppTarget:
    user_id: int
    phone: str
    locale: str | None = None


def _retry_after(response: httpx.Response, default: float = 1.0) -> float:
    try:
        return max(0.05, float(response.headers.get("Retry-After", default)))
    except ValueError:
        return default


def graph_error(response: httpx.Response) -> tuple[int | None, str]:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return None, response.text[:200]
    return error.get("code"), str(error.get("message", ""))[:200]


class WhatsAppChannel(Channel):
    per_recipient = True
    default_options = {"batch_max": 10, "timeout": 10.0, "url": "https://graph.facebook.com", "api_version": "21.0",
                       "phone_number_id": "", "access_token": "", "rate_per_second": 80.0, "burst": 20,
                       "recipient_per_minute": 10.0, "recipient_burst": 3}

    @property
    def configured(self) -> bool:
        return bool(self.options.get("phone_number_id") and self.options.get("access_token"))

    def rate_limits(self) -> dict:
        return {"whatsapp.api": {"rate": float(self.options["rate_per_second"]), "burst": int(self.options["burst"])},
                "whatsapp.recipient": {"rate": float(self.options["recipient_per_minute"]) / 60.0,
                                       "burst": int(self.options["recipient_burst"])}}

    def validate(self, part: dict) -> None:
        text = str((part or {}).get("text") or "")
        if len(text) > MAX_BODY:
            raise ApplicationError(f"A WhatsApp text is at most {MAX_BODY} characters; this one has {len(text)}.",
                                   code=WhatsAppError.WHATSAPP_TOO_LONG,
                                   extra={"channel": self.name, "field": "text", "length": len(text), "max": MAX_BODY})

    # --- destination ---------------------------------------------------------------------------
    @property
    def no_destination(self) -> str:
        if not self.configured:
            return "whatsapp is not configured (no phone number id or access token)"
        return "the member has no phone number (PATCH /api/v1/me phone)"

    def member_destinations(self, user) -> dict[str, bool]:
        return {str(user.id): bool(E164.match(user.phone or "")) and self.configured}

    def target(self, *, organization_id: int, destination: str) -> WhatsAppTarget | None:
        if not destination.isdigit() or not self.configured:
            return None
        user = (User.objects.filter(pk=int(destination), is_active=True,
                                    memberships__organization_id=organization_id).only("id", "phone").first())
        if user is None or not E164.match(user.phone or ""):
            return None
        return WhatsAppTarget(user_id=user.id, phone=user.phone, locale=getattr(user, "locale", None) or None)

    def recipient_id(self, target: WhatsAppTarget) -> int:
        return target.user_id

    def wants(self, target, entry) -> bool:
        channels = (entry.payload or {}).get("channels")
        if isinstance(channels, list) and self.name not in channels:
            return False  # an API send restricted to other channels
        return super().wants(target, entry)

    def scopes(self, target: WhatsAppTarget) -> list[Scope]:
        return [Scope("whatsapp.api"), Scope("whatsapp.recipient", target.phone)]

    def breaker_names(self, target) -> list[str]:
        return ["whatsapp"]

    # --- sending ---------------------------------------------------------------------------------
    def render(self, target: WhatsAppTarget, run: Run) -> dict:
        message = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": target.phone.lstrip("+"),
                   "biz_opaque_callback_data": f"herald:{run.delivery_id}"}
        part = entry_parts(run.entries[0], self.name, target.locale) if len(run.entries) == 1 else None
        if part and isinstance(part.get("template"), dict):
            return {**message, "type": "template", "template": part["template"]}
        text = run_text(run.entries, self.name, limit=MAX_BODY, locale=target.locale, late=run.late)
        if len(text) > MAX_BODY:
            raise PermanentFailure(f"whatsapp text of {len(text)} characters (at most {MAX_BODY})")
        return {**message, "type": "text", "text": {"preview_url": False, "body": text}}

    def send(self, target: WhatsAppTarget, run: Run, message: dict, gate) -> str:
        url = (f"{self.options['url'].rstrip('/')}/v{self.options['api_version']}/"
               f"{self.options['phone_number_id']}/messages")
        try:
            response = httpx.post(url, json=message, timeout=float(self.options["timeout"]),
                                  headers={"Authorization": f"Bearer {self.options['access_token']}"})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TransientFailure(f"whatsapp unreachable: {exc.__class__.__name__}") from exc
        except httpx.HTTPError as exc:
            raise UncertainFailure(f"whatsapp answer lost: {exc.__class__.__name__}: {exc}") from exc
        status = response.status_code
        if status == 200:
            try:
                return str(response.json()["messages"][0]["id"])
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise UncertainFailure("whatsapp 200 with an unreadable answer") from exc
        code, text = graph_error(response)
        if code in PAIR_THROTTLED:
            wait = _retry_after(response, 6.0)
            raise RateLimitedFailure(f"whatsapp {status} {code} pair rate limit", wait, scope="destination")
        if status == 429 or code in THROTTLED:
            wait = _retry_after(response)
            raise RateLimitedFailure(f"whatsapp {status} {code} (Retry-After {wait})", wait, scope="global")
        if status >= 500 or status == 401 or code in TRANSIENT:
            raise TransientFailure(f"whatsapp {status} {code}: {text}")
        raise PermanentFailure(f"whatsapp {status} {code}: {text}")
