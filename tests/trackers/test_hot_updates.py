"""Every tracker event UPDATEs two rows: the tracker's (is_running, started_at, started_by_id) and
its organization's (last_event_seq, last_event_at, by the log append). Both must be HOT updates
(heap-only tuples: no index entry written, nothing left in the indexes for vacuum): no index may
cover a column they change (trackers 0007: no index on started_by_id; organizations 0010:
last_event_at moves once a minute). A non-HOT update of the tracker also recomputed the name's
full-text entry of its GIN index on every start and stop. Counted by Postgres itself for the
current transaction (pg_stat_get_xact_tuples_hot_updated)."""
from datetime import timedelta

import pytest
from django.db import connection, transaction

from organizations.models import Organization
from trackers import services
from trackers.models import Tracker

pytestmark = pytest.mark.django_db

EVENTS = 12


def _updates(table: str) -> tuple[int, int]:
    """(updates, of them HOT) of `table` counted by this backend and not yet reported (the current
    transaction's, plus earlier ones' until the backend flushes its statistics): compare two readings
    taken inside one transaction."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_get_xact_tuples_updated(%s::regclass), "
                       "pg_stat_get_xact_tuples_hot_updated(%s::regclass)", [table, table])
        return cursor.fetchone()


def test_tracker_events_update_the_tracker_and_its_organization_in_place(org_with_members):
    tracker = Tracker.objects.get(organization=org_with_members.org)
    with transaction.atomic():
        tracker_before, org_before = _updates("trackers_tracker"), _updates("organizations_organization")
        for i in range(EVENTS):
            change = services.tracker_start if i % 2 == 0 else services.tracker_stop
            change(tracker_id=tracker.id, actor=org_with_members.member)
        tracker_after, org_after = _updates("trackers_tracker"), _updates("organizations_organization")
    tracker_updates, tracker_hot = (a - b for a, b in zip(tracker_after, tracker_before, strict=True))
    org_updates, org_hot = (a - b for a, b in zip(org_after, org_before, strict=True))
    assert tracker_updates == EVENTS and tracker_hot == EVENTS
    # the organization's first append of the test sets last_event_at (an indexed column): not HOT
    assert org_updates == EVENTS and org_hot >= EVENTS - 1
    tracker.refresh_from_db()
    assert not tracker.is_running and tracker.started_by_id is None


def test_last_event_at_moves_once_it_is_a_minute_old(org_with_members):
    org = org_with_members.org
    tracker = Tracker.objects.get(organization=org)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE organizations_organization SET last_event_at = clock_timestamp() - interval '30 s' "
                       "WHERE id = %s RETURNING last_event_at", [org.id])
        recent = cursor.fetchone()[0]
    services.tracker_start(tracker_id=tracker.id, actor=org_with_members.member)
    assert Organization.objects.get(pk=org.id).last_event_at == recent  # younger than a minute: kept
    Organization.objects.filter(pk=org.id).update(last_event_at=recent.replace(year=recent.year - 1))
    entry = services.tracker_stop(tracker_id=tracker.id, actor=org_with_members.member)
    moved = Organization.objects.get(pk=org.id).last_event_at
    assert moved > recent and abs(moved - entry.occurred_at) < timedelta(seconds=5)
