"""Webhooks: an organization's HTTPS endpoints get every log entry, in seq order per endpoint.

One channel module (plus its entry in settings.HERALD_CHANNELS): the endpoints are
ChannelDestination rows of channel "webhook" (the stream destination is the endpoint id), managed
by `GET|POST /api/v1/orgs/{id}/webhooks/` and `DELETE /api/v1/orgs/{id}/webhooks/{webhook_id}/`.

Each request is one JSON body covering a contiguous run of entries, signed like Stripe's:
`Herald-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the endpoint's secret>`.
`Herald-Delivery: <id>` is the same on every attempt of one run, so a receiver drops a duplicate
(a retry after a timeout that did arrive). 2xx: delivered. 429: paused for Retry-After. 408, 5xx,
refused or reset connections: retried with backoff for the channel's retry window. Other 4xx: a
dead letter. Limits per endpoint (scope webhook.endpoint), a breaker per endpoint.
"""
import hashlib
import hmac
import ipaddress
import json
import secrets as pysecrets
import time
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import httpx
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination, StrictSerializer
from config.errors import ApplicationError, NotFound
from notifications.channels.base import Channel, Run, http_client
from notifications.delivery.streams import stream_deactivate, stream_ensure
from notifications.delivery.types import PermanentFailure, RateLimitedFailure, TransientFailure, UncertainFailure
from notifications.events import entry_message
from notifications.models import ChannelDestination
from notifications.ratelimit import Scope
from organizations import secrets
from organizations.selectors import organization_get_for_user

SIGNATURE_HEADER = "Herald-Signature"


class WebhookError(StrEnum):
    WEBHOOK_NOT_FOUND = "webhook_not_found"
    INVALID_WEBHOOK_URL = "invalid_webhook_url"
    TOO_MANY_WEBHOOKS = "too_many_webhooks"


@dataclass(frozen=True)
class WebhookTarget:
    id: int
    url: str
    secret: str


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, body: bytes, header: str, *, tolerance: float = 300,
                     now: float | None = None) -> bool:
    """What a receiver does (documented in docs/webhooks.md; used by the tests)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class WebhookChannel(Channel):
    default_options = {"batch_max": 100, "timeout": 10.0, "rate_per_second": 10.0, "burst": 10,
                       "max_per_organization": 10, "allow_http_hosts": []}

    def rate_limits(self) -> dict:
        return {"webhook.endpoint": {"rate": float(self.options["rate_per_second"]),
                                     "burst": int(self.options["burst"])}}

    # --- destination --------------------------------------------------------------------------
    def target(self, *, organization_id: int, destination: str) -> WebhookTarget | None:
        if not destination.isdigit():
            return None
        row = ChannelDestination.objects.filter(pk=int(destination), organization_id=organization_id,
                                                channel=self.name, enabled=True).first()
        if row is None:
            return None
        return WebhookTarget(id=row.id, url=row.address, secret=secrets.decrypt(row.secret_encrypted))

    def scopes(self, target: WebhookTarget) -> list[Scope]:
        return [Scope("webhook.endpoint", str(target.id))]

    def breaker_names(self, target: WebhookTarget) -> list[str]:
        return [f"webhook:{target.id}"]

    # --- sending ------------------------------------------------------------------------------
    def render(self, target: WebhookTarget, run: Run) -> bytes:
        body = {"type": "herald.log", "org_id": run.organization_id, "delivery_id": run.delivery_id,
                "first_seq": run.first_seq, "last_seq": run.last_seq, "late": run.late,
                "entries": [entry_message(entry=e) for e in run.entries]}
        return json.dumps(body, cls=DjangoJSONEncoder, separators=(",", ":")).encode()

    def send(self, target: WebhookTarget, run: Run, message: bytes, gate) -> str:
        headers = {"Content-Type": "application/json", "User-Agent": "Herald-Webhooks/1",
                   SIGNATURE_HEADER: sign(target.secret, message, int(time.time())),
                   "Herald-Delivery": str(run.delivery_id)}
        try:
            response = http_client().post(target.url, content=message, headers=headers,
                                          timeout=float(self.options["timeout"]), follow_redirects=False)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TransientFailure(f"webhook unreachable: {exc.__class__.__name__}: {exc}") from exc
        except httpx.HTTPError as exc:  # read timeout, reset, broken answer: it may have arrived
            raise UncertainFailure(f"webhook answer lost: {exc.__class__.__name__}: {exc}") from exc
        code = response.status_code
        if 200 <= code < 300:
            return f"http {code}"
        if code == 429:
            try:
                retry_after = max(1.0, float(response.headers.get("Retry-After", "1")))
            except ValueError:
                retry_after = 1.0
            raise RateLimitedFailure(f"webhook 429 (Retry-After {retry_after})", retry_after)
        if code == 408 or code >= 500:
            raise TransientFailure(f"webhook {code}")
        raise PermanentFailure(f"webhook {code}: {response.text[:200]}")

    # --- API ----------------------------------------------------------------------------------
    def urlpatterns(self) -> list:
        channel = self
        return [
            path("orgs/<int:org_id>/webhooks/", WebhookListCreateApi.as_view(channel=channel), name="org-webhooks"),
            path("orgs/<int:org_id>/webhooks/<int:webhook_id>/", WebhookDetailApi.as_view(channel=channel),
                 name="org-webhook"),
        ]

    def validate_url(self, url: str) -> str:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme == "http" and host in self.options["allow_http_hosts"]:
            return url
        if parts.scheme != "https" or not host:
            raise ApplicationError("The endpoint must be an https:// URL.", code=WebhookError.INVALID_WEBHOOK_URL,
                                   extra={"fields": {"url": ["Must be https://"]}})
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if host == "localhost" or (address is not None and not address.is_global):
            raise ApplicationError("The endpoint must be a public address.", code=WebhookError.INVALID_WEBHOOK_URL,
                                   extra={"fields": {"url": ["Private, loopback and link-local hosts are refused"]}})
        return url


# --- services --------------------------------------------------------------------------------------

@transaction.atomic
def webhook_create(*, channel: WebhookChannel, organization, url: str, description: str = "") -> tuple:
    """A new endpoint and its secret (returned once, stored encrypted); it gets entries from the
    organization's next seq on."""
    url = channel.validate_url(url)
    count = ChannelDestination.objects.filter(organization=organization, channel=channel.name, enabled=True).count()
    if count >= int(channel.options["max_per_organization"]):
        raise ApplicationError("This organization has as many webhook endpoints as it may.",
                               code=WebhookError.TOO_MANY_WEBHOOKS)
    secret = "whsec_" + pysecrets.token_urlsafe(32)
    row = ChannelDestination.objects.create(organization=organization, channel=channel.name, address=url,
                                            secret_encrypted=secrets.encrypt(secret), description=description)
    stream_ensure(org_id=organization.id, channel=channel.name, destination=str(row.id), start_at_current=True)
    return row, secret


