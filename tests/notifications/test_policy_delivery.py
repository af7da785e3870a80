"""Preferences, quiet hours and daily caps applied by real delivery (issue 13 #5), against real
Postgres, Redis and the SMTP / Twilio stand-ins on loopback, the fence run in this process: the send
fan-out marks a category turned off `suppressed` (error 'preference') and holds a promotional send
in quiet hours (`scheduled` until they end, across midnight and DST), the in-app fan-out writes no
inbox row for a category turned off in-app, a member's email stream skips log entries of a category
turned off, a range once attempted keeps its entries when a preference changes, and the per-member
daily cap defers to the member's local midnight on every per-recipient channel."""
import copy
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.utils import timezone

from notifications import policy
from notifications.delivery.fence import stream_deliver
from notifications.models import (
    DailySendCount,
    Delivery,
    DeliveryStream,
    EmailDeferral,
    MemberNotificationSettings,
    Notification,
    OrganizationPreference,
    Send,
    SendDelivery,
)
from notifications.preferences import preference_set
from notifications.publish import publish
from notifications.ratelimit import limiter
from notifications.send import services as send_services
from tests.notifications.test_email_stream import _deliver, _toggle, providers  # noqa: F401 - the fixture
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import ApiKeyFactory
from tests.support import testkinds
from tests.support.faketwilio import FakeTwilio
from reports import services as report_services

pytestmark = pytest.mark.django_db


@pytest.fixture
def key_client(org_with_members, api_key_client):
    org = org_with_members.org
    send_template(org, kind="invoice", category="billing", email=True)
    send_template(org, kind="nudge", category="reminders", email=True)
    send_template(org, kind="sale", category="marketing", email=True)
    return api_key_client(ApiKeyFactory(organization=org).plaintext)


