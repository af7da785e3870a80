"""The webhook channel (notifications/channels/webhook.py): endpoints API, signed ordered delivery
per endpoint, retries, 429, dead letters, removal. Real Postgres and Redis, a receiver on loopback."""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from notifications.channels import base as channels_base
from notifications.channels import registry
from notifications.channels.webhook import verify_signature
from notifications.delivery.fence import stream_deliver
from notifications.models import ChannelDestination, Delivery, DeliveryStream
from tests.organizations.factories import OrganizationFactory
from tests.support.fakewebhook import FakeWebhook
from tests.trackers.factories import TrackerEventFactory, TrackerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver(settings):
    settings.DELIVERY_BACKOFF_BASE = 0.0
    settings.DELIVERY_BACKOFF_MAX = 0.0
    with FakeWebhook() as fake:
        yield fake


def _url(org_id, webhook_id=None):
    base = f"/api/v1/orgs/{org_id}/webhooks/"
    return base + (f"{webhook_id}/" if webhook_id else "")


def _create(client, org, url):
    response = client.post(_url(org.id), {"url": url, "description": "ops"}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def _drain(org, webhook_id, rounds=20):
    kinds = []
    for _ in range(rounds):
        result = stream_deliver(org_id=org.id, channel="webhook", destination=str(webhook_id))
        kinds.append(result.kind)
        if result.kind in ("idle", "held", "missing"):
            break
        DeliveryStream.objects.filter(organization=org, channel="webhook").update(next_attempt_at=None)
    return kinds


# --- API ---------------------------------------------------------------------------------------

def test_create_shows_the_secret_once_and_lists_without_it(auth_client, org_with_members, receiver):
    org, client = org_with_members.org, auth_client(org_with_members.owner)
    created = _create(client, org, receiver.url)
    assert created["secret"].startswith("whsec_") and created["url"] == receiver.url
    row = ChannelDestination.objects.get(pk=created["id"])
    assert created["secret"] not in row.secret_encrypted  # encrypted at rest

    with CaptureQueriesContext(connection) as queries:
        listed = client.get(_url(org.id)).json()
    assert listed["count"] == 1 and "secret" not in listed["results"][0]
    assert len(queries) <= 6


def test_members_cannot_manage_and_other_orgs_see_404(auth_client, org_with_members, receiver):
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.url)
    member = auth_client(org_with_members.member)
    assert member.get(_url(org.id)).json()["code"] == "admin_required"
    stranger_org = OrganizationFactory()
    assert auth_client(org_with_members.owner).get(_url(stranger_org.id)).status_code == 404
    assert auth_client(org_with_members.owner).delete(_url(stranger_org.id, created["id"])).status_code == 404


@pytest.mark.parametrize("url, why", [
    ("http://example.com/hook", "https"), ("https://10.0.0.7/hook", "public"), ("https://localhost/x", "public"),
    ("https://169.254.169.254/latest", "public"), ("not a url", "valid URL"),
])
def test_bad_endpoint_urls_are_refused(auth_client, org_with_members, url, why):
    response = auth_client(org_with_members.owner).post(_url(org_with_members.org.id), {"url": url}, format="json")
    assert response.status_code == 400
    assert why in str(response.json())
    assert not ChannelDestination.objects.exists()


def test_unknown_fields_are_refused(auth_client, org_with_members, receiver):
    response = auth_client(org_with_members.owner).post(
        _url(org_with_members.org.id), {"url": receiver.url, "events": ["*"]}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "validation_error"


# --- delivery ----------------------------------------------------------------------------------

def test_entries_arrive_signed_in_order_and_coalesced(auth_client, org_with_members, receiver):
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.url)
    tracker = TrackerFactory(organization=org)
    entries = [TrackerEventFactory(tracker=tracker, action=a) for a in ["start", "stop", "start"]]

    assert _drain(org, created["id"])[-1] == "idle"

    [request] = receiver.requests
    assert verify_signature(created["secret"], request["body"], request["headers"]["herald-signature"])
    assert not verify_signature("whsec_wrong", request["body"], request["headers"]["herald-signature"])
    body = receiver.bodies()[0]
    assert [e["seq"] for e in body["entries"]] == [e.seq for e in entries]
    assert (body["first_seq"], body["last_seq"], body["org_id"]) == (entries[0].seq, entries[-1].seq, org.id)
    assert request["headers"]["herald-delivery"] == str(body["delivery_id"])


