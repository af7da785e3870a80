"""Push notifications through an FCM HTTP v1-compatible API, to the devices members register.

Devices: `GET|POST /api/v1/me/devices` {token, platform, name}, `DELETE /api/v1/me/devices/{id}`
(notifications.Device). One stream per (organization, "push", str(device id)) in each of the
member's organizations, created when the device is registered (or the member joins) at the
organization's current seq; it gets the entries whose kind lists "push" and whose audience holds
the member. A token registered to another account is 409 `device_token_taken`.

Each request: `POST {url}/v1/projects/{project_id}/messages:send` with `Authorization: Bearer
<access token>` and {"message": {"token", "notification": {"title", "body"}, "data": {...}}}; the
collapse key / apns-collapse-id is the delivery id, so a resend after a lost answer replaces the
first on the device instead of showing twice.
- 200: sent ("name" is the provider reference).
- 404 NOT_FOUND or errorCode UNREGISTERED (the app was uninstalled, the token expired): the device
  is deleted (pruned) and the run is a dead letter; its streams deactivate on their next step.
- 429 (RESOURCE_EXHAUSTED / QUOTA_EXCEEDED): the `push.api` scope is paused for Retry-After.
- 500, 503, 401 (our credentials), refused connections: retried with backoff; breaker `fcm`.
- A read timeout after the request went out: uncertain (FCM has no lookup: the next attempt
  resends under the same collapse key).
- Other 4xx (INVALID_ARGUMENT, SENDER_ID_MISMATCH, ...): a dead letter.
Limits: `push.api` (the project's rate, every worker) and `push.device` (FCM allows about 240
messages a minute to one device).
"""
import json
import re
from dataclasses import dataclass
from enum import StrEnum

import httpx
from django.core.checks import Error
from django.db import IntegrityError, transaction
from django.db.models.functions import Now
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination, StrictSerializer
from config.errors import ApplicationError, Conflict, Forbidden, NotFound
from notifications.channels import registry
from notifications.channels.base import Run
from notifications.channels.parts import entry_parts, entry_title_body
from notifications.channels.provider import ProviderChannel, retry_after
from notifications.delivery.streams import stream_deactivate, stream_ensure
from notifications.delivery.types import PermanentFailure, RateLimitedFailure, TransientFailure
from notifications.models import DeliveryStream, Device
from notifications.ratelimit import Scope
from organizations.models import Membership
from organizations.selectors import ApiKeyPrincipal

MAX_PAYLOAD_BYTES = 4000  # FCM refuses messages over 4096 bytes
TOKEN = re.compile(r"^[A-Za-z0-9_:.\-]{16,512}\Z")


class PushError(StrEnum):
    DEVICE_NOT_FOUND = "device_not_found"
    DEVICE_TOKEN_TAKEN = "device_token_taken"
    TOO_MANY_DEVICES = "too_many_devices"
    PUSH_TOO_LARGE = "push_too_large"


@dataclass(frozen=True)
class PushTarget:
    device_id: int
    user_id: int
    token: str
    platform: str
    locale: str | None = None


