"""Reads of trackers and events, through the organization access helpers."""
from django.db.models import QuerySet

from config.errors import NotFound
from organizations.selectors import organization_list_for_user
from organizations.models import Organization
from trackers.models import Tracker, TrackerEvent


def tracker_list(*, organization: Organization) -> QuerySet[Tracker]:
    return Tracker.objects.filter(organization=organization).select_related("started_by").order_by("id")


def tracker_get_for_user(*, user, id: int) -> Tracker:
    tracker = (
        Tracker.objects.filter(id=id, organization__in=organization_list_for_user(user=user))
        .select_related("organization")
        .first()
    )
    if tracker is None:
        raise NotFound("Tracker not found.", code="tracker_not_found")
    return tracker


def event_list(*, organization_id: int, after_seq: int = 0) -> QuerySet[TrackerEvent]:
    return (TrackerEvent.objects.filter(organization_id=organization_id, seq__gt=after_seq)
            .select_related("tracker").order_by("seq"))


def event_range(*, organization_id: int, first_seq: int, last_seq: int) -> list[TrackerEvent]:
    return list(
        TrackerEvent.objects.filter(organization_id=organization_id, seq__gte=first_seq, seq__lte=last_seq)
        .order_by("seq")
    )