@transaction.atomic
def webhook_delete(*, channel: WebhookChannel, organization, webhook_id: int) -> None:
    """Stop delivering; the endpoint's delivery records stay."""
    updated = ChannelDestination.objects.filter(pk=webhook_id, organization=organization, channel=channel.name,
                                                enabled=True).update(enabled=False)
    if not updated:
        raise NotFound("Webhook not found.", code=WebhookError.WEBHOOK_NOT_FOUND)
    stream_deactivate(org_id=organization.id, channel=channel.name, destination=str(webhook_id))


# --- API -------------------------------------------------------------------------------------------

class WebhookOutput(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.CharField(source="address")
    description = serializers.CharField()
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class WebhookCreatedOutput(WebhookOutput):
    secret = serializers.CharField(help_text="Shown once: verify Herald-Signature with it.")


class WebhookListCreateApi(APIView):
    channel: WebhookChannel | None = None

    class Input(StrictSerializer):
        url = serializers.URLField(max_length=2000)
        description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema(operation_id="org_webhooks_list", responses=WebhookOutput(many=True))
    def get(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id, admin=True)
        rows = ChannelDestination.objects.filter(organization=organization, channel=self.channel.name,
                                                 enabled=True).order_by("id")
        paginator = Pagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(WebhookOutput(page, many=True).data)

    @extend_schema(operation_id="org_webhooks_create", request=Input, responses={201: WebhookCreatedOutput})
    def post(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id, admin=True)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        row, secret = webhook_create(channel=self.channel, organization=organization, **data.validated_data)
        row.secret = secret
        return Response(WebhookCreatedOutput(row).data, status=status.HTTP_201_CREATED)


class WebhookDetailApi(APIView):
    channel: WebhookChannel | None = None

    @extend_schema(operation_id="org_webhooks_delete", responses={204: None})
    def delete(self, request, org_id: int, webhook_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id, admin=True)
        webhook_delete(channel=self.channel, organization=organization, webhook_id=webhook_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
