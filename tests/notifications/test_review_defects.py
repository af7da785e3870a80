"""Defects found reviewing the send, digest and quiet-hours code (each test failed before its fix),
against real Postgres and Redis."""
from datetime import UTC, datetime, time

import pytest

from notifications import digests
from notifications.models import Digest, DigestItem
from notifications.preferences import digest_set
from tests.notifications.test_digests import _send
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def key_client(org_with_members, api_key_client):
    send_template(org_with_members.org, kind="nudge", category="reminders", email=True)
    return api_key_client(ApiKeyFactory(organization=org_with_members.org).plaintext)


def test_an_item_late_for_a_daily_window_moves_to_the_next_local_day_across_a_dst_change(org_with_members,
                                                                                         key_client):
    """New York, daily at 08:30: the window of 31 October 2026 ends at 12:30 UTC (EDT); DST ends on
    1 November, so the next one ends at 13:30 UTC (EST). An item that arrives as the first closes
    goes in the next window, the one the member's other items of that day are due at: not 24 hours
    later (07:30 local, a window of its own)."""
    o = org_with_members
    o.member.time_zone = "America/New_York"
    o.member.save(update_fields=["time_zone"])
    digest_set(user=o.member, organization=o.org, kind="nudge", window="daily", at=time(8, 30))
    window = datetime(2026, 10, 31, 12, 30, tzinfo=UTC)
    _send(key_client, "nudge", "nudge 1", [o.member.pk])
    DigestItem.objects.update(due_at=window)
    assert digests.digests_publish_due() == 1
    _send(key_client, "nudge", "nudge 2", [o.member.pk])  # published as the window closed
    DigestItem.objects.filter(digest__isnull=True).update(due_at=window)
    assert digests.digests_publish_due() == 0
    late = DigestItem.objects.get(digest__isnull=True)
    assert late.due_at == datetime(2026, 11, 1, 13, 30, tzinfo=UTC)
    assert digests.digests_publish_due() == 1
    assert sorted(d.window_end for d in Digest.objects.all()) == [window, late.due_at]


def test_an_item_late_for_an_hourly_window_moves_one_hour(org_with_members, key_client):
    o = org_with_members
    o.member.time_zone = "Asia/Kolkata"
    o.member.save(update_fields=["time_zone"])
    digest_set(user=o.member, organization=o.org, kind="nudge", window="hourly")
    window = datetime(2026, 10, 31, 12, 30, tzinfo=UTC)
    _send(key_client, "nudge", "nudge 1", [o.member.pk])
    DigestItem.objects.update(due_at=window)
    assert digests.digests_publish_due() == 1
    _send(key_client, "nudge", "nudge 2", [o.member.pk])
    DigestItem.objects.filter(digest__isnull=True).update(due_at=window)
    assert digests.digests_publish_due() == 0
    assert DigestItem.objects.get(digest__isnull=True).due_at == datetime(2026, 10, 31, 13, 30, tzinfo=UTC)
