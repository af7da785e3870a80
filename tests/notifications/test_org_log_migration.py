"""The org log migration: existing tracker events become log entries with the same seq, and each
inbox notification points at its entry."""
import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("notifications", "0004_inapp_streams"), ("trackers", "0002_timeentry_started_by_blank")]
AFTER = [("notifications", "0005_org_log"), ("trackers", "0004_events_move_to_org_log")]


@pytest.fixture
def migrator():
    executor = MigrationExecutor(connection)
    yield executor
    executor = MigrationExecutor(connection)  # back to the latest schema for the tests that follow
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_tracker_events_and_notifications_move_to_the_org_log(migrator):
    executor = migrator
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    org = old.get_model("organizations", "Organization").objects.create(name="Acme", slug="acme", last_event_seq=2)
    user = old.get_model("organizations", "User").objects.create(username="ann", email="ann@example.com")
    old.get_model("organizations", "Membership").objects.create(organization=org, user=user, role="owner")
    tracker = old.get_model("trackers", "Tracker").objects.create(organization=org, name="Main")
    event_model = old.get_model("trackers", "TrackerEvent")
    events = [event_model.objects.create(organization=org, seq=seq, tracker=tracker, action=action, actor=user,
                                   actor_name="ann", occurred_at="2026-11-30T10:00:00Z")
              for seq, action in [(1, "start"), (2, "stop")]]
    old.get_model("notifications", "Notification").objects.create(
        organization=org, recipient=user, event=events[1], seq=2, kind="tracker.event", title="ann stopped Main",
        created_at="2026-11-30T10:00:01Z")

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    entries = list(new.get_model("notifications", "LogEntry").objects.filter(organization_id=org.id).order_by("seq"))
    assert [(e.seq, e.kind, e.payload["action"], e.payload["tracker_name"], e.audience) for e in entries] == [
        (1, "tracker.event", "start", "Main", [user.id]), (2, "tracker.event", "stop", "Main", [user.id])]
    notification = new.get_model("notifications", "Notification").objects.get()
    assert notification.entry_id == entries[1].id
