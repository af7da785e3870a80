"""What a member receives: the resolution of preferences (category x channel), quiet hours and
per-channel daily caps, for the send fan-out, the in-app fan-out and the fence.

Precedence for one (member, organization, channel, category): a transactional category is always
on (locked); else the member's choice for that organization, else their global choice, else the
organization's default, else the built-in default (BUILTIN_OFF: tracker-event emails are off,
everything else is on). The same order is written once in Python (`resolve`) and once in SQL
(`effective_sql`, per row of a fan-out's statement). Writes of preferences live in notifications.preferences.
"""
import json
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection

from notifications.categories import CATEGORIES, category_is_transactional
from notifications.delivery.types import Gate
from notifications.kinds import KINDS
from notifications.models import EmailDeferral

# (channel, category) pairs that are off unless someone turns them on.
BUILTIN_OFF: frozenset[tuple[str, str]] = frozenset({("email", "tracker_event")})
SOURCES = ("required", "organization", "global", "organization_default", "default")


def builtin_enabled(channel: str, category: str) -> bool:
    return (channel, category) not in BUILTIN_OFF


def is_locked(category: str) -> bool:
    """Transactional categories cannot be turned off."""
    return category_is_transactional(category)


@dataclass(frozen=True)
class Choices:
    """Explicit values around one member: theirs {(org_id|None, channel, category): bool} and their
    organizations' defaults {(org_id, channel, category): bool}."""

    member: dict
    organization: dict


def resolve(choices: Choices, organization_id: int | None, channel: str, category: str) -> tuple[bool, str]:
    """(enabled, source) for one cell; organization_id None: the member's global row."""
    if is_locked(category):
        return True, "required"
    if organization_id is not None and (organization_id, channel, category) in choices.member:
        return choices.member[(organization_id, channel, category)], "organization"
    if (None, channel, category) in choices.member:
        return choices.member[(None, channel, category)], "global"
    if organization_id is not None and (organization_id, channel, category) in choices.organization:
        return choices.organization[(organization_id, channel, category)], "organization_default"
    return builtin_enabled(channel, category), "default"


def effective_sql(*, user: str, org: str, channel: str, category: str, builtin: str) -> str:
    """SQL for the effective value of one row of a fan-out: a boolean expression. Arguments are SQL
    expressions of the query (columns or placeholders), never user input.

    Each level is a scalar subquery, not a LEFT JOIN: the tables' unique constraints let each find
    at most one row, evaluated per row by one index probe (COALESCE stops at the first level set).
    Left out of the join search, they keep the statement cheap to plan. The fan-outs' statements
    take array parameters, for which Postgres keeps making a custom plan per execution (a generic
    plan, costed for arrays of unknown length, looks dearer). Three LEFT JOINs made that plan the
    largest part of the in-app fan-out's cost (docs/benchmarks.md, 2026-12-03 afternoon)."""
    return f"""COALESCE(
        (SELECT p.enabled FROM notifications_notificationpreference p WHERE p.user_id = {user}
           AND p.organization_id = {org} AND p.channel = {channel} AND p.category = {category}),
        (SELECT p.enabled FROM notifications_notificationpreference p WHERE p.user_id = {user}
           AND p.organization_id IS NULL AND p.channel = {channel} AND p.category = {category}),
        (SELECT p.enabled FROM notifications_organizationpreference p WHERE p.organization_id = {org}
           AND p.channel = {channel} AND p.category = {category}),
        {builtin})"""


def entry_category(entry) -> str:
    """The preference category of a log entry: its kind's (an API send: the template's)."""
    kind = KINDS.get(entry.kind)
    if kind is not None and (kind.tracked or kind.payload_category):
        return str((entry.payload or {}).get("category") or kind.category)
    return kind.category if kind is not None else ""


_MUTED_SQL = """
SELECT organization_id, channel, category, enabled, 'member' FROM notifications_notificationpreference
WHERE user_id = %(user)s AND channel = %(channel)s AND category = ANY(%(categories)s)
  AND (organization_id = %(org)s OR organization_id IS NULL)
UNION ALL
SELECT organization_id, channel, category, enabled, 'organization' FROM notifications_organizationpreference
WHERE organization_id = %(org)s AND channel = %(channel)s AND category = ANY(%(categories)s)
"""


def muted_categories(*, organization_id: int, channel: str, user_id: int, categories: set[str]) -> set[str]:
    """Of `categories`, those the member does not get on `channel` in the organization (one query)."""
    open_ = sorted(c for c in categories if not is_locked(c))
    if not open_:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(_MUTED_SQL, {"user": user_id, "channel": channel, "categories": open_, "org": organization_id})
        rows = cursor.fetchall()
    choices = Choices(member={(o, ch, c): e for o, ch, c, e, src in rows if src == "member"},
                      organization={(o, ch, c): e for o, ch, c, e, src in rows if src == "organization"})
    return {c for c in open_ if not resolve(choices, organization_id, channel, c)[0]}


# --- quiet hours ---------------------------------------------------------------------------------

