"""Member notification preferences: what a member receives, per category x channel.

A preference is set per organization or, with organization None, for all of the member's
organizations; an organization's owners and admins set its defaults for its members
(OrganizationPreference). The order, transactional categories (locked on) and the built-in
defaults are notifications.policy's. Quiet hours and per-channel daily caps are the member's
MemberNotificationSettings.

Email is opt-in, as tracker emails always were: the member's email DeliveryStream in an
organization carries log entries while at least one email category is on there by a choice
(theirs or the organization's default); enabling creates it at the organization's current seq (no
replay of history), disabling the last one leaves it carrying sends only (it rests once caught up).
A transactional send to a member without a stream makes one of sends only
(notifications.delivery.streams.streams_ensure_for_send): a transactional category is always sent.
Which entries the stream then carries is decided per category (the fence asks notifications.policy).
"""
import json
import re
from dataclasses import dataclass
from datetime import time

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from config.errors import ApplicationError, NotFound
from notifications import policy
from notifications.categories import CATEGORIES, CATEGORY_NAMES
from notifications.kinds import KINDS
from notifications.channels import registry
from notifications.models import (
    Channel,
    DigestSetting,
    MemberNotificationSettings,
    NotificationPreference,
    OrganizationPreference,
    PreferenceCategory,
)
from notifications.delivery.streams import stream_deactivate, stream_ensure, stream_sends_only
from organizations.models import Membership, Organization, User

# The first rows of GET /me/preferences ("preferences"), as they always were: email x these two.
DEFAULTS: dict[tuple[str, str], bool] = {
    (Channel.EMAIL, PreferenceCategory.TRACKER_EVENT): False,
    (Channel.EMAIL, PreferenceCategory.PROFILE_UPDATED): True,
}
LOCKED = {(Channel.EMAIL, PreferenceCategory.PROFILE_UPDATED)}
CHOSEN = ("organization", "global", "organization_default")  # sources that are someone's choice


@dataclass(frozen=True)
class EffectivePreference:
    organization_id: int | None
    channel: str
    category: str
    enabled: bool
    source: str  # default | organization_default | global | organization | required
    locked: bool


def preference_channels() -> list[str]:
    """The channels a member has preferences for: in-app and every per-recipient channel."""
    names = [c.name for c in registry.all_channels() if c.per_recipient]
    return ["inapp", *[n for n in names if n != "inapp"]]


_CHOICES_SQL = """
SELECT 'member', organization_id, channel, category, enabled FROM notifications_notificationpreference
WHERE user_id = %(user)s AND (%(channel)s::text IS NULL OR channel = %(channel)s::text)
UNION ALL
SELECT 'organization', d.organization_id, d.channel, d.category, d.enabled FROM notifications_organizationpreference d
WHERE d.organization_id = ANY(%(orgs)s::bigint[]) AND (%(channel)s::text IS NULL OR d.channel = %(channel)s::text)
"""


def _choices(*, user: User, organization_ids: list[int], channel: str | None = None) -> policy.Choices:
    """The member's own choices and their organizations' defaults, in one query."""
    with connection.cursor() as cursor:
        cursor.execute(_CHOICES_SQL, {"user": user.pk, "orgs": list(organization_ids), "channel": channel})
        rows = cursor.fetchall()
    return policy.Choices(member={(o, ch, c): e for src, o, ch, c, e in rows if src == "member"},
                          organization={(o, ch, c): e for src, o, ch, c, e in rows if src == "organization"})


def _org_ids(user: User) -> list[int]:
    return list(Membership.objects.filter(user=user).order_by("organization_id")
                .values_list("organization_id", flat=True))


def _rows(choices: policy.Choices, pairs, org_ids: list[int]) -> list[EffectivePreference]:
    result = []
    for channel, category in pairs:
        for org_id in [None, *org_ids]:
            enabled, source = policy.resolve(choices, org_id, channel, category)
            result.append(EffectivePreference(org_id, channel, category, enabled, source, policy.is_locked(category)))
    return result


def _matrix_pairs() -> list[tuple[str, str]]:
    return [(channel, category) for channel in preference_channels() for category in CATEGORY_NAMES]


def preference_list(*, user: User) -> list[EffectivePreference]:
    """The email rows GET /me/preferences always listed (tracker events, profile confirmations),
    globally and for each of the user's organizations (two queries)."""
    org_ids = _org_ids(user)
    return _rows(_choices(user=user, organization_ids=org_ids), DEFAULTS, org_ids)


def preference_matrix(*, user: User) -> list[EffectivePreference]:
    """Every category x channel, globally and for each of the user's organizations (two queries)."""
    org_ids = _org_ids(user)
    return _rows(_choices(user=user, organization_ids=org_ids), _matrix_pairs(), org_ids)


@dataclass(frozen=True)
class Overview:
    """Everything GET /me/preferences shows, read in three queries (member + organizations + settings,
    choices, digests)."""

    preferences: list[EffectivePreference]
    matrix: list[EffectivePreference]
    settings: MemberNotificationSettings | None
    digests: list[DigestSetting]


