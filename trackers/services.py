"""Tracker writes. A start or stop, its TrackerEvent (with the org's next seq) and its TimeEntry
are written in one transaction; delivery is kicked only after commit."""
from django.db import transaction
from django.utils import timezone

from config.errors import Conflict
from organizations.models import Organization
from organizations.services import organization_next_seq
from trackers.models import TimeEntry, Tracker, TrackerEvent


def tracker_create(*, organization: Organization, name: str) -> Tracker:
    return Tracker.objects.create(organization=organization, name=name)


def _actor_name(actor) -> str:
    return getattr(actor, "username", None) or str(actor or "")


def _user_or_none(actor):
    return actor if getattr(actor, "pk", None) else None


def _record_event(*, tracker: Tracker, action: str, actor, now) -> TrackerEvent:
    seq = organization_next_seq(organization_id=tracker.organization_id)
    event = TrackerEvent.objects.create(
        organization_id=tracker.organization_id, seq=seq, tracker=tracker, action=action,
        actor=_user_or_none(actor), actor_name=_actor_name(actor), occurred_at=now,
    )
    from notifications.services import tracker_event_committed  # delivery depends on trackers, not back

    transaction.on_commit(lambda: tracker_event_committed(event=event))
    return event


@transaction.atomic
def tracker_start(*, tracker_id: int, actor) -> TrackerEvent:
    # Lock order everywhere: tracker row, then organization row (in organization_next_seq).
    tracker = Tracker.objects.select_for_update().get(pk=tracker_id)
    if tracker.is_running:
        raise Conflict("The tracker is already running.", code="tracker_already_running")
    now = timezone.now()
    tracker.is_running, tracker.started_at, tracker.started_by = True, now, _user_or_none(actor)
    tracker.save(update_fields=["is_running", "started_at", "started_by"])
    TimeEntry.objects.create(organization_id=tracker.organization_id, tracker=tracker,
                             started_by=_user_or_none(actor), started_at=now)
    return _record_event(tracker=tracker, action=TrackerEvent.Action.START, actor=actor, now=now)


@transaction.atomic
def tracker_stop(*, tracker_id: int, actor) -> TrackerEvent:
    tracker = Tracker.objects.select_for_update().get(pk=tracker_id)
    if not tracker.is_running:
        raise Conflict("The tracker is not running.", code="tracker_not_running")
    now = timezone.now()
    entry = TimeEntry.objects.filter(tracker=tracker, stopped_at__isnull=True).first()
    if entry is not None:
        entry.stopped_at, entry.stopped_by, entry.duration = now, _user_or_none(actor), now - entry.started_at
        entry.save(update_fields=["stopped_at", "stopped_by", "duration"])
    tracker.is_running, tracker.started_at, tracker.started_by = False, None, None
    tracker.save(update_fields=["is_running", "started_at", "started_by"])
    return _record_event(tracker=tracker, action=TrackerEvent.Action.STOP, actor=actor, now=now)
