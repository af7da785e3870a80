"""The Slack gate shares the global limit oldest-first: of the streams waiting, the one whose next
undelivered event occurred first gets the next free slot, whatever order they asked in (so a
stream whose send failed keeps its place instead of queueing again behind everyone)."""
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from organizations.services import slack_integration_set
from notifications.delivery.fence import stream_gate
from notifications.delivery.types import DrainResult
from notifications.models import DeliveryStream
from notifications.ratelimit import Scope, limiter
from tests.trackers.factories import TrackerEventFactory, TrackerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def slow_global(settings):
    settings.HERALD_RATE_LIMITS = {
        **settings.HERALD_RATE_LIMITS,
        "slack.global": {"rate": 5, "burst": 1, "headroom": 0},
        "slack.channel": {"rate": 1000, "burst": 1},
    }


def _slack_org(event_age: float):
    tracker = TrackerFactory()
    org = tracker.organization
    slack_integration_set(organization=org, channel=f"C{org.id}", token="xoxb-gate")
    TrackerEventFactory(tracker=tracker, occurred_at=timezone.now() - timedelta(seconds=event_age))
    return org


def _first_granted(orgs, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for org in orgs:  # in this order every round
            if not isinstance(stream_gate(org_id=org.id, channel="slack"), DrainResult):
                return org
        time.sleep(0.005)
    return None


def test_the_stream_with_the_oldest_pending_event_gets_the_next_slot(slow_global):
    young, old = _slack_org(event_age=1), _slack_org(event_age=30)
    assert limiter.acquire([Scope("slack.global")]).allowed  # the slot is taken: both must wait

    assert stream_gate(org_id=young.id, channel="slack").kind == "wait"  # young asks first
    assert stream_gate(org_id=old.id, channel="slack").kind == "wait"

    assert _first_granted([young, old]) == old


def test_a_caught_up_stream_is_idle_and_takes_no_slot(slow_global):
    org = _slack_org(event_age=5)
    DeliveryStream.objects.filter(organization=org).update(delivered_seq=1)

    assert stream_gate(org_id=org.id, channel="slack").kind == "idle"
    assert limiter.acquire([Scope("slack.global")]).allowed  # nothing was spent
