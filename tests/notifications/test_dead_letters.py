"""Slack delivery of one stream, step by step (the body of the deliver task) against a real HTTP
server acting as Slack: permanent errors dead-letter at once and the stream moves on (or holds),
transient errors retry the same range with backoff and then dead-letter, requeue and discard."""
from datetime import timedelta

import pytest
from django.db.models.functions import Now

from notifications import services
from organizations.services import slack_integration_set
from notifications.delivery.fence import stream_deliver
from notifications.models import Channel, Delivery, DeliveryStream
from tests.support.fakeslack import FakeSlack
from tests.trackers.factories import TrackerEventFactory, TrackerFactory

TOKEN = "xoxb-dead-letters"


@pytest.fixture
def slack(settings):
    with FakeSlack(valid_tokens={TOKEN}, channel_burst=100, channel_rate=100) as server:
        settings.SLACK_API_URL = server.base_url
        settings.SLACK_TIMEOUT = 2.0
        settings.HERALD_RATE_LIMITS = {"slack.global": {"rate": 1000, "burst": 100},
                                       "slack.channel": {"rate": 1000, "burst": 100}}
        settings.DELIVERY_BACKOFF_BASE = 0.0
        settings.DELIVERY_BACKOFF_MAX = 0.0
        yield server


@pytest.fixture
def org_stream(db, slack):
    tracker = TrackerFactory()
    org = tracker.organization
    slack_integration_set(organization=org, channel="C1", token=TOKEN)
    stream = DeliveryStream.objects.get(organization=org, channel=Channel.SLACK)
    return org, tracker, stream


def _drain(org):
    results = []
    for _ in range(20):
        result = stream_deliver(org_id=org.id, channel=Channel.SLACK)
        results.append(result.kind)
        if result.kind in ("idle", "held"):
            break
        DeliveryStream.objects.filter(organization=org, channel=Channel.SLACK).update(next_attempt_at=None)
    return results


def test_permanent_error_dead_letters_at_once_and_stream_moves_on(org_stream, slack):
    org, tracker, stream = org_stream
    slack.configure(known_channels={"C-other"})  # C1 does not exist: channel_not_found
    TrackerEventFactory(tracker=tracker)
    _drain(org)
    dead = Delivery.objects.get(stream=stream)
    assert dead.status == Delivery.Status.DEAD and dead.attempts == 1
    assert "channel_not_found" in dead.last_error
    stream.refresh_from_db()
    assert stream.delivered_seq == 1 and not stream.held

    slack.configure(known_channels=None)
    TrackerEventFactory(tracker=tracker)
    _drain(org)
    sent = Delivery.objects.get(stream=stream, status=Delivery.Status.SENT)
    assert (sent.first_seq, sent.last_seq) == (2, 2)
    assert [m["first_seq"] for m in slack.messages()] == [2]


def test_hold_policy_stops_the_stream_until_released(org_stream, slack):
    org, tracker, stream = org_stream
    DeliveryStream.objects.filter(pk=stream.pk).update(on_dead_letter=DeliveryStream.OnDeadLetter.HOLD)
    slack.configure(valid_tokens={"xoxb-other"})  # invalid_auth
    TrackerEventFactory(tracker=tracker)
    TrackerEventFactory(tracker=tracker)
    assert _drain(org)[-1] == "held"
    stream.refresh_from_db()
    assert stream.held and stream.delivered_seq == 0
    dead = Delivery.objects.get(stream=stream)
    assert (dead.first_seq, dead.last_seq, dead.status) == (1, 2, Delivery.Status.DEAD)

    # The operator fixes the token and requeues: the stream resumes in order, not late.
    slack.configure(valid_tokens={TOKEN})
    services.delivery_requeue(delivery=dead)
    _drain(org)
    dead.refresh_from_db()
    stream.refresh_from_db()
    assert dead.status == Delivery.Status.SENT and not dead.late
    assert stream.delivered_seq == 2 and not stream.held
    assert [(m["first_seq"], m["last_seq"]) for m in slack.messages()] == [(1, 2)]


def _retry_now(org):
    DeliveryStream.objects.filter(organization=org, channel=Channel.SLACK).update(next_attempt_at=None)
    return stream_deliver(org_id=org.id, channel=Channel.SLACK)


