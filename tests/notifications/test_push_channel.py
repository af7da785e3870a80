"""The push channel (notifications/channels/push.py): device registration API, a stream per
device in each of the member's organizations, FCM v1 messages in seq order, unregistered tokens
pruned on the provider's answer, 429 and 5xx. Real Postgres and Redis, an FCM-compatible stand-in
on loopback; the fence runs in this process."""
import copy

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from config.errors import ApplicationError
from notifications.channels import registry
from notifications.delivery.fence import stream_deliver
from notifications.models import Delivery, DeliveryStream, Device
from notifications.publish import publish
from notifications.ratelimit import limiter
from organizations.services import api_key_create, membership_create
from tests.conftest import assert_error
from tests.support import testkinds
from tests.support.fakefcm import FakeFCM

pytestmark = pytest.mark.django_db

DEVICES = "/api/v1/me/devices"
TOKEN = "fcm-token-" + "a" * 140


@pytest.fixture(autouse=True)
def _kind():
    with testkinds.registered():
        yield


@pytest.fixture
def fcm(settings):
    settings.DELIVERY_BACKOFF_BASE = 0.0
    settings.DELIVERY_BACKOFF_MAX = 0.0
    with FakeFCM() as fake:
        channels = copy.deepcopy(settings.HERALD_CHANNELS)
        channels["push"]["OPTIONS"].update({**fake.settings(), "timeout": 1.0})
        settings.HERALD_CHANNELS = channels
        limiter.start_fresh(["push"])
        yield fake


def _register(client, token=TOKEN, platform="android", status=201):
    response = client.post(DEVICES, {"token": token, "platform": platform, "name": "Pixel"}, format="json")
    assert response.status_code == status, response.content
    return response.json()


def _notice(org, audience, title="Hello", body="", **payload):
    with transaction.atomic():
        return publish(organization_id=org.id, kind=testkinds.NAME, payload={"title": title, "body": body, **payload},
                       audience=audience)


def _drain(org, device_id, rounds=30):
    kinds = []
    for _ in range(rounds):
        result = stream_deliver(org_id=org.id, channel="push", destination=str(device_id))
        kinds.append(result.kind)
        if result.kind in ("idle", "held", "missing"):
            break
        DeliveryStream.objects.filter(organization=org, channel="push").update(next_attempt_at=None)
    return kinds


# --- devices API ---------------------------------------------------------------------------------

def test_register_list_and_delete_a_device(auth_client, org_with_members, other_org, fcm):
    member = org_with_members.member
    membership_create(organization=other_org.org, email=member.email, role="member")
    client = auth_client(member)
    device = _register(client)
    assert device["platform"] == "android" and device["token_hint"] == TOKEN[-6:] and "token" not in device
    assert set(DeliveryStream.objects.filter(channel="push", destination=str(device["id"]), active=True)
               .values_list("organization_id", flat=True)) == {org_with_members.org.id, other_org.org.id}
    _register(client, token=TOKEN[:-1] + "b", platform="ios")

    with CaptureQueriesContext(connection) as queries:
        listed = client.get(DEVICES).json()
    assert listed["count"] == 2 and [d["platform"] for d in listed["results"]] == ["android", "ios"]
    assert len(queries) <= 5

    assert client.delete(f"{DEVICES}/{device['id']}").status_code == 204
    assert not DeliveryStream.objects.filter(channel="push", destination=str(device["id"]), active=True).exists()
    assert client.get(DEVICES).json()["count"] == 1


def test_registering_again_refreshes_the_same_device(auth_client, org_with_members, fcm):
    client = auth_client(org_with_members.member)
    first = _register(client)
    again = _register(client, platform="web", status=200)
    assert again["id"] == first["id"] and again["platform"] == "web"
    assert again["last_seen_at"] >= first["last_seen_at"]
    assert Device.objects.count() == 1


def test_another_users_token_is_409_and_their_device_is_404(auth_client, org_with_members, fcm):
    owner_client, member_client = auth_client(org_with_members.owner), auth_client(org_with_members.member)
    device = _register(owner_client)
    assert_error(member_client.post(DEVICES, {"token": TOKEN, "platform": "ios"}, format="json"), 409,
                 "device_token_taken")
    assert_error(member_client.delete(f"{DEVICES}/{device['id']}"), 404, "device_not_found")
    assert member_client.get(DEVICES).json()["count"] == 0
    assert Device.objects.get().user == org_with_members.owner


@pytest.mark.parametrize("body", [
    {"token": "short", "platform": "android"},
    {"token": "has spaces in it and is long enough", "platform": "android"},
    {"token": "x" * 513, "platform": "android"},
    {"token": TOKEN, "platform": "blackberry"},
    {"token": TOKEN},
    {"token": TOKEN, "platform": "android", "user": 1},
])
def test_bad_device_input_is_400(auth_client, org_with_members, fcm, body):
    assert_error(auth_client(org_with_members.member).post(DEVICES, body, format="json"), 400, "validation_error")
    assert not Device.objects.exists()


def test_an_org_api_key_cannot_register_devices(api_key_client, org_with_members, fcm):
    _, key = api_key_create(organization=org_with_members.org, name="ci", created_by=org_with_members.owner)
    assert_error(api_key_client(key).post(DEVICES, {"token": TOKEN, "platform": "android"}, format="json"), 403,
                 "user_required")


