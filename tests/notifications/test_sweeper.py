"""The sweeper finds streams whose next event has waited too long while nobody touched them, and
only those: not a stream that just got its first event after a quiet spell (its kick is on the
way), not one that is caught up, held or backing off, and not an organization with no recent events."""
from datetime import timedelta

import pytest
from django.utils import timezone

from notifications.delivery.streams import stream_ensure
from notifications.delivery import sweeper
from notifications.delivery.sweeper import streams_stalled, streams_sweep
from notifications.models import Channel, DeliveryStream
from organizations.models import Organization
from tests.trackers.factories import TrackerEventFactory, TrackerFactory

pytestmark = pytest.mark.django_db
STALL = 10


def _org_with_event(event_age: float, stream_age: float):
    tracker = TrackerFactory()
    org = tracker.organization
    stream_ensure(org_id=org.id, channel=Channel.INAPP, destination="")
    TrackerEventFactory(tracker=tracker, occurred_at=timezone.now() - timedelta(seconds=event_age))
    Organization.objects.filter(pk=org.pk).update(last_event_at=timezone.now() - timedelta(seconds=event_age))
    DeliveryStream.objects.filter(organization=org).update(
        updated_at=timezone.now() - timedelta(seconds=stream_age))
    return org


def _stalled_orgs():
    return {org_id for org_id, _, _ in streams_stalled(older_than=STALL)}


def test_a_stream_whose_next_event_waited_past_the_stall_time_is_swept():
    stuck = _org_with_event(event_age=30, stream_age=3600)
    assert _stalled_orgs() == {stuck.id}


def test_a_quiet_stream_that_just_got_an_event_is_left_to_its_kick():
    _org_with_event(event_age=1, stream_age=3600)
    assert _stalled_orgs() == set()


def test_a_stream_worked_on_recently_is_not_swept():
    _org_with_event(event_age=30, stream_age=2)
    assert _stalled_orgs() == set()


def test_caught_up_held_and_backing_off_streams_are_not_swept():
    caught_up = _org_with_event(event_age=30, stream_age=3600)
    DeliveryStream.objects.filter(organization=caught_up).update(
        delivered_seq=Organization.objects.get(pk=caught_up.pk).last_event_seq)
    held = _org_with_event(event_age=30, stream_age=3600)
    DeliveryStream.objects.filter(organization=held).update(held=True)
    backing_off = _org_with_event(event_age=30, stream_age=3600)
    DeliveryStream.objects.filter(organization=backing_off).update(
        next_attempt_at=timezone.now() + timedelta(seconds=30))
    assert _stalled_orgs() == set()


def test_an_organization_without_recent_events_is_not_read():
    old = _org_with_event(event_age=30, stream_age=3600)
    Organization.objects.filter(pk=old.pk).update(last_event_at=timezone.now() - timedelta(days=30))
    assert _stalled_orgs() == set()


def test_sweep_kicks_each_stalled_stream(monkeypatch):
    stuck = _org_with_event(event_age=30, stream_age=3600)
    kicked = []
    monkeypatch.setattr(sweeper, "streams_kick_swept", lambda streams: kicked.extend(streams))
    assert streams_sweep() == 1
    assert kicked == [(stuck.id, "inapp", "")]


def test_a_new_organization_has_its_inapp_stream_so_a_lost_first_kick_is_swept():
    """The broker was down when the first events committed: no drain ever ran, yet the sweeper
    finds the organization because its in-app stream exists from the start."""
    from organizations.services import organization_create
    from tests.organizations.factories import UserFactory

    org = organization_create(creator=UserFactory(), name="Fresh")
    assert DeliveryStream.objects.filter(organization=org, channel=Channel.INAPP, delivered_seq=0).exists()
    tracker = org.trackers.get()
    TrackerEventFactory(tracker=tracker, occurred_at=timezone.now() - timedelta(seconds=30))
    Organization.objects.filter(pk=org.pk).update(last_event_at=timezone.now() - timedelta(seconds=30))
    DeliveryStream.objects.filter(organization=org).update(updated_at=timezone.now() - timedelta(seconds=3600))

    assert (org.id, Channel.INAPP, "") in streams_stalled(older_than=STALL)