def fcm_error(response: httpx.Response) -> tuple[str, str, str]:
    """(status, FCM errorCode, message) of a google.rpc.Status error body."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", "", response.text[:200]
    codes = [d.get("errorCode", "") for d in error.get("details") or [] if isinstance(d, dict)]
    return str(error.get("status", "")), next((c for c in codes if c), ""), str(error.get("message", ""))[:200]


class PushChannel(ProviderChannel):
    api_scope = "push.api"
    destination_scope = ("push.device", "device_per_minute", "device_burst")
    label = "fcm"
    default_options = {"batch_max": 10, "timeout": 10.0, "url": "https://fcm.googleapis.com", "project_id": "",
                       "access_token": "", "rate_per_second": 100.0, "burst": 50, "device_per_minute": 240.0,
                       "device_burst": 10, "max_devices_per_user": 20}

    # --- configuration -----------------------------------------------------------------------
    @property
    def configured(self) -> bool:
        return bool(self.options.get("project_id") and self.options.get("access_token"))

    def check(self) -> list[Error]:
        if self.options.get("project_id") and not self.options.get("access_token"):
            return [Error("The push channel has a project_id but no access_token", id="herald.E031")]
        return []

    def validate(self, part: dict) -> None:
        """The send API's check of a rendered push part: the message must fit FCM's 4 KB."""
        size = len(json.dumps(part or {}, ensure_ascii=False).encode())
        if size > MAX_PAYLOAD_BYTES:
            raise ApplicationError(f"A push message is at most {MAX_PAYLOAD_BYTES} bytes; this one has {size}.",
                                   code=PushError.PUSH_TOO_LARGE,
                                   extra={"channel": self.name, "size": size, "max": MAX_PAYLOAD_BYTES})

    # --- destination ---------------------------------------------------------------------------
    @property
    def no_destination(self) -> str:
        if not self.configured:
            return "push is not configured (no project id or access token)"
        return "the member has no registered device (POST /api/v1/me/devices)"

    def member_destinations(self, user) -> dict[str, bool]:
        if not self.configured:
            return {}
        return {str(pk): True for pk in Device.objects.filter(user=user).values_list("id", flat=True)}

    def target(self, *, organization_id: int, destination: str) -> PushTarget | None:
        if not destination.isdigit() or not self.configured:
            return None
        device = (Device.objects.filter(pk=int(destination), user__is_active=True,
                                        user__memberships__organization_id=organization_id)
                  .select_related("user").first())
        if device is None:
            return None
        return PushTarget(device_id=device.id, user_id=device.user_id, token=device.token, platform=device.platform,
                          locale=getattr(device.user, "locale", None) or None)

    def recipient_id(self, target: PushTarget) -> int:
        return target.user_id

    def scopes(self, target: PushTarget) -> list[Scope]:
        return [Scope("push.api"), Scope("push.device", str(target.device_id))]

    def breaker_names(self, target) -> list[str]:
        return ["fcm"]

    # --- sending ---------------------------------------------------------------------------------
    def render(self, target: PushTarget, run: Run) -> dict:
        data = {"org_id": str(run.organization_id), "first_seq": str(run.first_seq), "last_seq": str(run.last_seq),
                "delivery_id": str(run.delivery_id), "late": "1" if run.late else "0"}
        if len(run.entries) == 1:
            entry = run.entries[0]
            title, body = entry_title_body(entry, self.name, target.locale)
            part = entry_parts(entry, self.name, target.locale) or {}
            extra = part.get("data") if isinstance(part.get("data"), dict) else {}
            data.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
            data["kind"] = entry.kind
        else:
            title = f"{len(run.entries)} updates"
            body = "\n".join(" ".join(filter(None, entry_title_body(e, self.name, target.locale))) for e in run.entries)
        if run.late:
            title = "(late) " + title
        collapse = f"herald-{run.delivery_id}"
        message = {"token": target.token, "notification": {"title": title[:200], "body": body[:1000]}, "data": data,
                   "android": {"collapse_key": collapse}, "apns": {"headers": {"apns-collapse-id": collapse}}}
        size = len(json.dumps(message, ensure_ascii=False).encode())
        if size > MAX_PAYLOAD_BYTES:
            raise PermanentFailure(f"push message of {size} bytes (at most {MAX_PAYLOAD_BYTES})")
        return {"message": message}

    def send(self, target: PushTarget, run: Run, message: dict, gate) -> str:
        url = f"{self.options['url'].rstrip('/')}/v1/projects/{self.options['project_id']}/messages:send"
        headers = {"Authorization": f"Bearer {self.options['access_token']}"}
        response = self.request("POST", url, json=message, headers=headers)
        code = response.status_code
        if code == 200:
            return self.reference(response, lambda body: body["name"])
        state, error, text = fcm_error(response)
        if code == 404 or error == "UNREGISTERED":
            device_prune(device_id=target.device_id, token=target.token)
            raise PermanentFailure(f"fcm {code} {error or state}: token unregistered, device pruned")
        if code == 429:
            wait = retry_after(response)
            raise RateLimitedFailure(f"fcm 429 {error or state} (Retry-After {wait})", wait, scope="global")
        if code >= 500 or code == 401:
            raise TransientFailure(f"fcm {code} {error or state}: {text}".strip())
        raise PermanentFailure(f"fcm {code} {error or state}: {text}".strip())

    # --- API ------------------------------------------------------------------------------------
    def urlpatterns(self) -> list:
        return [path("me/devices", DeviceListCreateApi.as_view(channel_name=self.name), name="me-devices"),
                path("me/devices/<int:device_id>", DeviceDetailApi.as_view(channel_name=self.name), name="me-device")]


# --- services --------------------------------------------------------------------------------------

def _streams_ensure(*, channel: PushChannel, device: Device) -> None:
    if not channel.configured:
        return
    for org_id in Membership.objects.filter(user_id=device.user_id).values_list("organization_id", flat=True):
        stream_ensure(org_id=org_id, channel=channel.name, destination=str(device.id), start_at_current=True,
                      user_id=device.user_id)


def _streams_deactivate(*, channel_name: str, device_id: int) -> None:
    org_ids = DeliveryStream.objects.filter(channel=channel_name, destination=str(device_id), active=True) \
        .values_list("organization_id", flat=True)
    for org_id in list(org_ids):
        stream_deactivate(org_id=org_id, channel=channel_name, destination=str(device_id))


@transaction.atomic
def device_register(*, channel: PushChannel, user, token: str, platform: str, name: str = "") -> tuple[Device, bool]:
    """Register (or refresh) the member's device; returns (device, created). Its streams start at
    each organization's current seq. A token another account registered is a 409."""
    device = Device.objects.select_for_update().filter(token=token).first()
    if device is None:
        if Device.objects.filter(user=user).count() >= int(channel.options["max_devices_per_user"]):
            raise ApplicationError("You have registered as many devices as you may; remove one first.",
                                   code=PushError.TOO_MANY_DEVICES)
        try:
            with transaction.atomic():
                device = Device.objects.create(user=user, token=token, platform=platform, name=name)
        except IntegrityError:  # registered concurrently: by this account (refresh) or another (409)
            device = Device.objects.select_for_update().get(token=token)
        else:
            _streams_ensure(channel=channel, device=device)
            return device, True
    if device.user_id != user.id:
        raise Conflict("This device token is registered to another account.", code=PushError.DEVICE_TOKEN_TAKEN)
    Device.objects.filter(pk=device.pk).update(platform=platform, name=name, last_seen_at=Now())
    device.refresh_from_db()
    _streams_ensure(channel=channel, device=device)
    return device, False