def test_too_many_devices_is_refused(auth_client, org_with_members, fcm, settings):
    channels = copy.deepcopy(settings.HERALD_CHANNELS)
    channels["push"]["OPTIONS"]["max_devices_per_user"] = 1
    settings.HERALD_CHANNELS = channels
    client = auth_client(org_with_members.member)
    _register(client)
    assert_error(client.post(DEVICES, {"token": TOKEN + "2", "platform": "ios"}, format="json"), 400,
                 "too_many_devices")


# --- delivery --------------------------------------------------------------------------------------

def test_entries_reach_each_device_in_order_as_fcm_v1_messages(auth_client, org_with_members, fcm):
    org, member = org_with_members.org, org_with_members.member
    client = auth_client(member)
    phone, tablet = _register(client)["id"], _register(client, token=TOKEN + "t", platform="ios")["id"]
    first = _notice(org, [member.id], "Build failed", "main is red")
    _drain(org, phone)
    _notice(org, [member.id], "Build fixed")
    _notice(org, [member.id], "Deployed")
    _drain(org, phone)
    _drain(org, tablet)

    to_phone = [m for m in fcm.messages() if m["token"] == TOKEN]
    assert [m["notification"] for m in to_phone] == [
        {"title": "Build failed", "body": "main is red"},
        {"title": "2 updates", "body": "Build fixed\nDeployed"}]
    assert to_phone[0]["data"]["first_seq"] == str(first.seq) and to_phone[0]["data"]["kind"] == testkinds.NAME
    assert to_phone[0]["android"]["collapse_key"] == f"herald-{to_phone[0]['data']['delivery_id']}"
    [to_tablet] = [m for m in fcm.messages() if m["token"] == TOKEN + "t"]
    assert to_tablet["data"]["first_seq"] == str(first.seq) and to_tablet["data"]["last_seq"] == str(first.seq + 2)
    assert fcm.requests[0].headers["authorization"] == f"Bearer {fcm.access_token}"
    assert fcm.requests[0].path == f"/v1/projects/{fcm.project_id}/messages:send"


def test_an_api_send_renders_its_push_part_and_data(auth_client, org_with_members, fcm):
    org, member = org_with_members.org, org_with_members.member
    device = _register(auth_client(member))["id"]
    parts = {"en": {"push": {"title": "Your order", "body": "has shipped", "data": {"order": 42}}}}
    _notice(org, [member.id], parts=parts)
    _drain(org, device)
    [message] = fcm.messages()
    assert message["notification"] == {"title": "Your order", "body": "has shipped"}
    assert message["data"]["order"] == "42"  # FCM data values are strings


def test_an_unregistered_token_is_pruned_on_the_providers_answer(auth_client, org_with_members, other_org, fcm):
    org, member = org_with_members.org, org_with_members.member
    membership_create(organization=other_org.org, email=member.email, role="member")
    device = _register(auth_client(member))["id"]
    fcm.unregistered.add(TOKEN)
    _notice(org, [member.id], "One")
    _drain(org, device)

    assert not Device.objects.filter(pk=device).exists()
    dead = Delivery.objects.get(channel="push", status="dead")
    assert "UNREGISTERED" in dead.last_error and "pruned" in dead.last_error
    _notice(other_org.org, [member.id], "Two")  # the other organization's stream stops on its next step
    assert _drain(other_org.org, device) == ["idle"]
    assert not DeliveryStream.objects.get(organization=other_org.org, channel="push", destination=str(device)).active
    assert len(fcm.requests) == 1


def test_a_404_not_found_prunes_too(auth_client, org_with_members, fcm):
    org, member = org_with_members.org, org_with_members.member
    device = _register(auth_client(member))["id"]
    fcm.fail(404, body={"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}})
    _notice(org, [member.id], "One")
    _drain(org, device)
    assert not Device.objects.exists()


def test_429_pauses_and_5xx_retries_the_same_run(auth_client, org_with_members, fcm):
    org, member = org_with_members.org, org_with_members.member
    device = _register(auth_client(member))["id"]
    fcm.fail(429, headers={"Retry-After": "9"})
    _notice(org, [member.id], "One")
    result = stream_deliver(org_id=org.id, channel="push", destination=str(device))
    assert result.kind == "wait" and result.wait == 9
    assert Delivery.objects.get(channel="push").attempts == 0

    limiter.client.delete(*limiter.client.keys("herald:rl:{push}*"))  # end the pause
    limiter.start_fresh(["push"])  # after the delete: it writes the epoch marker the delete would remove
    fcm.fail(503, 500)
    _drain(org, device)
    bodies = [r.json()["message"]["data"]["delivery_id"] for r in fcm.requests]
    assert len(bodies) == 4 and len(set(bodies)) == 1  # the same run each time
    assert [r.status for r in fcm.requests] == [429, 503, 500, 200]
    assert Delivery.objects.get(channel="push").status == "sent"


def test_an_invalid_argument_is_a_dead_letter_but_keeps_the_device(auth_client, org_with_members, fcm):
    org, member = org_with_members.org, org_with_members.member
    device = _register(auth_client(member))["id"]
    fcm.fail(400)
    _notice(org, [member.id], "One")
    _drain(org, device)
    assert Delivery.objects.get(channel="push").status == "dead"
    assert Device.objects.filter(pk=device).exists()


def test_validate_refuses_a_push_part_over_4kb(fcm):
    channel = registry.get("push")
    channel.validate({"title": "t", "body": "b" * 100})
    with pytest.raises(ApplicationError) as error:
        channel.validate({"title": "t", "body": "b" * 4100})
    assert error.value.code == "push_too_large"
