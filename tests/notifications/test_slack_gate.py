"""The Slack gate shares the global limit oldest-first: of the streams waiting, the one whose next
undelivered event occurred first gets the next free slot, whatever order they asked in (so a
stream whose send failed keeps its place instead of queueing again behind everyone)."""
import socket
import time
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from organizations.services import slack_integration_set
from notifications import breaker
from notifications.breaker import CircuitBreaker
from notifications.channels import registry
from notifications.channels.slack import SlackTarget
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


class CountingRedis(redis.Redis):
    """A real client that counts its round trips (every command it sends)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    def execute_command(self, *args, **options):
        self.commands.append(str(args[0]))
        return super().execute_command(*args, **options)


@pytest.fixture
def counted(settings, monkeypatch):
    """The limiter and the breakers on one counting client, the Slack breaker reset."""
    client = CountingRedis.from_url(settings.REDIS_URL)
    monkeypatch.setattr(limiter, "_client", client)
    monkeypatch.setattr(breaker, "_shared_client", lambda: client)
    CircuitBreaker("slack").reset()
    yield client
    CircuitBreaker("slack").reset()


def test_the_breaker_and_the_limiter_are_asked_in_one_redis_call(settings, counted):
    """Each gate was two script calls (the breaker's allow, then the fair limiter): one now."""
    settings.HERALD_RATE_LIMITS = {**settings.HERALD_RATE_LIMITS, "slack.global": {"rate": 1000, "burst": 10},
                                   "slack.channel": {"rate": 1000, "burst": 10}}
    org = _slack_org(event_age=1)
    target = registry.get("slack").target(organization_id=org.id, destination="")
    registry.get("slack").gate(target, since=None, member="warm-up")  # loads the script once
    counted.commands.clear()

    gate = registry.get("slack").gate(target, since=time.time(), member=f"{org.id}:slack:")

    assert gate.allowed
    assert counted.commands == ["EVALSHA"]


def test_an_open_breaker_stops_the_gate_before_the_limiter_queues_or_grants(slow_global, counted):
    org = _slack_org(event_age=1)
    slack = registry.get("slack")
    target = slack.target(organization_id=org.id, destination="")
    for _ in range(5):  # consecutive failures open it
        CircuitBreaker("slack").record(ok=False)

    gate = slack.gate(target, since=time.time(), member=f"{org.id}:slack:")

    assert not gate.allowed and gate.reason == "breaker slack open"
    assert 4 <= gate.wait <= 5.01
    queue = Scope("slack.global").redis_key + ":queue"
    assert counted.zscore(queue, f"{org.id}:slack:") is None  # no place taken in the queue
    assert limiter.acquire([Scope("slack.global")]).allowed  # and no slot spent


def test_without_redis_the_gate_fails_closed_for_the_breakers_short_wait(slow_global, settings, monkeypatch):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
    monkeypatch.setattr(limiter, "_client", dead)
    monkeypatch.setattr(breaker, "_shared_client", lambda: dead)
    settings.HERALD_BREAKERS = {**settings.HERALD_BREAKERS, "slack": {"unavailable_wait": 2.5}}
    target = SlackTarget(channel="C1", token="xoxb-gate")

    gate = registry.get("slack").gate(target, since=None, member="m")

    assert (gate.allowed, gate.wait, gate.reason) == (False, 2.5, "breaker slack unknown")
