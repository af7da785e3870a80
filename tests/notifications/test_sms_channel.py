"""The SMS channel (notifications/channels/sms.py) against two Twilio-compatible stand-ins on
loopback: streams follow the member's phone, entries arrive in seq order per phone, failover to
the secondary, 429 pauses the account's scope, permanent errors and bodies over 1,600 characters
are dead letters, an uncertain send is looked up before it is sent again. Real Postgres and Redis;
the fence runs in this process (the stack test is test_sms_stack.py)."""
import copy

import pytest
from django.db import transaction

from config.errors import ApplicationError
from notifications.channels import registry
from notifications.delivery.fence import stream_deliver
from notifications.models import Delivery, DeliveryStream
from notifications.publish import publish
from notifications.ratelimit import Scope, limiter
from organizations.services import membership_create
from tests.conftest import assert_error
from tests.support import testkinds
from tests.support.faketwilio import FakeTwilio

pytestmark = pytest.mark.django_db

ME = "/api/v1/me"


@pytest.fixture(autouse=True)
def _kind():
    with testkinds.registered():
        yield


@pytest.fixture
def twilio(settings):
    settings.DELIVERY_BACKOFF_BASE = 0.0
    settings.DELIVERY_BACKOFF_MAX = 0.0
    with FakeTwilio() as primary, FakeTwilio(account_sid="AC" + "1" * 32, auth_token="second") as secondary:
        channels = copy.deepcopy(settings.HERALD_CHANNELS)
        channels["sms"]["OPTIONS"].update({
            "timeout": 1.0, "recipient_per_minute": 600, "recipient_burst": 10,
            "providers": {"primary": primary.settings("+15005550001"),
                          "secondary": secondary.settings("+15005550002")}})
        settings.HERALD_CHANNELS = channels  # setting_changed resets the registry
        limiter.start_fresh(["sms"])  # a new Redis: the channel's buckets start full
        yield primary, secondary


