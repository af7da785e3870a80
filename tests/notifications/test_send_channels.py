"""The send API on the per-recipient provider channels (issue 13 #4, #9): a send with channels
[sms, push, whatsapp] reaches the Twilio-, FCM- and WhatsApp-compatible stand-ins on loopback and
its status rows go queued -> sent; a member without a phone or a device is `suppressed` with the
reason; a member's every device gets the push; a cancelled row is not sent; an SMS part over
1,600 characters is refused at acceptance. Real Postgres and Redis; the fence runs in this process
(the stack test with Daphne, workers and provider callbacks is test_send_callbacks_stack.py)."""
import copy

import pytest

from notifications.delivery.fence import stream_deliver
from notifications.models import DeliveryStream, Device, LogEntry, Send, SendDelivery
from notifications.ratelimit import limiter
from notifications.templating import template_create
from tests.conftest import assert_error
from tests.organizations.factories import ApiKeyFactory
from tests.support.fakefcm import FakeFCM
from tests.support.faketwilio import FakeTwilio
from tests.support.fakewhatsapp import FakeWhatsApp

pytestmark = pytest.mark.django_db

PHONE = "+14155550101"
CHANNELS = ["sms", "push", "whatsapp"]


@pytest.fixture
def providers(settings):
    """Twilio, FCM and WhatsApp stand-ins, the channels configured for them (no backoff)."""
    settings.DELIVERY_BACKOFF_BASE = 0.0
    settings.DELIVERY_BACKOFF_MAX = 0.0
    with FakeTwilio() as twilio, FakeFCM() as fcm, FakeWhatsApp() as whatsapp:
        channels = copy.deepcopy(settings.HERALD_CHANNELS)
        channels["sms"]["OPTIONS"].update({"timeout": 1.0, "recipient_per_minute": 600, "recipient_burst": 10,
                                           "providers": {"primary": twilio.settings("+15005550001")}})
        channels["push"]["OPTIONS"].update({**fcm.settings(), "timeout": 1.0})
        channels["whatsapp"]["OPTIONS"].update({**whatsapp.settings(), "timeout": 1.0,
                                                "recipient_per_minute": 600, "recipient_burst": 10})
        settings.HERALD_CHANNELS = channels  # setting_changed resets the registry
        limiter.start_fresh(CHANNELS)
        yield twilio, fcm, whatsapp


def message_template(organization, kind: str = "alert", sms_text: str = "{{ title }}: {{ body }}"):
    return template_create(organization=organization, kind=kind, locale="en", category="transactional",
                           variables=["title", "body"],
                           parts={"inapp": {"title": "{{ title }}", "body": "{{ body }}"},
                                  "sms": {"text": sms_text},
                                  "push": {"title": "{{ title }}", "body": "{{ body }}", "data": {"screen": "alerts"}},
                                  "whatsapp": {"text": "*{{ title }}* {{ body }}"}})


@pytest.fixture
def key_client(org_with_members, api_key_client):
    message_template(org_with_members.org)
    return api_key_client(ApiKeyFactory(organization=org_with_members.org).plaintext)


def _send(client, recipients, channels=CHANNELS, **extra):
    return client.post("/api/v1/send", {"recipients": recipients, "kind": "alert", "channels": list(channels),
                                        "data": {"title": "Disk full", "body": "node 7"}, **extra}, format="json")


def _drain(org, channel, destination, rounds=30):
    for _ in range(rounds):
        result = stream_deliver(org_id=org.id, channel=channel, destination=str(destination))
        if result.kind in ("idle", "held", "missing"):
            return result
        DeliveryStream.objects.filter(organization=org, channel=channel).update(next_attempt_at=None)
    raise AssertionError(f"{channel}/{destination} never went idle")


def _rows(send_id):
    return {(r.user_id, r.channel): r for r in SendDelivery.objects.filter(send_id=send_id)}


