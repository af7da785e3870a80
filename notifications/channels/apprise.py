"""Apprise: an organization's destination is an Apprise URL (Discord, Telegram, Teams, ntfy,
Pushover, mailto, json://, ... 100+ services), getting the organization's entries in seq order.

One channel module (plus its entry in settings.HERALD_CHANNELS): the destinations are
ChannelDestination rows of channel "apprise" (the stream destination is the row id), managed by
`GET|POST /api/v1/orgs/{id}/apprise/` and `DELETE /api/v1/orgs/{id}/apprise/{destination_id}/`
(organization admins). The URL usually carries the service's secret (a bot token, a password):
it is stored Fernet-encrypted (organizations.secrets) and shown only with secrets masked.

Herald's machinery still applies: limiter scope `apprise.destination` per URL, a breaker per URL,
retries with backoff for the channel's retry window, a dead letter after it. Apprise answers with
a bool only (no status, no Retry-After), so every failure is a TransientFailure (its log line is
the recorded error). A run of entries goes as one notification (title + body, in seq order).
Generic HTTP schemes (json://, xml://, form://) must point at a public host unless the host is
listed in `allow_private_hosts` (the tests' loopback receiver).
"""
import ipaddress
import logging
from dataclasses import dataclass
from enum import StrEnum

import apprise
from django.db import transaction
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination, StrictSerializer
from config.errors import ApplicationError, NotFound
from notifications.channels import registry
from notifications.channels.base import Channel, Run
from notifications.channels.parts import entry_title_body
from notifications.delivery.streams import stream_deactivate, stream_ensure
from notifications.delivery.types import PermanentFailure, TransientFailure
from notifications.models import ChannelDestination
from notifications.ratelimit import Scope
from organizations import secrets
from organizations.selectors import organization_get_for_user

logger = logging.getLogger("herald.apprise")

GENERIC_HTTP = {"json", "jsons", "xml", "xmls", "form", "forms"}
MAX_BODY = 4000


class AppriseError(StrEnum):
    APPRISE_DESTINATION_NOT_FOUND = "apprise_destination_not_found"
    INVALID_APPRISE_URL = "invalid_apprise_url"
    TOO_MANY_APPRISE_DESTINATIONS = "too_many_apprise_destinations"


@dataclass(frozen=True)
class AppriseTarget:
    id: int
    url: str
    locale: str | None = None  # the organization's default (an API send's parts are per locale)


def _service(url: str):
    """Apprise's plugin instance for one URL, or None when Apprise does not understand it."""
    client = apprise.Apprise()
    if not client.add(url):
        return None
    return client[0]


class AppriseChannel(Channel):
    default_options = {"batch_max": 20, "rate_per_second": 1.0, "burst": 5, "max_per_organization": 10,
                       "allow_private_hosts": []}

    def rate_limits(self) -> dict:
        return {"apprise.destination": {"rate": float(self.options["rate_per_second"]),
                                        "burst": int(self.options["burst"])}}

    # --- destination ----------------------------------------------------------------------------
    def target(self, *, organization_id: int, destination: str) -> AppriseTarget | None:
        if not destination.isdigit():
            return None
        row = ChannelDestination.objects.filter(pk=int(destination), organization_id=organization_id,
                                                channel=self.name, enabled=True).select_related("organization").first()
        if row is None:
            return None
        return AppriseTarget(id=row.id, url=secrets.decrypt(row.secret_encrypted),
                             locale=getattr(row.organization, "locale", None) or None)

    def scopes(self, target: AppriseTarget) -> list[Scope]:
        return [Scope("apprise.destination", str(target.id))]

    def breaker_names(self, target: AppriseTarget) -> list[str]:
        return [f"apprise:{target.id}"]

    # --- sending --------------------------------------------------------------------------------
    def render(self, target: AppriseTarget, run: Run) -> dict:
        prefix = "(late) " if run.late else ""
        if len(run.entries) == 1:
            title, body = entry_title_body(run.entries[0], self.name, target.locale)
            return {"title": prefix + title, "body": (body or title)[:MAX_BODY]}
        title = f"{prefix}{len(run.entries)} updates (#{run.first_seq}–#{run.last_seq})"
        lines = []
        for entry in run.entries:
            entry_title, entry_body = entry_title_body(entry, self.name, target.locale)
            lines.append(f"• {entry_title}" + (f": {entry_body}" if entry_body else "") + f" (#{entry.seq})")
        return {"title": title, "body": "\n".join(lines)[:MAX_BODY]}

    def send(self, target: AppriseTarget, run: Run, message: dict, gate) -> str:
        client = apprise.Apprise()
        if not client.add(target.url):
            raise PermanentFailure("Apprise no longer understands this URL")
        with apprise.LogCapture(level=logging.WARNING) as captured:
            result = client.notify(title=message["title"], body=message["body"])
        if not result:
            detail = " ".join(captured.getvalue().split())[-300:] if captured else ""
            raise TransientFailure(f"apprise notification failed: {detail or 'no detail'}")
        return f"apprise {client[0].service_name}"[:120]

    # --- API ------------------------------------------------------------------------------------
    def urlpatterns(self) -> list:
        return [
            path("orgs/<int:org_id>/apprise/", AppriseListCreateApi.as_view(channel_name=self.name),
                 name="org-apprise"),
            path("orgs/<int:org_id>/apprise/<int:destination_id>/",
                 AppriseDetailApi.as_view(channel_name=self.name), name="org-apprise-destination"),
        ]

    def validate_url(self, url: str) -> str:
        """The URL Apprise understands, refusing generic HTTP targets on private addresses (SSRF)."""
        service = _service(url)
        if service is None:
            raise ApplicationError("Apprise does not understand this URL.", code=AppriseError.INVALID_APPRISE_URL,
                                   extra={"fields": {"url": ["Not an Apprise URL (e.g. json://host/path, "
                                                             "tgram://token/chat, discord://id/token)"]}})
        scheme = url.split("://", 1)[0].lower()
        host = str(getattr(service, "host", "") or "").lower().strip("[]")
        if scheme in GENERIC_HTTP and host not in self.options["allow_private_hosts"]:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                address = None
            if host in ("", "localhost") or (address is not None and not address.is_global):
                refused = ["Private, loopback and link-local hosts are refused"]
                raise ApplicationError("The destination must be a public address.",
                                       code=AppriseError.INVALID_APPRISE_URL, extra={"fields": {"url": refused}})
        return url


