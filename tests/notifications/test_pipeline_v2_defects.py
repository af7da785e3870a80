"""Defects of the v1 delivery pipeline (issue 9's list), each proven fixed against real Postgres,
Redis and a Slack stand-in: a slow success is not posted twice, outcomes survive a Redis error,
membership is read at the entry's time, the sweeper is not crowded out, worker clocks do not gate
work, a 429 pauses the scope the provider named."""
import socket
import time
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from notifications.breaker import CircuitBreaker
from notifications.channels import registry
from notifications.delivery import fence
from notifications.delivery.fence import stream_deliver, stream_gate
from notifications.delivery.streams import DbClock
from notifications.delivery.sweeper import streams_stalled
from notifications.delivery.types import DrainResult
from notifications.models import Delivery, DeliveryStream, Notification
from notifications.ratelimit import Scope, limiter
from organizations.services import slack_integration_set
from tests.organizations.factories import MembershipFactory
from tests.support.fakeslack import FakeSlack
from tests.trackers.factories import TrackerEventFactory, TrackerFactory

pytestmark = pytest.mark.django_db
TOKEN = "xoxb-defects"


@pytest.fixture
def slack(settings):
    with FakeSlack(valid_tokens={TOKEN}, channel_burst=100, channel_rate=100) as server:
        settings.SLACK_API_URL = server.base_url
        settings.SLACK_TIMEOUT = 0.5
        settings.HERALD_RATE_LIMITS = {**settings.HERALD_RATE_LIMITS,
                                       "slack.global": {"rate": 1000, "burst": 100},
                                       "slack.channel": {"rate": 1000, "burst": 100}}
        settings.DELIVERY_BACKOFF_BASE = 0.0
        settings.DELIVERY_BACKOFF_MAX = 0.0
        yield server


def _slack_org():
    tracker = TrackerFactory()
    slack_integration_set(organization=tracker.organization, channel="C1", token=TOKEN)
    return tracker.organization, tracker


def _retry_now(org, channel="slack"):
    DeliveryStream.objects.filter(organization=org, channel=channel).update(next_attempt_at=None)
    return stream_deliver(org_id=org.id, channel=channel)


def test_a_slack_post_that_succeeded_after_the_timeout_is_not_posted_again(slack):
    """v1 posted it again on every retry (defect 3: duplicates with no crash)."""
    org, tracker = _slack_org()
    TrackerEventFactory(tracker=tracker)
    slack.configure(slow_fraction=1.0, slow_seconds=2.0)  # Slack takes it, the answer comes too late

    assert stream_deliver(org_id=org.id, channel="slack").kind == "wait"
    head = Delivery.objects.get(channel="slack")
    assert head.verify_first and head.status == "pending"

    slack.configure(slow_fraction=0.0)
    assert _retry_now(org).kind == "delivered"

    head.refresh_from_db()
    assert head.status == "sent" and head.provider_ref == slack.messages()[0]["ts"]
    assert len(slack.messages()) == 1  # found by its metadata, not posted twice
    assert DeliveryStream.objects.get(organization=org, channel="slack").delivered_seq == 1


def test_a_redis_error_after_a_successful_send_does_not_undo_the_outcome(slack, monkeypatch):
    """v1 called breaker.record (Redis) before the commit: a Redis error rolled the outcome back
    and the message was sent again (defect 3)."""
    org, tracker = _slack_org()
    TrackerEventFactory(tracker=tracker)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    dead = redis.Redis(host="127.0.0.1", port=dead_port, socket_connect_timeout=0.2)

    class DeadRedisBreaker(CircuitBreaker):
        def __init__(self, name, client=None):
            super().__init__(name, client=dead)

    monkeypatch.setattr(fence, "CircuitBreaker", DeadRedisBreaker)  # only the bookkeeping after the send
    target, gate = stream_gate(org_id=org.id, channel="slack")
    result = fence._deliver_external(registry.get("slack"), target, gate, org.id, "")

    assert result.kind == "delivered"
    assert Delivery.objects.get(channel="slack").status == "sent"
    assert len(slack.messages()) == 1


