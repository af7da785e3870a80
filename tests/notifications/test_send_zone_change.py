"""A recipient who changes zone before a deliver_at_local send's time gets it at their new local
time (issue 13 #7): PATCH /api/v1/me time_zone moves their scheduled rows and the send's due time in
the same transaction, set-based; beat's dispatcher (sends_dispatch_due) then publishes it when the
new time comes. Sends at an absolute time, other members' rows and rows already out stay."""
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.delivery.fence import stream_deliver
from notifications.models import LogEntry, Notification, Send, SendDelivery
from notifications.send import services
from notifications.send.schedule import local_due_moved
from organizations.services import user_update
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db

# No DST in either: 25 hours apart all year.
WEST, EAST = "Pacific/Pago_Pago", "Pacific/Kiritimati"  # UTC-11, UTC+14


@pytest.fixture
def key_client(org_with_members, api_key_client):
    send_template(org_with_members.org)
    return api_key_client(ApiKeyFactory(organization=org_with_members.org).plaintext)


def _zone(client, zone):
    response = client.patch("/api/v1/me", {"time_zone": zone}, format="json")
    assert response.status_code == 200, response.content
    return response


def _send(client, recipients, **body):
    response = client.post("/api/v1/send", {"recipients": recipients, "kind": "welcome",
                                            "data": {"title": "Standup", "body": "in 5"}, **body}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def _local(at: datetime, zone: str) -> str:
    return at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def _due(send_id, user):
    return SendDelivery.objects.get(send_id=send_id, user=user).due_at


@pytest.mark.django_db(transaction=True)  # the dispatcher's now() is the database's, per statement
def test_moving_east_brings_the_send_forward_and_beat_dispatches_it(org_with_members, key_client, auth_client):
    o = org_with_members
    member = auth_client(o.member)
    _zone(member, WEST)
    now = timezone.now().replace(second=0, microsecond=0)
    # 5 hours from now in the member's (western) zone; the same wall-clock time in the east was 20 hours ago.
    local = _local(now + timedelta(hours=5), WEST)
    send_id = _send(key_client, [o.member.pk], deliver_at_local=local)
    assert _due(send_id, o.member) == now + timedelta(hours=5)
    assert services.sends_dispatch_due() == 0  # not due

    _zone(member, EAST)
    due = _due(send_id, o.member)
    assert due <= timezone.now() and due >= now  # past in the new zone: due at once, not a day later
    send = Send.objects.get(pk=send_id)
    assert send.status == "scheduled" and send.due_at == due
    assert services.sends_dispatch_due() == 1
    assert SendDelivery.objects.get(send_id=send_id).state == "queued"
    stream_deliver(org_id=o.org.id, channel="inapp")
    assert Notification.objects.filter(recipient=o.member, kind="message").count() == 1


def test_moving_west_delays_it_to_the_new_local_time(org_with_members, key_client, auth_client):
    o = org_with_members
    member, admin = auth_client(o.member), auth_client(o.admin)
    _zone(member, "Europe/Paris")
    _zone(admin, "Europe/Paris")
    send_id = _send(key_client, [o.member.pk, o.admin.pk], deliver_at_local="2031-06-02 09:00")
    paris = datetime(2031, 6, 2, 7, 0, tzinfo=UTC)  # 09:00 CEST
    assert Send.objects.get(pk=send_id).due_at == paris

    _zone(member, "America/New_York")
    assert _due(send_id, o.member) == datetime(2031, 6, 2, 13, 0, tzinfo=UTC)  # 09:00 EDT
    assert _due(send_id, o.admin) == paris  # another member's row stays
    assert Send.objects.get(pk=send_id).due_at == paris  # the earliest recipient still sets it

    _zone(admin, "America/Los_Angeles")
    assert _due(send_id, o.admin) == datetime(2031, 6, 2, 16, 0, tzinfo=UTC)
    assert Send.objects.get(pk=send_id).due_at == datetime(2031, 6, 2, 13, 0, tzinfo=UTC)
    assert services.sends_dispatch_due() == 0
    assert not LogEntry.objects.filter(kind="message").exists()


def test_an_undated_local_time_keeps_its_day(org_with_members, key_client, auth_client):
    """"09:00" meant the day it fell on in the old zone: moving keeps that day, not "the next 09:00"."""
    old = datetime(2031, 6, 2, 7, 0, tzinfo=UTC)  # 09:00 in Paris on June 2
    now = datetime(2031, 6, 1, 12, 0, tzinfo=UTC)
    assert local_due_moved("09:00", due=old, old_zone="Europe/Paris", new_zone="Asia/Tokyo", now=now) == \
        datetime(2031, 6, 2, 0, 0, tzinfo=UTC)
    assert local_due_moved("09:00", due=old, old_zone="Europe/Paris", new_zone="Asia/Tokyo",
                           now=datetime(2031, 6, 2, 3, 0, tzinfo=UTC)) == datetime(2031, 6, 2, 3, 0, tzinfo=UTC)
    o = org_with_members
    member = auth_client(o.member)
    _zone(member, "Europe/Paris")
    send_id = _send(key_client, [o.member.pk], deliver_at_local="23:59")
    before = _due(send_id, o.member)
    day = before.astimezone(ZoneInfo("Europe/Paris")).date()
    _zone(member, "America/New_York")
    after = _due(send_id, o.member).astimezone(ZoneInfo("America/New_York"))
    assert after.date() == day and (after.hour, after.minute) == (23, 59)


def test_absolute_sends_and_rows_already_out_do_not_move(org_with_members, key_client, auth_client):
    o = org_with_members
    member = auth_client(o.member)
    _zone(member, "Europe/Paris")
    at = timezone.now().replace(microsecond=0) + timedelta(hours=3)
    absolute = _send(key_client, [o.member.pk], send_at=at.isoformat())
    now_send = _send(key_client, [o.member.pk])
    cancelled = _send(key_client, [o.member.pk], deliver_at_local="2031-06-02 09:00")
    key_client.delete(f"/api/v1/send/{cancelled}")
    _zone(member, "Asia/Tokyo")
    assert _due(absolute, o.member) == at and Send.objects.get(pk=absolute).due_at == at
    assert SendDelivery.objects.get(send_id=now_send).state == "queued"
    row = SendDelivery.objects.get(send_id=cancelled)
    assert row.state == "cancelled" and row.due_at == datetime(2031, 6, 2, 7, 0, tzinfo=UTC)


def test_the_move_is_set_based_and_in_the_profile_transaction(org_with_members, key_client, auth_client):
    o = org_with_members
    member = auth_client(o.member)
    _zone(member, "Europe/Paris")
    sends = [_send(key_client, [o.member.pk, o.admin.pk], deliver_at_local=f"2031-06-0{d} 09:00") for d in range(1, 6)]
    with CaptureQueriesContext(connection) as captured:
        user_update(user=o.member, data={"time_zone": "America/New_York"})
    touching = [q["sql"] for q in captured.captured_queries if "notifications_send" in q["sql"]]
    assert len(touching) == 4, touching  # one read, one lock, rows, sends: whatever the number of sends
    assert [_due(s, o.member).hour for s in sends] == [13] * 5
    # A failed profile update (a bad zone) moves nothing.
    response = member.patch("/api/v1/me", {"time_zone": "Mars/Olympus"}, format="json")
    assert response.status_code == 400
    assert [_due(s, o.member).hour for s in sends] == [13] * 5

