"""Who gets which log entry: the fence hands a destination only the entries meant for it
(Channel.wants). A private kind (a reply to your comment) never reaches the organization's Slack
channel or webhooks; a per-recipient channel (email) skips entries whose audience leaves its member
out; a kind that does not list in-app makes no inbox row but still reaches the live feed. Skipped
ranges move the cursor without a provider call. Real Postgres and Redis, receivers on loopback."""
import pytest
from django.db import transaction

from notifications import publish
from notifications.delivery.fence import stream_deliver
from notifications.kinds import KINDS, Kind
from notifications.models import Delivery, DeliveryStream, Notification
from notifications.preferences import preference_set
from tests.notifications.test_pipeline_v2_defects import _retry_now, _slack_org, slack  # noqa: F401 (fixture)
from tests.notifications.test_email_stream import _deliver, _seq_ranges, providers  # noqa: F401 (fixture)
from tests.notifications.test_webhooks import _create, _drain, receiver  # noqa: F401 (fixture)
from tests.trackers.factories import TrackerEventFactory, TrackerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def private_kinds(monkeypatch):
    monkeypatch.setitem(KINDS, "test.private", Kind(name="test.private", category="tracker_event",
                                                    title=lambda e: "for you", private=True))
    monkeypatch.setitem(KINDS, "test.live", Kind(name="test.live", category="tracker_event",
                                                 title=lambda e: "live only", channels=()))


def _publish(org, kind, audience=None):
    with transaction.atomic():
        return publish.publish(organization_id=org.id, kind=kind, payload={}, audience=audience)


def test_private_entries_never_reach_an_org_wide_destination_and_skips_cost_no_request(
        auth_client, org_with_members, receiver, private_kinds):  # noqa: F811
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.url)
    tracker = TrackerFactory(organization=org)
    first = TrackerEventFactory(tracker=tracker)
    secret = _publish(org, "test.private", audience=[org_with_members.member.id])
    last = TrackerEventFactory(tracker=tracker, action="stop")

    assert _drain(org, created["id"])[-1] == "idle"

    seqs = [e["seq"] for body in receiver.bodies() for e in body["entries"]]
    assert seqs == [first.seq, last.seq] and secret.seq not in seqs
    stream = DeliveryStream.objects.get(channel="webhook")
    assert stream.delivered_seq == last.seq


def test_a_range_of_only_private_entries_moves_the_cursor_without_a_request(
        auth_client, org_with_members, receiver, private_kinds):  # noqa: F811
    org = org_with_members.org
    created = _create(auth_client(org_with_members.owner), org, receiver.url)
    entries = [_publish(org, "test.private", audience=[org_with_members.owner.id]) for _ in range(3)]

    result = stream_deliver(org_id=org.id, channel="webhook", destination=str(created["id"]))

    assert result.kind == "delivered" and result.count == 0
    assert receiver.requests == []
    assert not Delivery.objects.filter(channel="webhook").exists()
    assert DeliveryStream.objects.get(channel="webhook").delivered_seq == entries[-1].seq
    assert stream_deliver(org_id=org.id, channel="webhook", destination=str(created["id"])).kind == "idle"


def test_an_email_stream_skips_entries_whose_audience_leaves_its_member_out(
        providers, org_with_members, private_kinds):  # noqa: F811
    primary, _ = providers
    org, member, owner = org_with_members.org, org_with_members.member, org_with_members.owner
    preference_set(user=member, organization=org, enabled=True)
    mine = _publish(org, "test.private", audience=[member.id])
    _publish(org, "test.private", audience=[owner.id])  # someone else's
    tracker_event = TrackerEventFactory(tracker=TrackerFactory(organization=org))

    _deliver(org, member)

    messages = primary.messages(to=member.email)
    assert [m["headers"]["x-herald-first-seq"] for m in messages]  # something was mailed
    body = " ".join(m["text"] for m in messages)
    assert body.count("for you") == 1 and f"(#{mine.seq})" in body and f"(#{tracker_event.seq})" in body
    assert f"(#{mine.seq + 1})" not in body


def test_a_kind_without_inapp_makes_no_inbox_row_but_keeps_the_live_seq(org_with_members, private_kinds):
    org = org_with_members.org
    live = _publish(org, "test.live")
    private = _publish(org, "test.private", audience=[org_with_members.member.id])

    while stream_deliver(org_id=org.id, channel="inapp").kind != "idle":
        pass

    assert not Notification.objects.filter(entry_id=live.id).exists()
    assert list(Notification.objects.filter(entry_id=private.id).values_list("recipient_id", flat=True)) == [
        org_with_members.member.id]
    assert DeliveryStream.objects.get(channel="inapp").delivered_seq == private.seq


def test_a_slack_run_that_starts_with_a_skipped_entry_is_verified_by_its_range_not_posted_twice(
        slack, private_kinds):  # noqa: F811
    org, tracker = _slack_org()
    _publish(org, "test.private", audience=[])
    TrackerEventFactory(tracker=tracker)  # seq 2: the run is 1..2 with one entry for Slack
    slack.configure(slow_fraction=1.0, slow_seconds=2.0)  # Slack takes it, the answer comes too late

    assert stream_deliver(org_id=org.id, channel="slack").kind == "wait"
    slack.configure(slow_fraction=0.0)
    assert _retry_now(org).kind == "delivered"

    [posted] = slack.messages()
    assert posted["metadata"]["event_payload"]["first_seq"] == 1  # the run's range, which verify() asks for
    assert "for you" not in posted["text"]
    assert DeliveryStream.objects.get(organization=org, channel="slack").delivered_seq == 2