_MEMBER_SQL = """
SELECT s.user_id, s.quiet_hours_start, s.quiet_hours_end, s.daily_caps,
       ARRAY(SELECT m.organization_id FROM organizations_membership m WHERE m.user_id = u.id
             ORDER BY m.organization_id)
FROM organizations_user u LEFT JOIN notifications_membernotificationsettings s ON s.user_id = u.id
WHERE u.id = %s
"""


def preference_overview(*, user: User) -> Overview:
    with connection.cursor() as cursor:
        cursor.execute(_MEMBER_SQL, [user.pk])
        settings_user, start, end, caps, org_ids = cursor.fetchone()
    row = None
    if settings_user is not None:
        row = MemberNotificationSettings(user_id=settings_user, quiet_hours_start=start, quiet_hours_end=end,
                                         daily_caps=json.loads(caps) if isinstance(caps, str) else (caps or {}))
    org_ids = list(org_ids)
    choices = _choices(user=user, organization_ids=org_ids)
    return Overview(preferences=_rows(choices, DEFAULTS, org_ids), matrix=_rows(choices, _matrix_pairs(), org_ids),
                    settings=row, digests=list(DigestSetting.objects.filter(user=user).order_by("organization_id",
                                                                                                 "kind")))


def preference_enabled(*, user: User, organization_id: int | None, channel: str, category: str) -> bool:
    choices = _choices(user=user, organization_ids=[organization_id] if organization_id else [], channel=channel)
    return policy.resolve(choices, organization_id, channel, category)[0]


def _email_chosen(choices: policy.Choices, org_id: int) -> bool:
    return any(policy.resolve(choices, org_id, Channel.EMAIL, category) in ((True, s) for s in CHOSEN)
               for category in CATEGORY_NAMES if not policy.is_locked(category))


def email_streams_sync(*, user: User, organization_ids: list[int] | None = None) -> None:
    """Make the member's email streams match their preferences: one per organization where an
    email category is on by a choice (theirs or the organization's default), none elsewhere. Call
    after a preference, an organization default or a membership changes."""
    memberships = Membership.objects.filter(user=user)
    if organization_ids is not None:
        memberships = memberships.filter(organization_id__in=organization_ids)
    org_ids = list(memberships.values_list("organization_id", flat=True))
    if not org_ids:
        return
    choices = _choices(user=user, organization_ids=org_ids, channel=Channel.EMAIL)
    destination = str(user.id)
    for org_id in org_ids:
        if _email_chosen(choices, org_id):
            stream_ensure(org_id=org_id, channel=Channel.EMAIL, destination=destination, start_at_current=True,
                          user_id=user.id)
        else:
            # Not deleted: the stream carries sends only from now on (the transactional ones, and
            # those accepted before: their rows say queued), then rests (inactive) once caught up.
            stream_sends_only(org_id=org_id, channel=Channel.EMAIL, destination=destination)


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


def member_streams_resync(*, batch: int = 500) -> int:
    """Every member's phone and device streams made to match their profile again (recipient_streams_sync
    for each active user with a membership, `batch` users per transaction). For operators: after
    SMS, WhatsApp or push is configured (or its credentials come back), since streams follow profile
    changes and a channel without credentials has no reachable destination (its streams were
    deactivated). Returns how many users were synced."""
    ids = list(User.objects.filter(is_active=True, memberships__isnull=False).distinct().order_by("id")
               .values_list("id", flat=True))
    for start in range(0, len(ids), batch):
        with transaction.atomic():
            for user in User.objects.filter(id__in=ids[start:start + batch]).order_by("id"):
                recipient_streams_sync(user=user)
    return len(ids)


def _pair_validate(channel: str, category: str) -> None:
    if channel not in preference_channels() or category not in CATEGORIES:
        raise ApplicationError("There is no such preference.", code="unknown_preference",
                               extra={"channel": channel, "category": category})
    if policy.is_locked(category):
        label = CATEGORIES[category].label
        raise ApplicationError(f"{label} are always sent: a transactional category cannot be turned off.",
                               code="preference_locked", extra={"channel": channel, "category": category})


@transaction.atomic
def preference_set(*, user: User, organization: Organization | None = None, channel: str = Channel.EMAIL,
                   category: str = PreferenceCategory.TRACKER_EVENT, enabled: bool) -> NotificationPreference:
    """Record the member's choice for one category x channel (for one organization, or all); for
    email, create or deactivate the email streams it implies."""
    _pair_validate(channel, category)
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
    if channel == Channel.EMAIL:
        email_streams_sync(user=user, organization_ids=[organization.id] if organization else None)
    return preference


# --- organization defaults (owners and admins) ------------------------------------------------------

def organization_preference_list(*, organization: Organization) -> list[EffectivePreference]:
    """Every category x channel as the organization's members get it by default (one query)."""
    choices = policy.Choices(member={}, organization={
        (p.organization_id, p.channel, p.category): p.enabled
        for p in OrganizationPreference.objects.filter(organization=organization)})
    result = []
    for channel in preference_channels():
        for category in CATEGORY_NAMES:
            enabled, source = policy.resolve(choices, organization.id, channel, category)
            result.append(EffectivePreference(organization.id, channel, category, enabled,
                                              "organization" if source == "organization_default" else source,
                                              policy.is_locked(category)))
    return result


