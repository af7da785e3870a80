"""Member notification preferences: who gets which emails.

A preference is set per organization or, with organization None, for all of the member's
organizations; an organization's own setting wins over the global one, which wins over the
default. Tracker-event emails are off by default. Profile change confirmations protect the
account and are always sent (locked). For tracker emails, the member's email DeliveryStream
exists exactly while the effective preference is on: enabling creates it at the organization's
current seq (no replay of history), disabling deletes it.
"""
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from config.errors import ApplicationError, NotFound
from notifications.channels import registry
from notifications.models import Channel, NotificationPreference, PreferenceCategory
from notifications.delivery.streams import stream_deactivate, stream_ensure
from organizations.models import Membership, Organization, User

DEFAULTS: dict[tuple[str, str], bool] = {
    (Channel.EMAIL, PreferenceCategory.TRACKER_EVENT): False,
    (Channel.EMAIL, PreferenceCategory.PROFILE_UPDATED): True,
}
LOCKED = {(Channel.EMAIL, PreferenceCategory.PROFILE_UPDATED)}


@dataclass(frozen=True)
class EffectivePreference:
    organization_id: int | None
    channel: str
    category: str
    enabled: bool
    source: str  # default | global | organization | required
    locked: bool


def _effective(explicit: dict, organization_id: int | None, channel: str, category: str) -> tuple[bool, str]:
    if (channel, category) in LOCKED:
        return True, "required"
    if organization_id is not None and (organization_id, channel, category) in explicit:
        return explicit[(organization_id, channel, category)], "organization"
    if (None, channel, category) in explicit:
        return explicit[(None, channel, category)], "global"
    return DEFAULTS[(channel, category)], "default"


def preference_list(*, user: User) -> list[EffectivePreference]:
    """Every (channel, category), globally and for each of the user's organizations (two queries)."""
    org_ids = list(Membership.objects.filter(user=user).order_by("organization_id")
                   .values_list("organization_id", flat=True))
    explicit = {(p.organization_id, p.channel, p.category): p.enabled
                for p in NotificationPreference.objects.filter(user=user)}
    result = []
    for channel, category in DEFAULTS:
        for org_id in [None, *org_ids]:
            enabled, source = _effective(explicit, org_id, channel, category)
            result.append(EffectivePreference(org_id, channel, category, enabled, source,
                                              (channel, category) in LOCKED))
    return result


def preference_enabled(*, user: User, organization_id: int | None, channel: str, category: str) -> bool:
    explicit = {(p.organization_id, p.channel, p.category): p.enabled
                for p in NotificationPreference.objects.filter(user=user, channel=channel, category=category)}
    return _effective(explicit, organization_id, channel, category)[0]


def email_streams_sync(*, user: User, organization_ids: list[int] | None = None) -> None:
    """Make the member's tracker email streams match the effective preference: one per organization
    where it is on, none where it is off. Call after a preference or a membership changes."""
    memberships = Membership.objects.filter(user=user)
    if organization_ids is not None:
        memberships = memberships.filter(organization_id__in=organization_ids)
    explicit = {(p.organization_id, p.channel, p.category): p.enabled
                for p in NotificationPreference.objects.filter(user=user, channel=Channel.EMAIL,
                                                               category=PreferenceCategory.TRACKER_EVENT)}
    destination = str(user.id)
    for org_id in memberships.values_list("organization_id", flat=True):
        enabled, _ = _effective(explicit, org_id, Channel.EMAIL, PreferenceCategory.TRACKER_EVENT)
        if enabled:
            stream_ensure(org_id=org_id, channel=Channel.EMAIL, destination=destination, start_at_current=True,
                          user_id=user.id)
        else:
            # Deactivated, not deleted: a send in flight keeps its rows (no deferred FK failure).
            stream_deactivate(org_id=org_id, channel=Channel.EMAIL, destination=destination)


def recipient_streams_sync(*, user: User, organization_ids: list[int] | None = None) -> None:
    """The member's streams of the channels whose destinations follow their profile (SMS and
    WhatsApp: their phone number; push: their devices; `Channel.member_destinations`): active in
    each of their organizations while the destination is reachable, deactivated when not. Which
    entries a stream gets is the channel's `wants` (kind, audience). Call after the profile, a
    device or a membership changes, in that transaction."""
    org_ids = Membership.objects.filter(user=user)
    if organization_ids is not None:
        org_ids = org_ids.filter(organization_id__in=organization_ids)
    org_ids = list(org_ids.values_list("organization_id", flat=True))
    if not org_ids:
        return
    for channel in registry.all_channels():
        destinations = channel.member_destinations(user)
        for destination, reachable in (destinations or {}).items():
            for org_id in org_ids:
                if reachable:
                    stream_ensure(org_id=org_id, channel=channel.name, destination=destination,
                                  start_at_current=True, user_id=user.id)
                else:
                    stream_deactivate(org_id=org_id, channel=channel.name, destination=destination)


@transaction.atomic
def preference_set(*, user: User, organization: Organization | None = None, channel: str = Channel.EMAIL,
                   category: str = PreferenceCategory.TRACKER_EVENT, enabled: bool) -> NotificationPreference:
    """Record the member's choice; for tracker emails, create or remove the email streams it implies."""
    if (channel, category) not in DEFAULTS:
        raise ApplicationError("There is no such preference.", code="unknown_preference",
                               extra={"channel": channel, "category": category})
    if (channel, category) in LOCKED:
        raise ApplicationError("This email is always sent: it confirms changes to your account.",
                               code="preference_locked", extra={"channel": channel, "category": category})
    if organization is not None and not Membership.objects.filter(user=user, organization=organization).exists():
        raise NotFound("Organization not found.", code="organization_not_found")
    lookup = {"user": user, "organization": organization, "channel": channel, "category": category}
    try:
        with transaction.atomic():
            preference, _ = NotificationPreference.objects.update_or_create(**lookup, defaults={"enabled": enabled})
    except IntegrityError:  # a concurrent request created it first; ours is the later choice
        preference = NotificationPreference.objects.select_for_update().get(**lookup)
        preference.enabled = enabled
        preference.save(update_fields=["enabled", "updated_at"])
    if (channel, category) == (Channel.EMAIL, PreferenceCategory.TRACKER_EVENT):
        email_streams_sync(user=user, organization_ids=[organization.id] if organization else None)
    return preference