def test_transient_errors_retry_same_range_until_the_retry_window_closes(org_stream, slack, settings):
    """Retries are bounded by time (the channel's retry_seconds, 24 h by default), not by a count:
    eight failures in a row do not dead-letter a head that is a minute old."""
    org, tracker, stream = org_stream
    settings.HERALD_BREAKERS = {"slack": {"min_calls": 1000, "consecutive_failures": 1000}}
    slack.configure(fail_fraction=1.0)
    TrackerEventFactory(tracker=tracker)
    stream_deliver(org_id=org.id, channel=Channel.SLACK)
    TrackerEventFactory(tracker=tracker)  # arrives while the head is failing: must not join it
    for _ in range(9):
        assert _retry_now(org).kind == "wait"
    first = Delivery.objects.get(stream=stream)
    assert (first.first_seq, first.last_seq) == (1, 1)  # the retried head kept its range
    assert first.status == Delivery.Status.PENDING and first.attempts == 10

    Delivery.objects.filter(pk=first.pk).update(created_at=Now() - timedelta(hours=25))  # the window closed
    _retry_now(org)
    first.refresh_from_db()
    assert first.status == Delivery.Status.DEAD and "gave up after" in first.last_error
    slack.configure(fail_fraction=0.0)
    _drain(org)
    assert [(m["first_seq"], m["last_seq"]) for m in slack.messages()] == [(2, 2)]


def test_requeue_on_a_stream_that_moved_on_sends_late(org_stream, slack):
    org, tracker, stream = org_stream
    slack.configure(known_channels={"C-other"})
    TrackerEventFactory(tracker=tracker)
    _drain(org)
    dead = Delivery.objects.get(stream=stream, status=Delivery.Status.DEAD)
    slack.configure(known_channels=None)
    services.delivery_requeue(delivery=dead)
    assert services.late_delivery_send(delivery_id=dead.id).kind == "delivered"
    dead.refresh_from_db()
    stream.refresh_from_db()
    assert dead.status == Delivery.Status.SENT and dead.late
    assert stream.delivered_seq == 1  # the cursor never moves back
    message = slack.messages()[-1]
    assert message["text"].startswith("(late)") and message["payload"]["late"] is True


def test_requeue_refuses_a_delivery_that_is_not_dead(org_stream, slack):
    from config.errors import Conflict

    org, tracker, stream = org_stream
    TrackerEventFactory(tracker=tracker)
    _drain(org)
    sent = Delivery.objects.get(stream=stream)
    with pytest.raises(Conflict):
        services.delivery_requeue(delivery=sent)


def test_discard_on_held_stream_skips_and_resumes(org_stream, slack):
    org, tracker, stream = org_stream
    DeliveryStream.objects.filter(pk=stream.pk).update(on_dead_letter=DeliveryStream.OnDeadLetter.HOLD)
    slack.configure(known_channels={"C-other"})
    TrackerEventFactory(tracker=tracker)
    _drain(org)
    dead = Delivery.objects.get(stream=stream)
    services.delivery_discard(delivery=dead)
    dead.refresh_from_db()
    stream.refresh_from_db()
    assert dead.status == Delivery.Status.DISCARDED
    assert not stream.held and stream.delivered_seq == 1


def test_open_breaker_waits_without_spending_attempts(org_stream, slack, settings):
    from notifications.breaker import CircuitBreaker

    org, tracker, stream = org_stream
    settings.HERALD_BREAKERS = {"slack": {"min_calls": 2, "failure_ratio": 0.5, "open_seconds": 30}}
    slack.configure(fail_fraction=1.0)
    TrackerEventFactory(tracker=tracker)
    stream_deliver(org_id=org.id, channel=Channel.SLACK)
    DeliveryStream.objects.filter(pk=stream.pk).update(next_attempt_at=None)
    stream_deliver(org_id=org.id, channel=Channel.SLACK)
    assert CircuitBreaker("slack").state()["state"] == "open"
    requests_before = slack.stats()["requests"]
    DeliveryStream.objects.filter(pk=stream.pk).update(next_attempt_at=None)
    result = stream_deliver(org_id=org.id, channel=Channel.SLACK)
    assert result.kind == "wait" and result.wait > 1
    head = Delivery.objects.get(stream=stream)
    assert head.attempts == 2 and head.status == Delivery.Status.PENDING
    assert slack.stats()["requests"] == requests_before  # nothing sent while open