@transaction.atomic
def organization_preference_set(*, organization: Organization, channel: str, category: str,
                                enabled: bool | None) -> None:
    """Set (or, with enabled None, clear) the organization's default for one category x channel;
    for email, every member's email stream follows (their own choices still win)."""
    _pair_validate(channel, category)
    if enabled is None:
        OrganizationPreference.objects.filter(organization=organization, channel=channel, category=category).delete()
    else:
        OrganizationPreference.objects.update_or_create(organization=organization, channel=channel,
                                                        category=category, defaults={"enabled": enabled})
    if channel == Channel.EMAIL:
        for user in User.objects.filter(memberships__organization=organization):
            email_streams_sync(user=user, organization_ids=[organization.id])


# --- quiet hours and daily caps --------------------------------------------------------------------

def _settings_for_update(user: User) -> MemberNotificationSettings:
    MemberNotificationSettings.objects.get_or_create(user=user)
    return MemberNotificationSettings.objects.select_for_update().get(user=user)


@transaction.atomic
def member_quiet_hours_set(*, user: User, start: time | None, end: time | None) -> MemberNotificationSettings:
    """Quiet hours in the member's time zone: [start, end), wrapping midnight when start > end; both
    None clears them. 400 `invalid_quiet_hours` for one without the other, or start == end."""
    if (start is None) != (end is None) or (start is not None and start == end):
        raise ApplicationError("Quiet hours need a start and a different end (or neither).",
                               code="invalid_quiet_hours", extra={"fields": {"quiet_hours": ["start and end"]}})
    row = _settings_for_update(user)
    row.quiet_hours_start, row.quiet_hours_end = start, end
    row.save(update_fields=["quiet_hours_start", "quiet_hours_end", "updated_at"])
    return row


@transaction.atomic
def member_daily_caps_set(*, user: User, caps: dict[str, int | None]) -> MemberNotificationSettings:
    """The member's own daily caps per channel (0..HERALD_DAILY_CAP_MAX; None: back to the default)."""
    per_recipient = [c for c in preference_channels() if c != "inapp"]
    for channel, value in caps.items():
        if channel not in per_recipient:
            raise ApplicationError(f"No daily cap for {channel!r}; channels: {', '.join(per_recipient)}.",
                                   code="unknown_channel", extra={"channel": channel})
        if value is not None and not 0 <= value <= settings.HERALD_DAILY_CAP_MAX:
            raise ApplicationError(f"A daily cap is between 0 and {settings.HERALD_DAILY_CAP_MAX}.",
                                   code="daily_cap_out_of_range",
                                   extra={"channel": channel, "max": settings.HERALD_DAILY_CAP_MAX})
    row = _settings_for_update(user)
    merged = dict(row.daily_caps or {})
    for channel, value in caps.items():
        if value is None:
            merged.pop(channel, None)
        else:
            merged[channel] = value
    row.daily_caps = merged
    row.save(update_fields=["daily_caps", "updated_at"])
    return row


def member_daily_caps(*, settings_row: MemberNotificationSettings | None) -> list[dict]:
    caps = settings_row.daily_caps if settings_row else {}
    out = []
    for channel in preference_channels():
        if channel == "inapp":
            continue
        limit, source = policy.daily_cap_for(caps, channel)
        out.append({"channel": channel, "limit": limit, "source": source})
    return out


# --- digests ---------------------------------------------------------------------------------------

DIGEST_KIND = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
DIGEST_WINDOWS = ("hourly", "daily", "off")


@transaction.atomic
def digest_set(*, user: User, organization: Organization, kind: str, window: str,
               at: time | None = None) -> DigestSetting | None:
    """Get `kind` (a log kind such as "tracker.event", or a send's template kind) in `organization` as
    a digest: hourly, or daily at `at` in the member's time zone; "off" sends each one again. Entries
    published from now on are held (notifications.digests); those already held still go out."""
    declared = KINDS.get(kind)
    if not DIGEST_KIND.match(kind or "") or (declared is not None and not declared.digestible):
        raise ApplicationError(f"{kind!r} cannot be digested.", code="invalid_digest",
                               extra={"fields": {"kind": [kind]}})
    if window not in DIGEST_WINDOWS or (window == "daily") != (at is not None):
        raise ApplicationError("A digest is hourly, daily with a local time (at), or off.", code="invalid_digest",
                               extra={"fields": {"window": [window], "at": [at.isoformat() if at else None]}})
    if not Membership.objects.filter(user=user, organization=organization).exists():
        raise NotFound("Organization not found.", code="organization_not_found")
    lookup = {"user": user, "organization": organization, "kind": kind}
    if window == "off":
        DigestSetting.objects.filter(**lookup).delete()
        return None
    setting, _ = DigestSetting.objects.update_or_create(**lookup, defaults={"frequency": window, "daily_at": at})
    return setting
