"""A Slack outage of 90 s with one organization at low traffic, on the real stack (workers, beat):
v1 spent an attempt on every retry, 429 and breaker probe, so about a minute in the head became a
dead letter and its entries were skipped for good. Retries are bounded by time now (24 h): when
Slack returns, every entry arrives, in order, once, and nothing is marked late."""
import time
import uuid

import pytest

from notifications.models import Delivery
from organizations.models import User
from organizations.services import organization_create, slack_integration_set
from tests.support.fakeslack import FakeSlack
from tests.support.stack import DELIVERY_QUEUES, Stack
from trackers.models import Tracker
from trackers.services import tracker_start, tracker_stop

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

TOKEN = "xoxb-outage"
OUTAGE_SECONDS = 90
EVENTS = 30


@pytest.fixture
def fake_slack():
    with FakeSlack(valid_tokens={TOKEN}, channel_rate=1.0, channel_burst=3) as fake:
        yield fake


def test_a_90_second_slack_outage_ends_with_every_entry_in_order_and_no_dead_letter(transactional_db, fake_slack):
    run = uuid.uuid4().hex[:8]
    owner = User.objects.create_user(username=f"out-{run}", email=f"out-{run}@example.com", password="unused-pw-123")
    org = organization_create(creator=owner, name=f"Outage {run}")
    channel = f"COUT{run.upper()}"
    slack_integration_set(organization=org, channel=channel, token=TOKEN)
    tracker = Tracker.objects.get(organization=org)
    fake_slack.configure(down="503")

    env = {"SWEEP_INTERVAL_SECONDS": "1", "DELIVERY_STALL_SECONDS": "2", "SLACK_TIMEOUT": "2",
           "DELIVERY_BACKOFF_MAX": "8"}
    with Stack(slack_url=fake_slack.base_url, env=env) as stack:
        stack.start_worker("orgs", DELIVERY_QUEUES, concurrency=2)
        stack.start_worker("default", ["default", "maintenance"])
        stack.start_beat("beat")
        stack.wait_ready(timeout=60)
        with stack.dump_logs_on_failure():
            started = time.monotonic()
            for n in range(EVENTS):  # one start or stop every 3 s: low traffic for the whole outage
                (tracker_start if n % 2 == 0 else tracker_stop)(tracker_id=tracker.id, actor=owner)
                time.sleep(max(0.0, started + (n + 1) * OUTAGE_SECONDS / EVENTS - time.monotonic()))
            assert fake_slack.stats()["http_503"] >= 5  # the outage was met, several times
            assert not Delivery.objects.filter(organization=org, status="dead").exists()

            fake_slack.configure(down=None)
            ok = fake_slack.wait_until(
                lambda f: max((m["last_seq"] or 0 for m in f.messages(channel)), default=0) >= EVENTS, timeout=90)
            assert ok, f"not delivered after the outage: {fake_slack.stats()}"

    messages = fake_slack.messages(channel)
    covered = [s for m in messages for s in range(m["first_seq"], m["last_seq"] + 1)]
    assert covered == list(range(1, EVENTS + 1))  # every entry, in order, once
    assert not any(m["text"].startswith("(late)") for m in messages)
    assert not Delivery.objects.filter(organization=org, status="dead").exists()
