"""What a drain costs: a run shorter than batch_max is delivered with one look at the log (one
lock, one read, one commit), not a second empty look after it; a full run still continues."""
import pytest
from django.db import transaction

from config.routing import org_partition

from notifications import publish
from notifications.channels import registry
from notifications.delivery import fence, kicks
from notifications.delivery.drain import stream_drain
from notifications.models import Delivery, DeliveryStream, Notification
from organizations.services import slack_integration_set
from tests.organizations.factories import MembershipFactory
from tests.support.fakeslack import FakeSlack
from tests.trackers.factories import TrackerEventFactory, TrackerFactory

pytestmark = pytest.mark.django_db


def _org_with_members(members: int = 3):
    tracker = TrackerFactory()
    for _ in range(members):
        MembershipFactory(organization=tracker.organization)
    fence.stream_ensure(org_id=tracker.organization_id, channel="inapp")
    return tracker


def test_a_short_inapp_run_is_drained_in_one_step(django_assert_num_queries):
    tracker = _org_with_members()
    org = tracker.organization
    TrackerEventFactory(tracker=tracker)
    TrackerEventFactory(tracker=tracker, action="stop")
    members = org.memberships.count()

    # savepoint, lock + read + cursor move (one statement), fan-out INSERT, release. It was 10:
    # lock, read and cursor UPDATE apart, and a second look (savepoint, lock, read, release).
    with django_assert_num_queries(4):
        result = stream_drain(org_id=org.id, channel="inapp")

    assert (result.kind, result.count) == ("idle", 2)
    assert Notification.objects.filter(organization=org).count() == 2 * members
    assert DeliveryStream.objects.get(organization=org, channel="inapp").delivered_seq == 2


def test_a_full_run_is_followed_by_the_next_one(monkeypatch):
    tracker = _org_with_members(1)
    org = tracker.organization
    inapp = registry.get("inapp")
    monkeypatch.setitem(inapp.options, "batch_max", 2)
    for _ in range(5):
        TrackerEventFactory(tracker=tracker)

    result = stream_drain(org_id=org.id, channel="inapp")

    assert (result.kind, result.count) == ("idle", 5)
    assert list(Notification.objects.filter(organization=org).order_by("id").values_list("seq", flat=True)) == \
        [1, 2, 3, 4, 5]
    assert DeliveryStream.objects.get(organization=org, channel="inapp").delivered_seq == 5


TOKEN = "xoxb-drain-cost"


@pytest.fixture
def slack(settings):
    with FakeSlack(valid_tokens={TOKEN}, channel_burst=100, channel_rate=100) as server:
        settings.SLACK_API_URL = server.base_url
        settings.HERALD_RATE_LIMITS = {**settings.HERALD_RATE_LIMITS,
                                       "slack.global": {"rate": 1000, "burst": 100},
                                       "slack.channel": {"rate": 1000, "burst": 100}}
        yield server


def test_a_slack_send_reads_its_entries_once(slack, django_assert_num_queries):
    """The gate's look at the run (is anything for this channel?) is reused under the lock: the
    entries are read once per send, not twice."""
    tracker = _org_with_members(1)
    org = tracker.organization
    slack_integration_set(organization=org, channel="C1", token=TOKEN)
    TrackerEventFactory(tracker=tracker)
    TrackerEventFactory(tracker=tracker, action="stop")

    # peek + the entries after the cursor (one statement), destination, savepoint, lock, pending head
    # or the new head recorded admitted (one statement), outcome + cursor (one statement), release.
    # It was 12 (the entries read twice, outcome and cursor apart), then 10 (peek, entries, head,
    # INSERT and the admitted flag apart).
    with django_assert_num_queries(7) as captured:
        result = stream_drain(org_id=org.id, channel="slack")

    assert (result.kind, result.count) == ("idle", 2)
    entry_reads = [q["sql"] for q in captured.captured_queries if "FROM notifications_logentry e" in q["sql"]
                   and "e.seq > s.delivered_seq" in q["sql"]]
    assert len(entry_reads) == 1, entry_reads
    assert not [q["sql"] for q in captured.captured_queries if 'FROM "notifications_logentry"' in q["sql"]]
    head = Delivery.objects.get(channel="slack")
    assert (head.status, head.first_seq, head.last_seq, head.seqs, head.admitted, head.attempts) == \
        ("sent", 1, 2, [1, 2], True, 1)
    assert [m["text"].splitlines()[0] for m in slack.messages()] == ["2 tracker updates (#1–#2):"]
    assert DeliveryStream.objects.get(organization=org, channel="slack").delivered_seq == 2


def test_entries_known_from_the_gate_are_reused_only_where_they_cover_the_range(django_assert_num_queries):
    tracker = _org_with_members(1)
    org = tracker.organization
    for _ in range(6):
        TrackerEventFactory(tracker=tracker)
    known = fence._entries(org.id, 2, 4)

    with django_assert_num_queries(0):
        assert [e.seq for e in fence._entries(org.id, 3, 4, known)] == [3, 4]
    with django_assert_num_queries(1):  # the tail beyond what is known is read
        assert [e.seq for e in fence._entries(org.id, 3, 6, known)] == [3, 4, 5, 6]
    with django_assert_num_queries(1):  # starts before what is known
        assert [e.seq for e in fence._entries(org.id, 1, 3, known)] == [1, 2, 3]
    with django_assert_num_queries(1):
        assert [e.seq for e in fence._entries(org.id, 5, 6, known)] == [5, 6]


def test_a_committed_entry_kicks_its_streams_without_reading_them_again(
        monkeypatch, django_assert_num_queries, django_capture_on_commit_callbacks):
    """publish() returns the organization's active streams with the entry, so the kick on commit
    makes no query; the in-app stream joins its partition's dirty set and the Slack flag is set in
    one pipeline; the partition task and the Slack drain are enqueued once, not again while
    queued."""
    tracker = _org_with_members(1)
    org = tracker.organization
    slack_integration_set(organization=org, channel="C1", token=TOKEN)
    enqueued = []
    monkeypatch.setattr(kicks, "drain_enqueue", lambda **kw: enqueued.append(kw["channel"]))
    monkeypatch.setattr(kicks, "partition_enqueue", lambda **kw: enqueued.append(("partition", kw["partition"])))

    def append():
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            publish.publish(organization_id=org.id, kind="tracker.event",
                            payload={"tracker_id": tracker.id, "tracker_name": tracker.name, "action": "start"})

    with django_assert_num_queries(3):  # savepoint, the append (seq, entry, streams), release
        append()
    partition = org_partition(org.id)
    assert sorted(enqueued, key=str) == sorted([("partition", partition), "slack"], key=str)
    assert [member for member, _ in kicks.partition_claim(partition=partition, count=10)] == [f"{org.id}:inapp:"]

    append()  # the partition task and the Slack drain still queued: their flags are set
    assert len(enqueued) == 2
