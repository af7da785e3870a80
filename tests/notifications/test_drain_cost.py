"""What a drain costs: a run shorter than batch_max is delivered with one look at the log (one
lock, one read, one commit), not a second empty look after it; a full run still continues."""
import pytest

from notifications.channels import registry
from notifications.delivery import fence
from notifications.delivery.drain import stream_drain
from notifications.models import DeliveryStream, Notification
from tests.organizations.factories import MembershipFactory
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

    # savepoint, lock, read, fan-out INSERT, cursor UPDATE, release (a second look would add
    # savepoint, lock, read, release).
    with django_assert_num_queries(6):
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