def _with_phone_and_devices(auth_client, user, devices=1):
    client = auth_client(user)
    assert client.patch("/api/v1/me", {"phone": PHONE}, format="json").status_code == 200
    ids = []
    for n in range(devices):
        response = client.post("/api/v1/me/devices", {"token": f"fcm-token-{n}-" + "x" * 40, "platform": "android"},
                               format="json")
        assert response.status_code == 201, response.content
        ids.append(response.json()["id"])
    return ids


def test_a_send_reaches_sms_push_and_whatsapp_and_its_rows_are_sent(providers, org_with_members, key_client,
                                                                    auth_client):
    twilio, fcm, whatsapp = providers
    o = org_with_members
    (device,) = _with_phone_and_devices(auth_client, o.member)
    response = _send(key_client, [o.member.pk])
    assert response.status_code == 202, response.content
    send_id = response.json()["id"]
    rows = _rows(send_id)
    assert {k: r.state for k, r in rows.items()} == {(o.member.pk, c): "queued" for c in CHANNELS}

    _drain(o.org, "sms", o.member.pk)
    _drain(o.org, "push", device)
    _drain(o.org, "whatsapp", o.member.pk)

    (sms,) = twilio.messages()
    assert sms["To"] == PHONE and sms["Body"] == "Disk full: node 7"
    (push,) = fcm.messages()
    assert push["notification"] == {"title": "Disk full", "body": "node 7"} and push["data"]["screen"] == "alerts"
    (wa,) = whatsapp.messages()
    assert wa["to"] == PHONE.lstrip("+") and wa["text"]["body"] == "*Disk full* node 7"
    rows = _rows(send_id)
    assert {k: r.state for k, r in rows.items()} == {(o.member.pk, c): "sent" for c in CHANNELS}
    assert all(r.sent_at is not None and r.error == "" for r in rows.values())
    counts = key_client.get(f"/api/v1/send/{send_id}").json()["counts"]
    assert counts == {c: {"sent": 1} for c in CHANNELS}
    # Nothing more goes out: the streams are past the entry.
    _drain(o.org, "sms", o.member.pk)
    assert len(twilio.messages()) == 1


def test_a_member_without_a_phone_or_a_device_is_suppressed_with_the_reason(providers, org_with_members, key_client,
                                                                            auth_client):
    twilio, fcm, whatsapp = providers
    o = org_with_members
    _with_phone_and_devices(auth_client, o.member, devices=0)  # a phone, no device
    response = _send(key_client, [o.member.pk, o.admin.pk])
    assert response.status_code == 202, response.content
    rows = _rows(response.json()["id"])
    assert rows[(o.member.pk, "sms")].state == "queued" and rows[(o.member.pk, "whatsapp")].state == "queued"
    assert rows[(o.member.pk, "push")].state == "suppressed"
    assert "no registered device" in rows[(o.member.pk, "push")].error
    for channel in CHANNELS:
        assert rows[(o.admin.pk, channel)].state == "suppressed"
    assert "no phone number" in rows[(o.admin.pk, "sms")].error
    assert "no phone number" in rows[(o.admin.pk, "whatsapp")].error
    assert _drain(o.org, "sms", o.admin.pk).kind == "missing"
    _drain(o.org, "sms", o.member.pk)
    assert [m["To"] for m in twilio.messages()] == [PHONE]


def test_an_unconfigured_channel_suppresses_with_that_reason(org_with_members, key_client, auth_client, settings):
    o = org_with_members
    channels = copy.deepcopy(settings.HERALD_CHANNELS)
    channels["sms"]["OPTIONS"]["providers"] = {}
    settings.HERALD_CHANNELS = channels
    assert auth_client(o.member).patch("/api/v1/me", {"phone": PHONE}, format="json").status_code == 200
    response = _send(key_client, [o.member.pk], channels=["sms"])
    assert response.status_code == 202
    (row,) = _rows(response.json()["id"]).values()
    assert row.state == "suppressed" and "not configured" in row.error