def test_a_broken_answer_is_recorded_as_an_attempt_and_verified(slack):
    """v1 did not catch IncompleteRead / BadStatusLine: no attempt recorded, retried forever."""
    org, tracker = _slack_org()
    TrackerEventFactory(tracker=tracker)
    slack.configure(down="close")  # the connection closes without an answer

    assert stream_deliver(org_id=org.id, channel="slack").kind == "wait"
    head = Delivery.objects.get(channel="slack")
    assert head.attempts == 1 and head.verify_first and "answer lost" in head.last_error


def test_the_inbox_goes_to_the_members_at_the_time_of_the_entry():
    """v1 read memberships when the drain ran: a member who joined later got old events."""
    tracker = TrackerFactory()
    org = tracker.organization
    early = MembershipFactory(organization=org).user
    TrackerEventFactory(tracker=tracker)
    late = MembershipFactory(organization=org).user  # joins before the drain runs

    stream_deliver(org_id=org.id, channel="inapp")  # creates the stream
    stream_deliver(org_id=org.id, channel="inapp")

    assert set(Notification.objects.values_list("recipient_id", flat=True)) == {early.id}
    assert not Notification.objects.filter(recipient=late).exists()


def _stalled_org(head_age: float, **stream):
    tracker = TrackerFactory()
    TrackerEventFactory(tracker=tracker, occurred_at=timezone.now() - timedelta(seconds=head_age))
    fence.stream_ensure(org_id=tracker.organization_id, channel="inapp")
    DeliveryStream.objects.filter(organization=tracker.organization).update(
        updated_at=timezone.now() - timedelta(hours=1), **stream)
    return tracker.organization


def test_the_sweeper_takes_the_oldest_head_first_and_skips_streams_that_wait():
    """v1 took the 1,000 least recently touched streams, waiting and disabled ones included, so
    streams that could not progress crowded out a really lost one (defect 8)."""
    waiting = _stalled_org(900, next_attempt_at=timezone.now() + timedelta(hours=5))
    disabled = _stalled_org(800, active=False)
    young, old = _stalled_org(60), _stalled_org(600)

    assert [o for o, _, _ in streams_stalled(older_than=10, limit=1)] == [old.id]
    found = {o for o, _, _ in streams_stalled(older_than=10)}
    assert {old.id, young.id} <= found and waiting.id not in found and disabled.id not in found


def test_a_fast_worker_clock_does_not_stall_a_stream(slack, monkeypatch):
    """v1 wrote next_attempt_at from the worker's clock and compared it with another's (defect 9):
    a worker an hour fast pushed a retry an hour out. Times come from Postgres now."""
    org, tracker = _slack_org()
    TrackerEventFactory(tracker=tracker)
    slack.configure(fail_fraction=1.0)
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(hours=1))

    result = stream_deliver(org_id=org.id, channel="slack")

    assert result.kind == "wait"
    stream = DeliveryStream.objects.annotate(db_now=DbClock()).get(organization=org, channel="slack")
    assert (stream.next_attempt_at - stream.db_now).total_seconds() < 60


def test_a_global_429_pauses_the_global_scope_and_a_channel_429_only_the_channel(settings):
    """v1 always paused the channel scope (defect 10)."""
    settings.HERALD_RATE_LIMITS = {**settings.HERALD_RATE_LIMITS,
                                   "slack.global": {"rate": 1000, "burst": 100},
                                   "slack.channel": {"rate": 1000, "burst": 100}}
    channel = registry.get("slack")
    target_a = type("T", (), {"channel": f"CA{time.time_ns()}"})()
    target_b = type("T", (), {"channel": f"CB{time.time_ns()}"})()

    channel.pause(target_a, "channel", 30)
    assert not limiter.acquire([Scope("slack.channel", target_a.channel)]).allowed
    assert limiter.acquire([Scope("slack.channel", target_b.channel)]).allowed

    channel.pause(target_a, "global", 30)
    assert not limiter.acquire([Scope("slack.global"), Scope("slack.channel", target_b.channel)]).allowed
    limiter.client.delete(Scope("slack.global").redis_key)


def test_a_removed_webhook_or_disabled_slack_deactivates_instead_of_crashing(slack):
    org, tracker = _slack_org()
    org.slack.enabled = False
    org.slack.save(update_fields=["enabled"])
    TrackerEventFactory(tracker=tracker)

    assert stream_deliver(org_id=org.id, channel="slack").kind == "idle"
    assert not DeliveryStream.objects.get(organization=org, channel="slack").active
    assert isinstance(stream_gate(org_id=org.id, channel="slack"), DrainResult)