def quiet_release(at: datetime, *, zone: str, start: time | None, end: time | None) -> datetime | None:
    """When `at` falls inside the member's quiet hours (local [start, end), wrapping midnight when
    start > end), the end of those quiet hours as an aware UTC time; else None. A local end that
    does not exist (DST gap) moves forward by the gap; an ambiguous one is its first occurrence."""
    if start is None or end is None or start == end:
        return None
    tz = ZoneInfo(zone or "UTC")
    local = at.astimezone(tz)
    clock = local.time().replace(tzinfo=None)
    if start < end:
        if not (start <= clock < end):
            return None
        day = local.date()
    else:
        if start <= clock:
            day = local.date() + timedelta(days=1)
        elif clock < end:
            day = local.date()
        else:
            return None
    release = datetime.combine(day, end, tzinfo=tz).astimezone(UTC)
    return release if release > at else None


# --- daily caps ----------------------------------------------------------------------------------

def daily_cap_default(channel: str) -> int:
    return int(settings.HERALD_DAILY_CAPS.get(channel, settings.HERALD_DAILY_CAP_DEFAULT))


def daily_cap_for(member_caps: dict | None, channel: str) -> tuple[int, str]:
    """(cap, source): the member's own cap for the channel (within the bound) or the default.
    `member_caps` as stored (a dict, or its JSON text from a raw query)."""
    if isinstance(member_caps, str):
        member_caps = json.loads(member_caps)
    value = (member_caps or {}).get(channel)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(0, min(value, settings.HERALD_DAILY_CAP_MAX)), "member"
    return daily_cap_default(channel), "default"


def next_local_midnight(zone: str, now: datetime) -> datetime:
    tz = ZoneInfo(zone or "UTC")
    local = now.astimezone(tz)
    return datetime.combine(local.date() + timedelta(days=1), time(0, 0), tzinfo=tz).astimezone(UTC)


_MEMBER_SQL = """
SELECT u.time_zone, s.daily_caps FROM organizations_user u
LEFT JOIN notifications_membernotificationsettings s ON s.user_id = u.id
WHERE u.id = %s
"""

_TAKE_SQL = """
INSERT INTO notifications_dailysendcount (user_id, channel, day, count) VALUES (%s, %s, %s, 1)
ON CONFLICT (user_id, channel, day) DO UPDATE SET count = notifications_dailysendcount.count + 1
WHERE notifications_dailysendcount.count < %s
RETURNING count
"""


def daily_take(*, user_id: int, channel: str, now: datetime, zone: str | None = None,
               member_caps: dict | None = None, load: bool = True) -> bool:
    """Count one message to the member on the channel for their local calendar day, if under their
    cap (counted in Postgres: neither a Redis restart nor a retry hands out more)."""
    if load:
        with connection.cursor() as cursor:
            cursor.execute(_MEMBER_SQL, [user_id])
            row = cursor.fetchone()
        if row is None:
            return True
        zone, member_caps = row[0], row[1]
    cap, _ = daily_cap_for(member_caps, channel)
    day = now.astimezone(ZoneInfo(zone or "UTC")).date()
    if cap <= 0:
        return False
    with connection.cursor() as cursor:
        cursor.execute(_TAKE_SQL, [user_id, channel, day, cap])
        return cursor.fetchone() is not None


def daily_cap_admit(*, user_id: int, channel: str, delivery_id: int, category: str, now: datetime) -> Gate:
    """The fence's admit() for per-recipient channels: take a slot of the member's daily cap for
    this delivery, or defer it to the member's next local midnight, recorded (EmailDeferral, one
    open record per delivery; what arrives meanwhile joins the deferred run)."""
    with connection.cursor() as cursor:
        cursor.execute(_MEMBER_SQL, [user_id])
        row = cursor.fetchone()
    if row is None:
        return Gate.go()
    zone, caps = row
    if daily_take(user_id=user_id, channel=channel, now=now, zone=zone, member_caps=caps, load=False):
        EmailDeferral.objects.filter(delivery_id=delivery_id, released_at__isnull=True).update(released_at=now)
        return Gate.go()
    until = next_local_midnight(zone, now)
    updated = EmailDeferral.objects.filter(delivery_id=delivery_id, released_at__isnull=True).update(release_at=until)
    if not updated:
        EmailDeferral.objects.create(user_id=user_id, category=category if category in CATEGORIES else "",
                                     delivery_id=delivery_id, release_at=until)
    return Gate(False, until=until, reason="recipient_daily_limit")



# --- digests -------------------------------------------------------------------------------------

def digested_entry_ids(*, user_id: int, entry_ids: list[int]) -> set[int]:
    """Of these log entries, those held for the member's digest (recorded when they were published,
    so every attempt decides the same; one query)."""
    if not entry_ids:
        return set()
    with connection.cursor() as cursor:
        cursor.execute("SELECT entry_id FROM notifications_digestitem WHERE user_id = %s AND entry_id = ANY(%s)",
                       [user_id, list(entry_ids)])
        return {row[0] for row in cursor.fetchall()}
