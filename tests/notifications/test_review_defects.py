"""Defects found reviewing the send, digest and quiet-hours code (each test failed before its fix),
against real Postgres and Redis."""
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from notifications import digests, policy
from notifications.models import Digest, DigestItem, MemberNotificationSettings, SendDelivery
from notifications.preferences import digest_set
from tests.notifications.test_digests import _send
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def key_client(org_with_members, api_key_client):
    send_template(org_with_members.org, kind="nudge", category="reminders", email=True)
    send_template(org_with_members.org, kind="sale", category="marketing", email=True)
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


def test_cancelling_a_send_takes_it_out_of_the_digests_that_have_not_gone_out(org_with_members, key_client):
    """A member who gets the kind hourly has it held (`digested`): a cancel before the window ends
    means their digest does not list it (it had not gone out); the others' rows are cancelled too."""
    o = org_with_members
    digest_set(user=o.member, organization=o.org, kind="nudge", window="hourly")
    kept = _send(key_client, "nudge", "kept", [o.member.pk])
    send_id = _send(key_client, "nudge", "called off", [o.member.pk, o.admin.pk])
    assert SendDelivery.objects.get(send_id=send_id, user=o.member, channel="inapp").state == "digested"
    response = key_client.delete(f"/api/v1/send/{send_id}")
    assert response.status_code == 200, response.content
    assert response.json()["cancelled"] == 2  # in-app: the member's digested row, the admin's queued one
    assert dict(SendDelivery.objects.filter(send_id=send_id, channel="inapp").values_list("user_id", "state")) == {
        o.member.pk: "cancelled", o.admin.pk: "cancelled"}
    DigestItem.objects.filter(digest__isnull=True).update(due_at=timezone.now() - timedelta(hours=2))
    assert digests.digests_publish_due() == 1
    [digest] = Digest.objects.all()
    assert digest.items == 1  # the kept one only
    assert SendDelivery.objects.get(send_id=kept, channel="inapp").state == "digested"


def test_a_digest_that_went_out_is_not_cancelled(org_with_members, key_client):
    o = org_with_members
    digest_set(user=o.member, organization=o.org, kind="nudge", window="hourly")
    send_id = _send(key_client, "nudge", "sent in a digest", [o.member.pk])
    DigestItem.objects.filter(digest__isnull=True).update(due_at=timezone.now() - timedelta(hours=2))
    assert digests.digests_publish_due() == 1
    response = key_client.delete(f"/api/v1/send/{send_id}")
    assert response.status_code == 409 and response.json()["code"] == "send_not_cancellable"


def test_a_digest_of_a_promotional_kind_waits_for_the_member_s_quiet_hours(org_with_members, key_client):
    """The sales a member gets hourly were accepted outside their quiet hours; the window ends inside
    quiet hours they set since: the digest is held until they end, like the sends it lists."""
    o = org_with_members
    o.member.time_zone = "Asia/Kolkata"
    o.member.save(update_fields=["time_zone"])
    digest_set(user=o.member, organization=o.org, kind="sale", window="hourly")
    _send(key_client, "sale", "spring sale", [o.member.pk])
    now = timezone.now().astimezone(ZoneInfo("Asia/Kolkata"))
    start, end = (now - timedelta(hours=1)).time().replace(microsecond=0), (now + timedelta(hours=2)).time().replace(
        second=0, microsecond=0)
    MemberNotificationSettings.objects.create(user=o.member, quiet_hours_start=start, quiet_hours_end=end)
    DigestItem.objects.filter(digest__isnull=True).update(due_at=timezone.now() - timedelta(hours=2))
    assert digests.digests_publish_due() == 0
    item = DigestItem.objects.get()
    expected = policy.quiet_release(timezone.now(), zone="Asia/Kolkata", start=start, end=end)
    assert item.digest_id is None and abs((item.due_at - expected).total_seconds()) < 5
    MemberNotificationSettings.objects.filter(user=o.member).update(quiet_hours_start=None, quiet_hours_end=None)
    DigestItem.objects.update(due_at=timezone.now() - timedelta(hours=2))
    assert digests.digests_publish_due() == 1


def test_a_digest_of_a_kind_that_is_not_promotional_goes_in_quiet_hours(org_with_members, key_client):
    o = org_with_members
    digest_set(user=o.member, organization=o.org, kind="nudge", window="hourly")
    _send(key_client, "nudge", "nudge", [o.member.pk])
    now = timezone.now()
    MemberNotificationSettings.objects.create(user=o.member, quiet_hours_start=(now - timedelta(hours=1)).time(),
                                              quiet_hours_end=(now + timedelta(hours=2)).time())
    DigestItem.objects.update(due_at=timezone.now() - timedelta(hours=2))
    assert digests.digests_publish_due() == 1
