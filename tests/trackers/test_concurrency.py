"""Concurrent start/stop through trackers.services on real Postgres connections: the per-organization
seq stays gapless and unique, every event is a success some caller saw, and the tracker, its time
entries and its event log agree."""
import threading
from collections import Counter
from dataclasses import dataclass, field

import pytest
from django.db import connection

from config.errors import Conflict
from organizations.models import Organization
from tests.organizations.factories import OrganizationFactory, UserFactory
from tests.trackers.factories import TrackerFactory
from trackers import services
from notifications.models import LogEntry
from trackers.models import TimeEntry, Tracker

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Outcome:
    successes: list = field(default_factory=list)   # (event id, seq, tracker id, action)
    conflicts: list = field(default_factory=list)   # (tracker id, action, code)
    errors: list = field(default_factory=list)      # anything else is a bug
    lock: threading.Lock = field(default_factory=threading.Lock)


def _attempt(outcome: Outcome, tracker_id: int, action: str, actor) -> None:
    change = services.tracker_start if action == "start" else services.tracker_stop
    try:
        event = change(tracker_id=tracker_id, actor=actor)
    except Conflict as exc:
        with outcome.lock:
            outcome.conflicts.append((tracker_id, action, exc.code))
    except Exception as exc:  # collected and asserted empty below
        with outcome.lock:
            outcome.errors.append(repr(exc))
    else:
        with outcome.lock:
            outcome.successes.append((event.id, event.seq, tracker_id, action))


def _run_threads(count: int, target) -> None:
    barrier = threading.Barrier(count)

    def body(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(index)
        finally:
            connection.close()  # each thread has its own connection; do not leak it past the test

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"


def _assert_org_log_consistent(organization: Organization, outcome: Outcome) -> list[LogEntry]:
    events = list(LogEntry.objects.filter(organization=organization).order_by("seq"))
    n = len(events)
    assert n > 0
    assert [e.seq for e in events] == list(range(1, n + 1)), "seq must be exactly 1..N, gapless and unique"
    organization.refresh_from_db()
    assert organization.last_event_seq == n
    org_tracker_ids = set(Tracker.objects.filter(organization=organization).values_list("id", flat=True))
    mine = [s for s in outcome.successes if s[2] in org_tracker_ids]
    assert {(e.id, e.seq, e.payload["tracker_id"], e.payload["action"]) for e in events} == set(mine), \
        "every event is exactly one reported success and vice versa"
    assert len(mine) == n
    return events


def _assert_tracker_consistent(tracker: Tracker, events: list[LogEntry]) -> None:
    own = [e for e in events if e.payload["tracker_id"] == tracker.id]
    # A tracker's events alternate start, stop, start, ... in seq order.
    assert [e.payload["action"] for e in own] == [("start", "stop")[i % 2] for i in range(len(own))]
    tracker.refresh_from_db()
    last = own[-1].payload["action"] if own else "stop"
    assert tracker.is_running is (last == "start")
    starts = sum(1 for e in own if e.payload["action"] == "start")
    stops = len(own) - starts
    entries = TimeEntry.objects.filter(tracker=tracker)
    assert entries.count() == starts
    assert entries.filter(stopped_at__isnull=False).count() == stops
    assert entries.filter(stopped_at__isnull=True).count() == (1 if tracker.is_running else 0)
    if tracker.is_running:
        assert tracker.started_at == own[-1].occurred_at
        assert entries.get(stopped_at__isnull=True).started_at == own[-1].occurred_at
    else:
        assert tracker.started_at is None and tracker.started_by_id is None
    for entry in entries.filter(stopped_at__isnull=False):
        assert entry.duration == entry.stopped_at - entry.started_at


def test_many_threads_alternating_start_stop_on_one_tracker():
    organization = OrganizationFactory()
    tracker = TrackerFactory(organization=organization)
    actors = UserFactory.create_batch(8)
    outcome = Outcome()

    def worker(index: int) -> None:
        for attempt in range(25):
            action = "start" if (index + attempt) % 2 == 0 else "stop"
            _attempt(outcome, tracker.id, action, actors[index])

    _run_threads(8, worker)

    assert outcome.errors == []
    assert len(outcome.successes) + len(outcome.conflicts) == 8 * 25
    assert len(outcome.successes) >= 2, "the race should let several changes through"
    assert {code for _, action, code in outcome.conflicts} <= {"tracker_already_running", "tracker_not_running"}
    for _, action, code in outcome.conflicts:
        assert code == ("tracker_already_running" if action == "start" else "tracker_not_running")
    events = _assert_org_log_consistent(organization, outcome)
    _assert_tracker_consistent(tracker, events)
    # Each event records the actor whose call succeeded.
    by_id = {s[0]: s for s in outcome.successes}
    assert all(e.actor_id is not None and e.actor_name for e in events)
    assert all(by_id[e.id][3] == e.payload["action"] for e in events)


def test_two_simultaneous_starts_one_wins_one_conflicts():
    tracker = TrackerFactory()
    actors = UserFactory.create_batch(2)
    outcome = Outcome()

    _run_threads(2, lambda i: _attempt(outcome, tracker.id, "start", actors[i]))

    assert outcome.errors == []
    assert len(outcome.successes) == 1
    assert outcome.conflicts == [(tracker.id, "start", "tracker_already_running")]
    assert LogEntry.objects.count() == 1
    assert LogEntry.objects.get().seq == 1
    assert TimeEntry.objects.filter(tracker=tracker, stopped_at__isnull=True).count() == 1
    tracker.refresh_from_db()
    assert tracker.is_running


def test_two_simultaneous_stops_one_wins_one_conflicts():
    tracker = TrackerFactory()
    services.tracker_start(tracker_id=tracker.id, actor=None)
    outcome = Outcome()

    _run_threads(2, lambda i: _attempt(outcome, tracker.id, "stop", None))

    assert outcome.errors == []
    assert len(outcome.successes) == 1
    assert outcome.conflicts == [(tracker.id, "stop", "tracker_not_running")]
    assert list(LogEntry.objects.order_by("seq").values_list("seq", "payload__action")) == [(1, "start"), (2, "stop")]
    assert not TimeEntry.objects.filter(stopped_at__isnull=True).exists()


def test_several_trackers_racing_keep_one_gapless_seq_per_org():
    org_a, org_b = OrganizationFactory(), OrganizationFactory()
    trackers = TrackerFactory.create_batch(4, organization=org_a) + TrackerFactory.create_batch(2, organization=org_b)
    actor = UserFactory()
    outcome = Outcome()

    def worker(index: int) -> None:
        for attempt in range(20):
            tracker = trackers[(index + attempt) % len(trackers)]
            action = "start" if (index // 2 + attempt) % 2 == 0 else "stop"
            _attempt(outcome, tracker.id, action, actor)

    _run_threads(8, worker)

    assert outcome.errors == []
    assert len(outcome.successes) + len(outcome.conflicts) == 8 * 20
    for organization in (org_a, org_b):
        events = _assert_org_log_consistent(organization, outcome)
        for tracker in trackers:
            if tracker.organization_id == organization.id:
                _assert_tracker_consistent(tracker, events)
    per_org = Counter(LogEntry.objects.values_list("organization_id", flat=True))
    assert set(per_org) == {org_a.id, org_b.id}