def _send(client, kind: str, recipients, channels=("inapp",)) -> int:
    response = client.post("/api/v1/send", {"recipients": list(recipients), "kind": kind, "channels": list(channels),
                                            "data": {"title": f"{kind} title", "body": "body"}}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def _rows(send_id: int, channel: str = "inapp") -> dict:
    return {r.user_id: (r.state, r.error) for r in SendDelivery.objects.filter(send_id=send_id, channel=channel)}


def _drain_inapp(org) -> None:
    while stream_deliver(org_id=org.id, channel="inapp").kind != "idle":
        pass


def _inbox(user, kind: str) -> list[str]:
    return list(Notification.objects.filter(recipient=user, kind=kind).order_by("seq").values_list("title", flat=True))


# --- the send fan-out -------------------------------------------------------------------------------

def test_a_send_suppresses_a_category_the_member_turned_off_never_a_transactional_one(org_with_members, key_client):
    o = org_with_members
    preference_set(user=o.member, organization=None, channel="inapp", category="reminders", enabled=False)

    nudge = _send(key_client, "nudge", [o.member.pk, o.admin.pk])
    invoice = _send(key_client, "invoice", [o.member.pk, o.admin.pk])

    assert _rows(nudge) == {o.member.pk: ("suppressed", "preference"), o.admin.pk: ("queued", "")}
    assert _rows(invoice) == {o.member.pk: ("queued", ""), o.admin.pk: ("queued", "")}
    _drain_inapp(o.org)
    assert _inbox(o.member, "message") == ["invoice title"]
    assert _inbox(o.admin, "message") == ["nudge title", "invoice title"]
    assert _rows(nudge)[o.member.pk] == ("suppressed", "preference")  # the fan-out never claims it
    counts = key_client.get(f"/api/v1/send/{nudge}").json()["counts"]
    assert counts["inapp"] == {"sent": 1, "suppressed": 1}


def test_an_organization_default_applies_unless_the_member_chose_otherwise(org_with_members, key_client):
    o = org_with_members
    OrganizationPreference.objects.create(organization=o.org, channel="inapp", category="reminders", enabled=False)
    preference_set(user=o.admin, organization=None, channel="inapp", category="reminders", enabled=True)
    preference_set(user=o.owner, organization=None, channel="inapp", category="reminders", enabled=True)
    preference_set(user=o.owner, organization=o.org, channel="inapp", category="reminders", enabled=False)

    nudge = _send(key_client, "nudge", [o.member.pk, o.admin.pk, o.owner.pk])

    assert _rows(nudge) == {o.member.pk: ("suppressed", "preference"), o.admin.pk: ("queued", ""),
                            o.owner.pk: ("suppressed", "preference")}


def test_a_send_by_email_respects_the_member_s_email_preference(providers, org_with_members, key_client):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    preference_set(user=o.member, organization=o.org, enabled=True)  # tracker emails: the email stream exists
    preference_set(user=o.member, organization=o.org, channel="email", category="reminders", enabled=False)

    nudge = _send(key_client, "nudge", [o.member.pk], channels=("inapp", "email"))
    invoice = _send(key_client, "invoice", [o.member.pk], channels=("inapp", "email"))

    assert _rows(nudge, "email") == {o.member.pk: ("suppressed", "preference")}
    assert _rows(nudge, "inapp") == {o.member.pk: ("queued", "")}
    _deliver(o.org, o.member)
    assert [m["subject"] for m in primary.messages(to=o.member.email)] == ["[Acme] invoice title"]
    assert _rows(invoice, "email") == {o.member.pk: ("sent", "")}


# --- log kinds: in-app inbox rows and per-recipient streams ------------------------------------------

def test_a_tracker_event_makes_no_inbox_row_for_a_member_who_turned_it_off_in_app(org_with_members):
    o = org_with_members
    preference_set(user=o.member, organization=o.org, channel="inapp", category="tracker_event", enabled=False)

    _toggle(o.org, o.owner, 2)
    _drain_inapp(o.org)

    assert Notification.objects.filter(recipient=o.member).count() == 0
    assert Notification.objects.filter(recipient=o.admin, kind="tracker.event").count() == 2
    assert Notification.objects.filter(recipient=o.owner, kind="tracker.event").count() == 2


def test_an_org_default_off_in_app_and_a_member_who_turned_it_back_on(org_with_members):
    o = org_with_members
    OrganizationPreference.objects.create(organization=o.org, channel="inapp", category="tracker_event", enabled=False)
    preference_set(user=o.member, organization=None, channel="inapp", category="tracker_event", enabled=True)

    _toggle(o.org, o.owner, 1)
    _drain_inapp(o.org)

    assert set(Notification.objects.values_list("recipient_id", flat=True)) == {o.member.pk}


def test_the_email_stream_carries_only_the_categories_the_member_wants(providers, org_with_members):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    # Report emails on (a choice: the member's email stream exists); tracker emails stay off (built in).
    preference_set(user=o.member, organization=o.org, channel="email", category="report", enabled=True)
    assert DeliveryStream.objects.get(organization=o.org, channel="email", destination=str(o.member.id)).active

    _toggle(o.org, o.owner, 2)
    job, _ = report_services.report_job_request(organization=o.org, requester=o.member, kind="time_entries",
                                                format="csv", date_from=date(2026, 3, 1),
                                                date_to=date(2026, 3, 2))
    job.rows = 3
    with transaction.atomic():
        report_services._notify_ready(job)
    _toggle(o.org, o.owner, 1)
    _deliver(o.org, o.member)

    [mail] = primary.messages(to=o.member.email)
    assert "Your report is ready" in mail["subject"]
    assert "started" not in mail["text"] and "stopped" not in mail["text"]
    stream = DeliveryStream.objects.get(organization=o.org, channel="email", destination=str(o.member.id))
    o.org.refresh_from_db()
    assert stream.delivered_seq == o.org.last_event_seq


def test_a_range_once_attempted_keeps_its_entries_when_a_preference_changes(providers, org_with_members):  # noqa: F811
    primary, secondary = providers
    o = org_with_members
    preference_set(user=o.member, organization=o.org, enabled=True)  # tracker emails on
    preference_set(user=o.member, organization=o.org, channel="email", category="report", enabled=True)
    [seq] = _toggle(o.org, o.owner, 1)
    primary.configure(temp_fail="451")
    secondary.configure(temp_fail="451")
    assert stream_deliver(org_id=o.org.id, channel="email", destination=str(o.member.id)).kind == "wait"
    head = Delivery.objects.get(stream__destination=str(o.member.id), channel="email")
    assert head.attempts == 1 and head.seqs == [seq]

    # Turned off after the first attempt: the retry still carries exactly what was attempted.
    preference_set(user=o.member, organization=o.org, channel="email", category="tracker_event", enabled=False)
    primary.configure(temp_fail=None)
    secondary.configure(temp_fail=None)
    _toggle(o.org, o.owner, 1)  # after the change: not for this member any more
    DeliveryStream.objects.filter(channel="email").update(next_attempt_at=None)
    _deliver(o.org, o.member)

    mails = primary.messages(to=o.member.email) + secondary.messages(to=o.member.email)
    assert len(mails) == 1 and mails[0]["headers"]["x-herald-first-seq"] == str(seq)
    assert mails[0]["headers"]["x-herald-last-seq"] == str(seq)


# --- quiet hours -----------------------------------------------------------------------------------

def _quiet_around_now(user, zone: str, before: timedelta, after: timedelta) -> datetime:
    """Quiet hours from `before` ago to `after` from now in the member's zone; returns their end (UTC)."""
    user.time_zone = zone
    user.save(update_fields=["time_zone"])
    local = timezone.now().astimezone(ZoneInfo(zone)).replace(second=0, microsecond=0)
    start, end = (local - before), (local + after)
    MemberNotificationSettings.objects.update_or_create(
        user=user, defaults={"quiet_hours_start": start.time(), "quiet_hours_end": end.time()})
    return end.astimezone(UTC)


def test_a_promotional_send_is_held_until_the_member_s_quiet_hours_end(org_with_members, key_client):
    o = org_with_members
    end = _quiet_around_now(o.member, "Asia/Tokyo", timedelta(hours=1), timedelta(hours=2))

    sale = _send(key_client, "sale", [o.member.pk, o.admin.pk])
    invoice = _send(key_client, "invoice", [o.member.pk])
    nudge = _send(key_client, "nudge", [o.member.pk])  # not promotional: never held

    member_row = SendDelivery.objects.get(send_id=sale, user=o.member)
    assert (member_row.state, member_row.due_at) == ("scheduled", end)
    assert _rows(sale)[o.admin.pk] == ("queued", "")
    send = Send.objects.get(pk=sale)
    assert (send.status, send.due_at) == ("scheduled", end)
    assert _rows(invoice) == {o.member.pk: ("queued", "")} and _rows(nudge) == {o.member.pk: ("queued", "")}
    _drain_inapp(o.org)
    assert _inbox(o.member, "message") == ["invoice title", "nudge title"]  # the sale waits

    # The quiet hours end: beat's dispatcher publishes it (held, never dropped). (The dispatcher reads
    # the member's quiet hours again: make now fall after them.)
    _quiet_around_now(o.member, "Asia/Tokyo", timedelta(hours=3), -timedelta(hours=1))
    # Well in the past: the dispatcher's rows query compares with Postgres' now(), the start of this
    # test's transaction, and a loaded box can take seconds to get here (now() - 1 s was not yet due).
    SendDelivery.objects.filter(send_id=sale, state="scheduled").update(due_at=timezone.now() - timedelta(hours=1))
    Send.objects.filter(pk=sale).update(due_at=timezone.now() - timedelta(hours=1))
    assert send_services.sends_dispatch_due() == 1
    _drain_inapp(o.org)
    assert _inbox(o.member, "message") == ["invoice title", "nudge title", "sale title"]
    assert _rows(sale)[o.member.pk] == ("sent", "")


def test_a_scheduled_promotional_send_falling_due_in_quiet_hours_set_since_waits_for_their_end(
        org_with_members, key_client):
    o = org_with_members
    response = key_client.post("/api/v1/send", {"recipients": [o.member.pk, o.admin.pk], "kind": "sale",
                                                "channels": ["inapp"], "data": {"title": "sale title", "body": "body"},
                                                "send_at": (timezone.now() + timedelta(hours=1)).isoformat()},
                               format="json")
    assert response.status_code == 202, response.content
    sale = response.json()["id"]
    assert set(_rows(sale).values()) == {("scheduled", "")}
    # The member sets quiet hours around the time it falls due (after the send was accepted).
    end = _quiet_around_now(o.member, "Europe/Paris", timedelta(hours=1), timedelta(hours=2))
    past = timezone.now() - timedelta(hours=1)  # well before Postgres' now() (the test transaction's start)
    SendDelivery.objects.filter(send_id=sale).update(due_at=past)
    Send.objects.filter(pk=sale).update(due_at=past)

    assert send_services.sends_dispatch_due() == 1  # the admin only
    assert _rows(sale) == {o.member.pk: ("scheduled", ""), o.admin.pk: ("queued", "")}
    assert SendDelivery.objects.get(send_id=sale, user=o.member).due_at == end
    send = Send.objects.get(pk=sale)
    assert (send.status, send.due_at) == ("scheduled", end)
    _drain_inapp(o.org)
    assert _inbox(o.member, "message") == [] and _inbox(o.admin, "message") == ["sale title"]


def test_quiet_hours_across_midnight_hold_until_the_next_morning(org_with_members, key_client):
    o = org_with_members
    zone = ZoneInfo("America/Los_Angeles")
    o.member.time_zone = "America/Los_Angeles"
    o.member.save(update_fields=["time_zone"])
    local_now = timezone.now().astimezone(zone)
    # Quiet from an hour ago to 23:59 ... wrapping to an hour from now is the same window read across midnight:
    start = (local_now - timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (local_now - timedelta(hours=2)).time().replace(second=0, microsecond=0)  # start > end: wraps midnight
    MemberNotificationSettings.objects.create(user=o.member, quiet_hours_start=start, quiet_hours_end=end)

    sale = _send(key_client, "sale", [o.member.pk])

    due = SendDelivery.objects.get(send_id=sale).due_at
    expected = policy.quiet_release(timezone.now(), zone="America/Los_Angeles", start=start, end=end)
    assert due is not None and abs((due - expected).total_seconds()) < 120
    assert timedelta(hours=21) < due - timezone.now() < timedelta(hours=23)  # tomorrow morning, local


@pytest.mark.parametrize(("at", "start", "end", "expected"), [
    # 22:00-07:00 in Paris (UTC+1 in January): at 23:30 -> 07:00 the next day; at 03:00 -> 07:00 that day.
    (datetime(2026, 1, 10, 22, 30, tzinfo=UTC), time(22), time(7), datetime(2026, 1, 11, 6, 0, tzinfo=UTC)),
    (datetime(2026, 1, 11, 2, 0, tzinfo=UTC), time(22), time(7), datetime(2026, 1, 11, 6, 0, tzinfo=UTC)),
    (datetime(2026, 1, 11, 11, 0, tzinfo=UTC), time(22), time(7), None),  # noon: not quiet
    (datetime(2026, 1, 11, 6, 0, tzinfo=UTC), time(22), time(7), None),  # 07:00 itself: over
    (datetime(2026, 1, 11, 12, 30, tzinfo=UTC), time(13), time(14), datetime(2026, 1, 11, 13, 0, tzinfo=UTC)),
    (datetime(2026, 1, 11, 11, 30, tzinfo=UTC), time(13), time(14), None),  # a daytime window, before it
    (datetime(2026, 1, 11, 12, 30, tzinfo=UTC), time(13, 30), time(13), datetime(2026, 1, 11, 12, 0, tzinfo=UTC)
     + timedelta(days=1)),  # 13:30 local, quiet from 13:30 to 13:00 the next day
])
def test_quiet_release_wraps_midnight(at, start, end, expected):
    assert policy.quiet_release(at, zone="Europe/Paris", start=start, end=end) == expected


def test_quiet_hours_ending_in_a_dst_gap_move_forward_and_in_an_overlap_take_the_first():
    # New York springs forward on 2026-03-08 at 02:00 (to 03:00): an end at 02:30 does not exist that
    # night; it moves forward by the gap (03:30 EDT = 07:30 UTC).
    at = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # 00:00 EST
    assert policy.quiet_release(at, zone="America/New_York", start=time(23), end=time(2, 30)) == (
        datetime(2026, 3, 8, 7, 30, tzinfo=UTC))
    # It falls back on 2026-11-01 at 02:00 (to 01:00): 01:30 happens twice; the first (EDT, 05:30 UTC).
    at = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT
    assert policy.quiet_release(at, zone="America/New_York", start=time(23), end=time(1, 30)) == (
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC))
    # Quiet hours at the wall clock: 23:00-07:00 holds until 07:00 EST the morning after the change.
    at = datetime(2026, 11, 1, 3, 30, tzinfo=UTC)  # 23:30 EDT on Oct 31
    assert policy.quiet_release(at, zone="America/New_York", start=time(23), end=time(7)) == (
        datetime(2026, 11, 1, 12, 0, tzinfo=UTC))


# --- daily caps ------------------------------------------------------------------------------------

def test_the_daily_cap_counts_the_member_s_calendar_day_and_resets_at_their_local_midnight(org_with_members):
    member = org_with_members.member
    member.time_zone = "Pacific/Auckland"
    member.save(update_fields=["time_zone"])
    MemberNotificationSettings.objects.create(user=member, daily_caps={"sms": 2})
    zone = ZoneInfo("Pacific/Auckland")
    before_midnight = datetime(2026, 6, 1, 23, 59, tzinfo=zone)  # 11:59 UTC
    midnight = datetime(2026, 6, 2, 0, 0, tzinfo=zone)

    takes = [policy.daily_take(user_id=member.pk, channel="sms", now=before_midnight) for _ in range(3)]
    assert takes == [True, True, False]
    assert policy.daily_take(user_id=member.pk, channel="email", now=before_midnight)  # caps are per channel
    assert policy.daily_take(user_id=member.pk, channel="sms", now=midnight)
    assert dict(DailySendCount.objects.filter(user=member, channel="sms").values_list("day", "count")) == {
        date(2026, 6, 1): 2, date(2026, 6, 2): 1}
    assert policy.next_local_midnight("Pacific/Auckland", before_midnight) == midnight.astimezone(UTC)


def test_a_member_cap_of_zero_defers_everything_and_the_bound_holds(org_with_members, settings):
    member = org_with_members.member
    MemberNotificationSettings.objects.create(user=member, daily_caps={"push": 0, "sms": 10_000})
    now = timezone.now()
    assert not policy.daily_take(user_id=member.pk, channel="push", now=now)
    settings.HERALD_DAILY_CAP_MAX = 3
    assert [policy.daily_take(user_id=member.pk, channel="sms", now=now) for _ in range(4)] == [True] * 3 + [False]


def test_a_send_over_the_member_s_email_cap_is_deferred_to_their_local_midnight(providers, org_with_members,  # noqa: F811
                                                                               key_client):
    primary, _ = providers
    o = org_with_members
    o.member.time_zone = "Asia/Kolkata"
    o.member.save(update_fields=["time_zone"])
    preference_set(user=o.member, organization=o.org, enabled=True)
    MemberNotificationSettings.objects.create(user=o.member, daily_caps={"email": 1})

    first = _send(key_client, "invoice", [o.member.pk], channels=("email",))
    _deliver(o.org, o.member)
    second = _send(key_client, "invoice", [o.member.pk], channels=("email",))
    result = stream_deliver(org_id=o.org.id, channel="email", destination=str(o.member.id))

    assert result.kind == "wait" and result.notes == {"deferred": "recipient_daily_limit"}
    assert len(primary.messages(to=o.member.email)) == 1
    assert _rows(first, "email") == {o.member.pk: ("sent", "")}
    row = SendDelivery.objects.get(send_id=second, channel="email")
    midnight = policy.next_local_midnight("Asia/Kolkata", timezone.now())
    assert (row.state, row.error, row.due_at) == ("deferred", "recipient_daily_limit", midnight)
    assert EmailDeferral.objects.get(user=o.member, released_at__isnull=True).release_at == midnight


@pytest.fixture
def twilio(settings):
    testkinds.register()
    settings.DELIVERY_BACKOFF_BASE = 0.0
    settings.DELIVERY_BACKOFF_MAX = 0.0
    with FakeTwilio() as primary:
        channels = copy.deepcopy(settings.HERALD_CHANNELS)
        channels["sms"]["OPTIONS"].update({"timeout": 1.0, "recipient_per_minute": 600, "recipient_burst": 10,
                                           "providers": {"primary": primary.settings("+15005550001")}})
        settings.HERALD_CHANNELS = channels
        limiter.start_fresh(["sms"])
        yield primary
    testkinds.KINDS.pop(testkinds.NAME, None)


def _notice(org, audience, title):
    with transaction.atomic():
        return publish(organization_id=org.id, kind=testkinds.NAME, payload={"title": title}, audience=audience)


def test_the_cap_applies_to_sms_too_and_a_category_turned_off_is_not_texted(twilio, auth_client, org_with_members):
    o = org_with_members
    assert auth_client(o.member).patch("/api/v1/me", {"phone": "+14155550101"}, format="json").status_code == 200
    MemberNotificationSettings.objects.create(user=o.member, daily_caps={"sms": 1})
    destination = str(o.member.id)

    _notice(o.org, [o.member.pk], "first")
    assert stream_deliver(org_id=o.org.id, channel="sms", destination=destination).kind == "delivered"
    _notice(o.org, [o.member.pk], "second")
    result = stream_deliver(org_id=o.org.id, channel="sms", destination=destination)

    assert result.kind == "wait" and result.notes == {"deferred": "recipient_daily_limit"}
    assert [m["Body"] for m in twilio.messages()] == ["first"]
    stream = DeliveryStream.objects.get(organization=o.org, channel="sms", destination=destination)
    assert stream.next_attempt_at == policy.next_local_midnight(o.member.time_zone, timezone.now())

    # The category turned off: what is deferred is no longer for this phone, and nothing new is texted.
    preference_set(user=o.member, organization=None, channel="sms", category="tracker_event", enabled=False)
    DeliveryStream.objects.filter(pk=stream.pk).update(next_attempt_at=None)
    _notice(o.org, [o.member.pk], "third")
    while stream_deliver(org_id=o.org.id, channel="sms", destination=destination).kind not in ("idle", "wait"):
        pass
    assert [m["Body"] for m in twilio.messages()] == ["first"]