def test_a_failing_endpoint_is_retried_with_the_same_run_and_nothing_overtakes_it(
        auth_client, org_with_members, receiver, settings):
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.url)
    tracker = TrackerFactory(organization=org)
    first = TrackerEventFactory(tracker=tracker)
    receiver.answer(500, 503)
    stream_deliver(org_id=org.id, channel="webhook", destination=str(created["id"]))
    TrackerEventFactory(tracker=tracker, action="stop")  # arrives while the head fails: waits behind it
    _drain(org, created["id"])

    bodies = receiver.bodies()
    assert [(b["first_seq"], b["last_seq"]) for b in bodies] == [(first.seq, first.seq)] * 3 + [(2, 2)]
    assert len({b["delivery_id"] for b in bodies[:3]}) == 1  # one delivery id: receivers can dedupe
    assert [r["status"] for r in receiver.requests] == [500, 503, 200, 200]


def test_429_waits_for_retry_after_without_spending_an_attempt(auth_client, org_with_members, receiver):
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.url)
    TrackerEventFactory(tracker=TrackerFactory(organization=org))
    receiver.answer(429, headers={"Retry-After": "7"})

    result = stream_deliver(org_id=org.id, channel="webhook", destination=str(created["id"]))

    assert result.kind == "wait" and result.wait == 7
    head = Delivery.objects.get(channel="webhook")
    assert head.attempts == 0 and head.status == "pending"


def test_a_4xx_is_a_dead_letter_and_the_stream_moves_on(auth_client, org_with_members, receiver):
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.url)
    tracker = TrackerFactory(organization=org)
    TrackerEventFactory(tracker=tracker)
    receiver.answer(400)
    _drain(org, created["id"])
    TrackerEventFactory(tracker=tracker, action="stop")
    _drain(org, created["id"])

    dead = Delivery.objects.get(channel="webhook", status="dead")
    assert "webhook 400" in dead.last_error
    assert [b["first_seq"] for b in receiver.bodies()] == [1, 2]


def test_a_deleted_endpoint_gets_nothing_more(auth_client, org_with_members, receiver):
    org, client = org_with_members.org, auth_client(org_with_members.owner)
    created = _create(client, org, receiver.url)
    assert client.delete(_url(org.id, created["id"])).status_code == 204
    assert client.delete(_url(org.id, created["id"])).json()["code"] == "webhook_not_found"
    TrackerEventFactory(tracker=TrackerFactory(organization=org))

    assert _drain(org, created["id"]) == ["idle"]
    assert receiver.requests == []
    assert not DeliveryStream.objects.get(channel="webhook").active


def test_the_channel_declares_its_routing_and_limiter_scope():
    channel = registry.get("webhook")
    assert channel.provider_queue and channel.external
    assert channel.rate_limits() == {"webhook.endpoint": {"rate": 10.0, "burst": 10}}


def test_calls_share_one_http_client_per_process(monkeypatch):
    """`httpx.request` builds a Client per call, and each Client a new SSL context from the CA bundle
    (~38 ms of CPU): providers and webhooks share one client (TLS context and kept connections) per
    process, and a forked worker child gets its own."""
    monkeypatch.setattr(channels_base, "_CLIENTS", dict(channels_base._CLIENTS))  # the fake process's client stays here
    first = channels_base.http_client()
    built = []
    monkeypatch.setattr(channels_base.httpx, "Client", lambda **kw: built.append(kw) or object())

    assert channels_base.http_client() is first and built == []
    monkeypatch.setattr(channels_base.os, "getpid", lambda: -1)  # another process
    child = channels_base.http_client()
    assert child is not first and built == [{"follow_redirects": False}]