def test_every_device_of_a_member_gets_the_push_and_the_row_stays_sent(providers, org_with_members, key_client,
                                                                       auth_client):
    _, fcm, _ = providers
    o = org_with_members
    first, second = _with_phone_and_devices(auth_client, o.member, devices=2)
    send_id = _send(key_client, [o.member.pk], channels=["push"]).json()["id"]
    _drain(o.org, "push", first)
    assert SendDelivery.objects.get(send_id=send_id).state == "sent"
    _drain(o.org, "push", second)
    tokens = sorted(m["token"] for m in fcm.messages())
    assert tokens == sorted(Device.objects.filter(user=o.member).values_list("token", flat=True))
    assert SendDelivery.objects.get(send_id=send_id).state == "sent"


def test_a_cancelled_sms_is_not_sent(providers, org_with_members, key_client, auth_client):
    twilio, _, _ = providers
    o = org_with_members
    _with_phone_and_devices(auth_client, o.member, devices=0)
    send_id = _send(key_client, [o.member.pk], channels=["sms"]).json()["id"]
    assert key_client.delete(f"/api/v1/send/{send_id}").status_code == 200
    _drain(o.org, "sms", o.member.pk)
    assert twilio.messages() == []
    assert SendDelivery.objects.get(send_id=send_id).state == "cancelled"


def test_an_sms_part_over_1600_characters_is_refused_and_nothing_is_written(providers, org_with_members,
                                                                            api_key_client, auth_client):
    o = org_with_members
    message_template(o.org, kind="long", sms_text="{{ body }}")
    client = api_key_client(ApiKeyFactory(organization=o.org).plaintext)
    entries = LogEntry.objects.count()
    response = client.post("/api/v1/send", {"recipients": [o.member.pk], "kind": "long", "channels": ["sms"],
                                            "data": {"title": "t", "body": "x" * 1601}}, format="json")
    assert_error(response, 400, "sms_too_long")
    assert response.json()["extra"]["length"] == 1601
    assert not Send.objects.exists() and not SendDelivery.objects.exists() and LogEntry.objects.count() == entries
    # The in-app part of the same send is not an SMS: 1,601 characters there are fine.
    ok = client.post("/api/v1/send", {"recipients": [o.member.pk], "kind": "long", "channels": ["inapp"],
                                      "data": {"title": "t", "body": "x" * 1601}}, format="json")
    assert ok.status_code == 202, ok.content


def test_streams_carry_their_member_for_the_fan_out(providers, org_with_members, auth_client):
    o = org_with_members
    (device,) = _with_phone_and_devices(auth_client, o.member)
    users = dict(DeliveryStream.objects.filter(organization=o.org, channel__in=CHANNELS)
                 .values_list("channel", "user_id"))
    assert users == {"sms": o.member.pk, "whatsapp": o.member.pk, "push": o.member.pk}
    assert DeliveryStream.objects.get(organization=o.org, channel="push").destination == str(device)
    assert DeliveryStream.objects.get(organization=o.org, channel="inapp").user_id is None


def test_members_who_set_a_phone_before_sms_was_configured_are_reached_after_a_resync(providers, org_with_members,
                                                                                     key_client, auth_client,
                                                                                     settings):
    """Streams follow profile changes: a phone set while SMS had no credentials made no stream, and
    a transactional SMS was then suppressed ("no phone number") although the member has one.
    `manage.py sync_member_streams` makes the streams; the next send is sent."""
    from django.core.management import call_command  # noqa: PLC0415

    twilio, _, _ = providers
    o = org_with_members
    configured = settings.HERALD_CHANNELS
    unconfigured = copy.deepcopy(configured)
    unconfigured["sms"]["OPTIONS"]["providers"] = {}
    settings.HERALD_CHANNELS = unconfigured
    assert auth_client(o.member).patch("/api/v1/me", {"phone": PHONE}, format="json").status_code == 200
    settings.HERALD_CHANNELS = configured
    before = _send(key_client, [o.member.pk], channels=["sms"]).json()["id"]
    (row,) = _rows(before).values()
    assert row.state == "suppressed"
    call_command("sync_member_streams")
    after = _send(key_client, [o.member.pk], channels=["sms"]).json()["id"]
    _drain(o.org, "sms", o.member.pk)
    (row,) = _rows(after).values()
    assert row.state == "sent"
    assert [m["To"] for m in twilio.messages()] == [PHONE]
