"""The Apprise channel (notifications/channels/apprise.py): destinations API (URL encrypted at
rest, shown masked, admins only, another organization's 404), delivery to a loopback receiver
through a real json:// Apprise URL in seq order, failures retried through Herald's fence (the same
run, nothing overtakes it), the limiter scope and breaker per destination."""
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from notifications.breaker import CircuitBreaker
from notifications.channels import registry
from notifications.delivery.fence import stream_deliver
from notifications.models import ChannelDestination, Delivery, DeliveryStream
from notifications.ratelimit import limiter
from tests.conftest import assert_error
from tests.organizations.factories import OrganizationFactory
from tests.support.fakewebhook import FakeWebhook
from tests.trackers.factories import TrackerEventFactory, TrackerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver(settings):
    settings.DELIVERY_BACKOFF_BASE = 0.0
    settings.DELIVERY_BACKOFF_MAX = 0.0
    with FakeWebhook() as fake:
        fake.apprise_url = fake.url.replace("http://", "json://") + "?+X-Token=s3cret-header"
        limiter.start_fresh(["apprise"])
        yield fake


def _url(org_id, destination_id=None):
    return f"/api/v1/orgs/{org_id}/apprise/" + (f"{destination_id}/" if destination_id else "")


def _create(client, org, url):
    response = client.post(_url(org.id), {"url": url, "description": "ops room"}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def _drain(org, destination_id, rounds=20):
    kinds = []
    for _ in range(rounds):
        result = stream_deliver(org_id=org.id, channel="apprise", destination=str(destination_id))
        kinds.append(result.kind)
        if result.kind in ("idle", "held", "missing"):
            break
        DeliveryStream.objects.filter(organization=org, channel="apprise").update(next_attempt_at=None)
    return kinds


def test_the_url_is_encrypted_at_rest_and_shown_masked(auth_client, org_with_members, receiver):
    org, client = org_with_members.org, auth_client(org_with_members.owner)
    created = _create(client, org, "json://bob:hunter2@127.0.0.1:9/hook")
    assert "hunter2" not in created["url"] and created["url"].startswith("json://bob:")
    row = ChannelDestination.objects.get(pk=created["id"])
    assert "hunter2" not in row.secret_encrypted and "hunter2" not in row.address
    with CaptureQueriesContext(connection) as queries:
        listed = client.get(_url(org.id)).json()
    assert listed["count"] == 1 and "hunter2" not in json.dumps(listed)
    assert len(queries) <= 6


def test_members_cannot_manage_and_other_orgs_see_404(auth_client, org_with_members, receiver):
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.apprise_url)
    assert_error(auth_client(org_with_members.member).get(_url(org.id)), 403, "admin_required")
    stranger = OrganizationFactory()
    owner = auth_client(org_with_members.owner)
    assert owner.get(_url(stranger.id)).status_code == 404
    assert owner.delete(_url(stranger.id, created["id"])).status_code == 404
    assert_error(owner.delete(_url(org.id, created["id"] + 999)), 404, "apprise_destination_not_found")


@pytest.mark.parametrize("url", ["not a url", "nosuchservice://x/y", "json://10.0.0.7/hook", "json://localhost/x",
                                 "form://169.254.169.254/latest"])
def test_bad_apprise_urls_are_refused(auth_client, org_with_members, url):
    body = assert_error(auth_client(org_with_members.owner).post(_url(org_with_members.org.id), {"url": url},
                                                                 format="json"), 400, "invalid_apprise_url")
    assert "url" in body["extra"]["fields"]
    assert not ChannelDestination.objects.exists()


def test_entries_reach_the_receiver_in_order_through_apprise(auth_client, org_with_members, receiver):
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.apprise_url)
    tracker = TrackerFactory(organization=org, name="Deploys")
    first = TrackerEventFactory(tracker=tracker, action="start")
    assert _drain(org, created["id"])[-1] == "idle"
    TrackerEventFactory(tracker=tracker, action="stop")
    TrackerEventFactory(tracker=tracker, action="start")
    _drain(org, created["id"])

    bodies = receiver.bodies()
    assert [b["title"] for b in bodies] == [bodies[0]["title"], f"2 updates (#{first.seq + 1}–#{first.seq + 2})"]
    assert "started Deploys" in bodies[0]["title"]
    assert [line.rsplit("(#", 1)[1] for line in bodies[1]["message"].splitlines()] == [
        f"{first.seq + 1})", f"{first.seq + 2})"]
    assert receiver.requests[0]["headers"]["x-token"] == "s3cret-header"  # the URL's secret travelled
    assert Delivery.objects.filter(channel="apprise", status="sent").count() == 2


def test_a_failing_destination_is_retried_by_the_fence_with_the_same_run(auth_client, org_with_members, receiver):
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.apprise_url)
    tracker = TrackerFactory(organization=org)
    first = TrackerEventFactory(tracker=tracker)
    receiver.answer(500, 503)
    result = stream_deliver(org_id=org.id, channel="apprise", destination=str(created["id"]))
    assert result.kind == "wait"
    TrackerEventFactory(tracker=tracker, action="stop")  # waits behind the failing head
    _drain(org, created["id"])

    bodies = receiver.bodies()
    assert [r["status"] for r in receiver.requests] == [500, 503, 200, 200]
    assert bodies[0] == bodies[1] == bodies[2] and f"(#{first.seq})" not in bodies[3]["title"]
    head = Delivery.objects.get(channel="apprise", first_seq=first.seq)
    assert (head.attempts, head.status, head.last_seq) == (3, "sent", first.seq)


def test_repeated_failures_open_the_destinations_breaker(auth_client, org_with_members, receiver):
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.apprise_url)
    TrackerEventFactory(tracker=TrackerFactory(organization=org))
    receiver.default = (500, {})
    for _ in range(5):
        stream_deliver(org_id=org.id, channel="apprise", destination=str(created["id"]))
        DeliveryStream.objects.filter(channel="apprise").update(next_attempt_at=None)
    assert CircuitBreaker(f"apprise:{created['id']}").state()["state"] == "open"
    before = len(receiver.requests)
    result = stream_deliver(org_id=org.id, channel="apprise", destination=str(created["id"]))
    assert result.kind == "wait" and "breaker" in result.notes["reason"]
    assert len(receiver.requests) == before  # no call while open, no attempt spent
    assert Delivery.objects.get(channel="apprise").attempts == 5


def test_a_deleted_destination_gets_nothing_more(auth_client, org_with_members, receiver):
    org, client = org_with_members.org, auth_client(org_with_members.owner)
    created = _create(client, org, receiver.apprise_url)
    assert client.delete(_url(org.id, created["id"])).status_code == 204
    TrackerEventFactory(tracker=TrackerFactory(organization=org))
    assert _drain(org, created["id"]) == ["idle"]
    assert receiver.requests == []


def test_the_channel_declares_its_scope():
    channel = registry.get("apprise")
    assert channel.external and channel.provider_queue and not getattr(channel, "per_recipient", False)
    assert channel.rate_limits() == {"apprise.destination": {"rate": 1.0, "burst": 5}}