@transaction.atomic
def device_delete(*, channel: PushChannel, user, device_id: int) -> None:
    deleted, _ = Device.objects.filter(pk=device_id, user=user).delete()
    if not deleted:
        raise NotFound("Device not found.", code=PushError.DEVICE_NOT_FOUND)
    _streams_deactivate(channel_name=channel.name, device_id=device_id)


def device_prune(*, device_id: int, token: str) -> None:
    """The provider says the token is gone: forget the device (inside the fence's transaction, so
    it commits with the dead letter). Only this device row is locked; its streams in other
    organizations deactivate on their own next step (their target is gone)."""
    Device.objects.filter(pk=device_id, token=token).delete()


# --- API -------------------------------------------------------------------------------------------

def require_user(request):
    """Devices belong to a person, not to an organization's API key (as organizations.apis says)."""
    if isinstance(request.user, ApiKeyPrincipal):
        raise Forbidden("This endpoint needs a user, not an organization API key.", code="user_required")
    return request.user


class DeviceOutput(serializers.Serializer):
    id = serializers.IntegerField()
    platform = serializers.CharField()
    name = serializers.CharField()
    token_hint = serializers.SerializerMethodField(help_text="The token's last 6 characters")
    created_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField()

    def get_token_hint(self, device) -> str:
        return device.token[-6:]


class _PushView(APIView):
    channel_name = "push"

    @property
    def channel(self) -> PushChannel:
        return registry.get(self.channel_name)  # as configured now (settings may change in tests)


class DeviceListCreateApi(_PushView):

    class Input(StrictSerializer):
        token = serializers.RegexField(TOKEN.pattern, max_length=512,
                                       help_text="The FCM registration token of the app install")
        platform = serializers.ChoiceField(choices=Device.Platform.choices)
        name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")

    @extend_schema(operation_id="me_devices_list", responses=DeviceOutput(many=True))
    def get(self, request):
        user = require_user(request)
        rows = Device.objects.filter(user=user).order_by("id")
        paginator = Pagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(DeviceOutput(page, many=True).data)

    @extend_schema(operation_id="me_devices_register", request=Input, responses={201: DeviceOutput, 200: DeviceOutput})
    def post(self, request):
        """Register this device for push (201), or refresh it when already yours (200)."""
        user = require_user(request)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        device, created = device_register(channel=self.channel, user=user, **data.validated_data)
        return Response(DeviceOutput(device).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class DeviceDetailApi(_PushView):

    @extend_schema(operation_id="me_devices_delete", responses={204: None})
    def delete(self, request, device_id: int):
        device_delete(channel=self.channel, user=require_user(request), device_id=device_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