def _phone(client, number):
    response = client.patch(ME, {"phone": number}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["phone"]


def _notice(org, audience, title="Hello", body="", **payload):
    with transaction.atomic():
        return publish(organization_id=org.id, kind=testkinds.NAME, payload={"title": title, "body": body, **payload},
                       audience=audience)


def _drain(org, user, rounds=30):
    kinds = []
    for _ in range(rounds):
        result = stream_deliver(org_id=org.id, channel="sms", destination=str(user.id))
        kinds.append(result.kind)
        if result.kind in ("idle", "held", "missing"):
            break
        DeliveryStream.objects.filter(organization=org, channel="sms").update(next_attempt_at=None)
    return kinds


def _member_with_phone(auth_client, org_with_members, number="+14155550101"):
    member = org_with_members.member
    _phone(auth_client(member), number)
    member.refresh_from_db()
    return member


# --- streams follow the phone -----------------------------------------------------------------------

def test_a_phone_starts_the_members_sms_streams_and_clearing_it_stops_them(auth_client, org_with_members, twilio):
    org, member = org_with_members.org, org_with_members.member
    client = auth_client(member)
    assert not DeliveryStream.objects.filter(channel="sms").exists()

    assert _phone(client, "+1 (415) 555-0101") == "+14155550101"
    stream = DeliveryStream.objects.get(channel="sms", destination=str(member.id))
    assert stream.organization_id == org.id and stream.active
    assert stream.delivered_seq == org.last_event_seq  # from now on, no replay of history

    _phone(client, "")
    stream.refresh_from_db()
    assert not stream.active


def test_a_member_who_joins_with_a_phone_gets_the_new_organizations_stream(auth_client, org_with_members,
                                                                           other_org, twilio):
    member = _member_with_phone(auth_client, org_with_members)
    membership_create(organization=other_org.org, email=member.email, role="member")
    assert set(DeliveryStream.objects.filter(channel="sms", destination=str(member.id))
               .values_list("organization_id", flat=True)) == {org_with_members.org.id, other_org.org.id}


# --- delivery -------------------------------------------------------------------------------------

def test_entries_arrive_in_seq_order_coalesced_for_the_audience_only(auth_client, org_with_members, twilio):
    primary, secondary = twilio
    org = org_with_members.org
    member = _member_with_phone(auth_client, org_with_members)
    owner = org_with_members.owner
    _phone(auth_client(owner), "+14155550199")
    first = _notice(org, [member.id], "One")
    _notice(org, [owner.id], "For the owner only")
    _notice(org, [member.id, owner.id], "Two")

    kinds = _drain(org, member)
    assert kinds[-1] == "idle", (kinds, DeliveryStream.objects.filter(channel="sms").values())

    [message] = primary.messages()
    assert (message["To"], message["From"]) == ("+14155550101", "+15005550001")
    assert message["Body"].splitlines() == [f"2 updates (#{first.seq}–#{first.seq + 2}):", "• One", "• Two"]
    assert secondary.messages() == []
    head = Delivery.objects.get(channel="sms", stream__destination=str(member.id))
    assert head.status == "sent" and head.provider_ref.startswith("primary:SM")


def test_a_single_entry_reads_as_its_title_and_body(auth_client, org_with_members, twilio):
    primary, _ = twilio
    member = _member_with_phone(auth_client, org_with_members)
    _notice(org_with_members.org, [member.id], "Build failed", "main is red since 10:02")
    _drain(org_with_members.org, member)
    assert primary.messages()[0]["Body"] == "Build failed\nmain is red since 10:02"


def test_an_api_send_renders_its_sms_part(auth_client, org_with_members, twilio):
    primary, _ = twilio
    member = _member_with_phone(auth_client, org_with_members)
    parts = {"fr": {"sms": {"text": "Bonjour"}}, "en": {"sms": {"text": "Your code is 1234"}, "push": {}}}
    _notice(org_with_members.org, [member.id], "unused title", parts=parts)
    _drain(org_with_members.org, member)
    assert primary.messages()[0]["Body"] == "Your code is 1234"


def test_a_primary_outage_fails_over_to_the_secondary_in_order(auth_client, org_with_members, twilio):
    primary, secondary = twilio
    org = org_with_members.org
    member = _member_with_phone(auth_client, org_with_members)
    primary.outage = 503
    _notice(org, [member.id], "One")
    _drain(org, member)
    primary.down()  # refused connections fail over too
    _notice(org, [member.id], "Two")
    _drain(org, member)

    assert [m["Body"] for m in secondary.messages()] == ["One", "Two"]
    assert secondary.messages()[0]["From"] == "+15005550002"
    assert list(Delivery.objects.filter(channel="sms").order_by("first_seq").values_list("status", "attempts")) == [
        ("sent", 1), ("sent", 1)]


def test_both_providers_failing_retries_the_same_run_and_nothing_overtakes_it(auth_client, org_with_members,
                                                                               twilio):
    primary, secondary = twilio
    org = org_with_members.org
    member = _member_with_phone(auth_client, org_with_members)
    primary.fail(500, 500)
    secondary.fail(502, 503)
    first = _notice(org, [member.id], "One")
    result = stream_deliver(org_id=org.id, channel="sms", destination=str(member.id))
    assert result.kind == "wait"
    _notice(org, [member.id], "Two")
    _drain(org, member)

    assert [m["Body"] for m in primary.messages()] == ["One", "Two"]  # the failed head first, on its own
    head = Delivery.objects.get(channel="sms", first_seq=first.seq)
    assert (head.last_seq, head.attempts, head.status) == (first.seq, 3, "sent")


def test_a_429_pauses_the_account_scope_without_spending_an_attempt(auth_client, org_with_members, twilio):
    primary, secondary = twilio
    org = org_with_members.org
    member = _member_with_phone(auth_client, org_with_members)
    primary.fail(429, headers={"Retry-After": "7"})
    _notice(org, [member.id], "One")

    result = stream_deliver(org_id=org.id, channel="sms", destination=str(member.id))

    assert result.kind == "wait" and result.wait == 7
    head = Delivery.objects.get(channel="sms")
    assert (head.attempts, head.status) == (0, "pending")
    assert secondary.requests == []  # a 429 is our pace, not an outage: no failover
    decision = limiter.acquire([Scope("sms.api"), Scope("sms.recipient", "+14155550999")])
    assert not decision.allowed and decision.wait > 6  # every other recipient waits as well


def test_an_invalid_number_is_a_dead_letter_and_the_stream_moves_on(auth_client, org_with_members, twilio):
    primary, _ = twilio
    org = org_with_members.org
    member = _member_with_phone(auth_client, org_with_members)
    primary.unreachable.add("+14155550101")
    _notice(org, [member.id], "One")
    _drain(org, member)
    primary.unreachable.clear()
    _notice(org, [member.id], "Two")
    _drain(org, member)

    dead = Delivery.objects.get(channel="sms", status="dead")
    assert "21211" in dead.last_error
    assert [m["Body"] for m in primary.messages()] == ["Two"]


def test_a_body_over_1600_characters_is_refused_before_any_call(auth_client, org_with_members, twilio):
    primary, _ = twilio
    member = _member_with_phone(auth_client, org_with_members)
    _notice(org_with_members.org, [member.id], "x" * 1601)
    _drain(org_with_members.org, member)
    assert primary.requests == []
    assert "1601 characters" in Delivery.objects.get(channel="sms", status="dead").last_error

    channel = registry.get("sms")
    channel.validate({"text": "y" * 1600})
    with pytest.raises(ApplicationError) as error:
        channel.validate({"text": "y" * 1601})
    assert error.value.code == "sms_too_long" and error.value.extra["length"] == 1601


def test_a_long_backlog_fits_one_sms_and_says_what_it_left_out(auth_client, org_with_members, twilio):
    primary, _ = twilio
    member = _member_with_phone(auth_client, org_with_members)
    entries = [_notice(org_with_members.org, [member.id], f"Update {i} " + "z" * 300) for i in range(10)]
    _drain(org_with_members.org, member)
    [message] = primary.messages()
    assert len(message["Body"]) <= 1600
    assert message["Body"].splitlines()[-1].startswith("… and ")
    assert message["Body"].endswith(f"#{entries[-1].seq})")


def test_a_timed_out_send_is_looked_up_and_not_sent_twice(auth_client, org_with_members, twilio):
    primary, secondary = twilio
    org = org_with_members.org
    member = _member_with_phone(auth_client, org_with_members)
    primary.slow_seconds = 1.5  # past the 1 s timeout: the provider queued it, we did not hear
    _notice(org, [member.id], "One")
    result = stream_deliver(org_id=org.id, channel="sms", destination=str(member.id))
    assert result.kind == "wait"
    primary.slow_seconds = 0
    assert Delivery.objects.get(channel="sms").verify_first
    _drain(org, member)

    assert [m["Body"] for m in primary.messages()] == ["One"]  # once
    assert [r.method for r in primary.requests] == ["POST", "GET"]
    assert secondary.requests == []  # no failover after the request went out
    assert Delivery.objects.get(channel="sms").status == "sent"


def test_a_member_without_a_phone_or_who_left_gets_nothing(auth_client, org_with_members, twilio):
    primary, _ = twilio
    org = org_with_members.org
    member = _member_with_phone(auth_client, org_with_members)
    member.phone = ""
    member.save(update_fields=["phone"])  # changed behind the service's back: the fence notices
    _notice(org, [member.id], "One")
    assert _drain(org, member) == ["idle"]
    assert not DeliveryStream.objects.get(channel="sms").active
    assert primary.requests == []


def test_the_channel_declares_its_limits_and_checks_its_providers(twilio, settings):
    channel = registry.get("sms")
    assert channel.external and channel.provider_queue and channel.per_recipient
    assert set(channel.rate_limits()) == {"sms.api", "sms.recipient"}
    assert channel.check() == []
    channels = copy.deepcopy(settings.HERALD_CHANNELS)
    channels["sms"]["OPTIONS"]["providers"]["secondary"]["from"] = ""
    settings.HERALD_CHANNELS = channels
    assert [e.id for e in registry.get("sms").check()] == ["herald.E030"]


def test_me_patch_phone_of_bad_shape_is_400_and_starts_nothing(auth_client, org_with_members, twilio):
    response = auth_client(org_with_members.member).patch(ME, {"phone": "415-555-0101"}, format="json")
    assert_error(response, 400, "validation_error")
    assert not DeliveryStream.objects.filter(channel="sms").exists()
