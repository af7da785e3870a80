"""What the HTTP provider channels share (SMS, push, WhatsApp; django-anymail's base backend as the
model): one request helper that maps the transport's failures onto the fence's taxonomy (a refused
connection or a connect timeout: the channel's choice, by default transient; a lost answer after
the request went out: uncertain) on the process's HTTP client, Retry-After, the provider's
reference read from a 2xx answer, the rule every per-recipient provider channel applies to API
sends, the two limiter scopes each declares (the provider's API, one destination), and, for the
phone channels, the member's phone as the destination. Each channel module keeps only its
protocol: URL, payload, how its errors classify.
"""
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from notifications.channels.base import Channel, http_client
from notifications.delivery.types import TransientFailure, UncertainFailure
from organizations.models import E164, User


def retry_after(response: httpx.Response, default: float = 1.0) -> float:
    """The answer's Retry-After in seconds (at least 50 ms), else `default`."""
    try:
        return max(0.05, float(response.headers.get("Retry-After", default)))
    except ValueError:
        return default


class ProviderChannel(Channel):
    """A per-recipient channel that sends one HTTP request per run to an outside provider."""

    per_recipient = True
    label = ""  # how failures name the provider ("whatsapp", "fcm")
    # Limiter scopes: the provider's API (every worker) and one destination, with the options that
    # set the destination's rate (per minute) and burst.
    api_scope = ""
    destination_scope = ("", "", "")  # (scope, per-minute option, burst option)

    def rate_limits(self) -> dict:
        scope, per_minute, burst = self.destination_scope
        return {self.api_scope: {"rate": float(self.options["rate_per_second"]), "burst": int(self.options["burst"])},
                scope: {"rate": float(self.options[per_minute]) / 60.0, "burst": int(self.options[burst])}}

    def wants(self, target, entry) -> bool:
        channels = (entry.payload or {}).get("channels")
        if isinstance(channels, list) and self.name not in channels:
            return False  # an API send restricted to other channels
        return super().wants(target, entry)

    def request(self, method: str, url: str, *, unreachable: Callable[[str], Exception] = TransientFailure,
                label: str | None = None, **kwargs) -> httpx.Response:
        """One call with the channel's timeout. Not connected (refused, connect timeout): raises
        `unreachable(message)`; connected but the answer was lost or broken: UncertainFailure (the
        provider may have taken it)."""
        label = self.label if label is None else label
        prefix = f"{label} " if label else ""
        try:
            return http_client().request(method, url, timeout=float(self.options["timeout"]), **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise unreachable(f"{prefix}unreachable: {exc.__class__.__name__}") from exc
        except httpx.HTTPError as exc:
            raise UncertainFailure(f"{label or self.name} answer lost: {exc.__class__.__name__}: {exc}") from exc

    def reference(self, response: httpx.Response, read: Callable[[object], object], label: str | None = None) -> str:
        """The provider's reference from a 2xx answer's JSON; unreadable: UncertainFailure."""
        try:
            return str(read(response.json()))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise UncertainFailure(f"{label or self.label or self.name} {response.status_code} "
                                   f"with an unreadable answer") from exc


@dataclass(frozen=True)
class PhoneTarget:
    user_id: int
    phone: str
    locale: str | None = None


class PhoneChannel(ProviderChannel):
    """One stream per (organization, channel, str(user id)) while the member has an E.164 phone
    (`PATCH /api/v1/me`; notifications.preferences.recipient_streams_sync); the number is read
    when a run is sent."""

    not_configured = "not configured"  # the suppression reason without credentials

    @property
    def configured(self) -> bool:
        raise NotImplementedError

    @property
    def no_destination(self) -> str:
        if not self.configured:
            return f"{self.name} is not configured ({self.not_configured})"
        return "the member has no phone number (PATCH /api/v1/me phone)"

    def member_destinations(self, user) -> dict[str, bool]:
        return {str(user.id): bool(E164.match(user.phone or "")) and self.configured}

    def target(self, *, organization_id: int, destination: str) -> PhoneTarget | None:
        if not destination.isdigit() or not self.configured:
            return None
        user = (User.objects.filter(pk=int(destination), is_active=True,
                                    memberships__organization_id=organization_id).only("id", "phone", "locale").first())
        if user is None or not E164.match(user.phone or ""):
            return None
        return PhoneTarget(user_id=user.id, phone=user.phone, locale=getattr(user, "locale", None) or None)

    def recipient_id(self, target: PhoneTarget) -> int:
        return target.user_id
