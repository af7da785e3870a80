"""Factories for trackers, their events (entries of the org log) and time entries."""
import factory
from django.utils import timezone

from django.db import transaction

from notifications import publish
from notifications.models import LogEntry
from tests.organizations.factories import OrganizationFactory, UserFactory
from trackers.models import TimeEntry, Tracker


class TrackerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tracker

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"Tracker {n}")
    is_running = False


class TrackerEventFactory(factory.Factory):
    """A "tracker.event" entry of the org log, appended the way the service does it (publish:
    the organization's next seq, audience = its members now). Returns the LogEntry."""

    class Meta:
        model = LogEntry

    tracker = factory.SubFactory(TrackerFactory)
    action = "start"
    actor = None
    occurred_at = factory.LazyFunction(timezone.now)

    @classmethod
    def _create(cls, model_class, *, tracker, action, actor, occurred_at):
        with transaction.atomic():
            return publish.publish(
                organization_id=tracker.organization_id, kind="tracker.event", actor=actor, occurred_at=occurred_at,
                payload={"tracker_id": tracker.id, "tracker_name": tracker.name, "action": action})


class TimeEntryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TimeEntry

    tracker = factory.SubFactory(TrackerFactory)
    organization = factory.SelfAttribute("tracker.organization")
    started_by = factory.SubFactory(UserFactory)
    started_at = factory.LazyFunction(timezone.now)
    stopped_at = None
    duration = factory.LazyAttribute(lambda o: (o.stopped_at - o.started_at) if o.stopped_at else None)