# --- services ----------------------------------------------------------------------------------------

@transaction.atomic
def apprise_destination_create(*, channel: AppriseChannel, organization, url: str,
                               description: str = "") -> ChannelDestination:
    """A new Apprise destination (the URL encrypted at rest, shown masked); it gets entries from the
    organization's next seq on."""
    url = channel.validate_url(url)
    count = ChannelDestination.objects.filter(organization=organization, channel=channel.name, enabled=True).count()
    if count >= int(channel.options["max_per_organization"]):
        raise ApplicationError("This organization has as many Apprise destinations as it may.",
                               code=AppriseError.TOO_MANY_APPRISE_DESTINATIONS)
    masked = _service(url).url(privacy=True)
    row = ChannelDestination.objects.create(organization=organization, channel=channel.name, address=masked[:2000],
                                            secret_encrypted=secrets.encrypt(url), description=description)
    stream_ensure(org_id=organization.id, channel=channel.name, destination=str(row.id), start_at_current=True)
    return row


@transaction.atomic
def apprise_destination_delete(*, channel: AppriseChannel, organization, destination_id: int) -> None:
    updated = ChannelDestination.objects.filter(pk=destination_id, organization=organization, channel=channel.name,
                                                enabled=True).update(enabled=False)
    if not updated:
        raise NotFound("Apprise destination not found.", code=AppriseError.APPRISE_DESTINATION_NOT_FOUND)
    stream_deactivate(org_id=organization.id, channel=channel.name, destination=str(destination_id))


# --- API ---------------------------------------------------------------------------------------------

class AppriseDestinationOutput(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.CharField(source="address", help_text="The Apprise URL with its secrets masked")
    description = serializers.CharField()
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class _AppriseView(APIView):
    channel_name = "apprise"

    @property
    def channel(self) -> AppriseChannel:
        return registry.get(self.channel_name)


class AppriseListCreateApi(_AppriseView):
    class Input(StrictSerializer):
        url = serializers.CharField(max_length=2000, help_text="An Apprise URL, e.g. tgram://bottoken/chatid")
        description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema(operation_id="org_apprise_list", responses=AppriseDestinationOutput(many=True))
    def get(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id, admin=True)
        rows = ChannelDestination.objects.filter(organization=organization, channel=self.channel_name,
                                                 enabled=True).order_by("id")
        paginator = Pagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(AppriseDestinationOutput(page, many=True).data)

    @extend_schema(operation_id="org_apprise_create", request=Input, responses={201: AppriseDestinationOutput})
    def post(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id, admin=True)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        row = apprise_destination_create(channel=self.channel, organization=organization, **data.validated_data)
        return Response(AppriseDestinationOutput(row).data, status=status.HTTP_201_CREATED)


class AppriseDetailApi(_AppriseView):
    @extend_schema(operation_id="org_apprise_delete", responses={204: None})
    def delete(self, request, org_id: int, destination_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id, admin=True)
        apprise_destination_delete(channel=self.channel, organization=organization, destination_id=destination_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
