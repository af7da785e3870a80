"""Factories for trackers, their events and time entries."""
import factory
from django.utils import timezone

from organizations.services import organization_next_seq
from tests.organizations.factories import OrganizationFactory, UserFactory
from trackers.models import TimeEntry, Tracker, TrackerEvent


class TrackerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tracker

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"Tracker {n}")
    is_running = False


class TrackerEventFactory(factory.django.DjangoModelFactory):
    """An event with the organization's next seq, reserved the way the service does it
    (so Organization.last_event_seq stays consistent with the log)."""

    class Meta:
        model = TrackerEvent

    tracker = factory.SubFactory(TrackerFactory)
    organization = factory.SelfAttribute("tracker.organization")
    seq = factory.LazyAttribute(lambda o: organization_next_seq(organization_id=o.organization.id))
    action = TrackerEvent.Action.START
    actor = None
    actor_name = factory.LazyAttribute(lambda o: o.actor.username if o.actor else "")
    occurred_at = factory.LazyFunction(timezone.now)


class TimeEntryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TimeEntry

    tracker = factory.SubFactory(TrackerFactory)
    organization = factory.SelfAttribute("tracker.organization")
    started_by = factory.SubFactory(UserFactory)
    started_at = factory.LazyFunction(timezone.now)
    stopped_at = None
    duration = factory.LazyAttribute(lambda o: (o.stopped_at - o.started_at) if o.stopped_at else None)
