"""The WhatsApp channel (notifications/channels/whatsapp.py) against a Cloud API-compatible
stand-in on loopback: streams follow the member's phone, text and template messages in seq order,
429 and the pair rate limit pause their scopes, undeliverable numbers are dead letters."""
import copy

import pytest
from django.db import transaction

from config.errors import ApplicationError
from notifications.channels import registry
from notifications.delivery.fence import stream_deliver
from notifications.models import Delivery, DeliveryStream
from notifications.publish import publish
from notifications.ratelimit import Scope, limiter
from tests.support import testkinds
from tests.support.fakewhatsapp import FakeWhatsApp

pytestmark = pytest.mark.django_db

PHONE = "+14155550101"


@pytest.fixture(autouse=True)
def _kind():
    with testkinds.registered():
        yield


@pytest.fixture
def whatsapp(settings):
    settings.DELIVERY_BACKOFF_BASE = 0.0
    settings.DELIVERY_BACKOFF_MAX = 0.0
    with FakeWhatsApp() as fake:
        channels = copy.deepcopy(settings.HERALD_CHANNELS)
        channels["whatsapp"]["OPTIONS"].update({**fake.settings(), "timeout": 1.0, "recipient_per_minute": 600,
                                                "recipient_burst": 10})
        settings.HERALD_CHANNELS = channels
        limiter.start_fresh(["whatsapp"])
        yield fake


@pytest.fixture
def member(auth_client, org_with_members, whatsapp):
    user = org_with_members.member
    assert auth_client(user).patch("/api/v1/me", {"phone": PHONE}, format="json").status_code == 200
    return user


def _notice(org, audience, title="Hello", body="", **payload):
    with transaction.atomic():
        return publish(organization_id=org.id, kind=testkinds.NAME, payload={"title": title, "body": body, **payload},
                       audience=audience)


def _drain(org, user, rounds=30):
    kinds = []
    for _ in range(rounds):
        result = stream_deliver(org_id=org.id, channel="whatsapp", destination=str(user.id))
        kinds.append(result.kind)
        if result.kind in ("idle", "held", "missing"):
            break
        DeliveryStream.objects.filter(organization=org, channel="whatsapp").update(next_attempt_at=None)
    return kinds


def test_text_messages_arrive_in_order_on_the_cloud_api(org_with_members, member, whatsapp):
    org = org_with_members.org
    assert DeliveryStream.objects.get(channel="whatsapp", destination=str(member.id)).active
    _notice(org, [member.id], "One", "first")
    _drain(org, member)
    _notice(org, [member.id], "Two")
    _notice(org, [member.id], "Three")
    _drain(org, member)

    bodies = [m["text"]["body"] for m in whatsapp.messages()]
    assert bodies[0] == "One\nfirst" and bodies[1].splitlines()[1:] == ["• Two", "• Three"]
    first = whatsapp.messages()[0]
    assert (first["messaging_product"], first["to"], first["type"]) == ("whatsapp", PHONE[1:], "text")
    request = whatsapp.requests[0]
    assert request.path == f"/v21.0/{whatsapp.phone_number_id}/messages"
    assert request.headers["authorization"] == f"Bearer {whatsapp.access_token}"
    assert Delivery.objects.filter(channel="whatsapp", provider_ref__startswith="wamid.").count() == 2


def test_an_api_send_with_a_template_part_goes_as_a_template_message(org_with_members, member, whatsapp):
    template = {"name": "order_shipped", "language": {"code": "en_US"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}]}
    _notice(org_with_members.org, [member.id], parts={"en": {"whatsapp": {"template": template}}})
    _drain(org_with_members.org, member)
    [message] = whatsapp.messages()
    assert message["type"] == "template" and message["template"] == template


def test_a_429_pauses_every_recipient_and_the_pair_limit_only_this_one(org_with_members, member, whatsapp):
    org = org_with_members.org
    whatsapp.fail(429, headers={"Retry-After": "5"})
    _notice(org, [member.id], "One")
    result = stream_deliver(org_id=org.id, channel="whatsapp", destination=str(member.id))
    assert result.kind == "wait" and result.wait == 5
    assert not limiter.acquire([Scope("whatsapp.api"), Scope("whatsapp.recipient", "+14155550999")]).allowed

    limiter.client.delete(*limiter.client.keys("herald:rl:{whatsapp}*"))
    limiter.start_fresh(["whatsapp"])
    DeliveryStream.objects.filter(channel="whatsapp").update(next_attempt_at=None)
    whatsapp.fail(400, body={"error": {"message": "Pair rate limit hit", "code": 131056}})
    result = stream_deliver(org_id=org.id, channel="whatsapp", destination=str(member.id))
    assert result.kind == "wait" and result.wait == 6
    assert limiter.acquire([Scope("whatsapp.api"), Scope("whatsapp.recipient", "+14155550999")]).allowed
    assert not limiter.acquire([Scope("whatsapp.api"), Scope("whatsapp.recipient", PHONE)]).allowed
    assert Delivery.objects.get(channel="whatsapp").attempts == 0


def test_5xx_is_retried_and_an_undeliverable_number_is_a_dead_letter(org_with_members, member, whatsapp):
    org = org_with_members.org
    whatsapp.fail(500, 503)
    _notice(org, [member.id], "One")
    _drain(org, member)
    assert Delivery.objects.get(channel="whatsapp").attempts == 3
    whatsapp.undeliverable.add(PHONE[1:])
    _notice(org, [member.id], "Two")
    _drain(org, member)
    dead = Delivery.objects.get(channel="whatsapp", status="dead")
    assert "131026" in dead.last_error
    assert [m["text"]["body"] for m in whatsapp.messages()] == ["One"]


def test_validate_refuses_text_over_4096_characters(whatsapp):
    channel = registry.get("whatsapp")
    channel.validate({"text": "a" * 4096})
    with pytest.raises(ApplicationError) as error:
        channel.validate({"text": "a" * 4097})
    assert error.value.code == "whatsapp_too_long"
