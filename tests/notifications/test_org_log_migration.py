"""The org log migration: existing tracker events become log entries with the same seq, and each
inbox notification points at its entry. Run on a scratch database of its own (real `migrate`
commands), so it never takes locks on the schema the rest of the suite is using."""
import os
import subprocess
import sys

import psycopg
import pytest
from django.db import connection

from tests.support.stack import PROJECT_ROOT, database_url


def _admin(settings_dict: dict):
    return psycopg.connect(host=settings_dict.get("HOST") or "127.0.0.1", port=settings_dict.get("PORT") or 5432,
                           user=settings_dict.get("USER") or "postgres", password=settings_dict.get("PASSWORD") or None,
                           dbname="postgres", autocommit=True)


def _migrate(url: str, *args: str) -> None:
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0", *args], cwd=PROJECT_ROOT, env=env,
                   check=True, timeout=300)


@pytest.fixture
def scratch_db():
    settings_dict = dict(connection.settings_dict)
    name = f"{settings_dict['NAME']}_migration"
    with _admin(settings_dict) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = database_url({**settings_dict, "NAME": name})
    yield url
    with _admin(settings_dict) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.django_db
def test_tracker_events_and_notifications_move_to_the_org_log(scratch_db):
    _migrate(scratch_db, "trackers", "0003_comments_and_entry_notes")
    _migrate(scratch_db, "notifications", "0004_inapp_streams")
    with psycopg.connect(scratch_db, autocommit=True) as db:
        org = db.execute("INSERT INTO organizations_organization (name, slug, time_zone, last_event_seq, created_at) "
                         "VALUES ('Acme', 'acme', 'UTC', 2, now()) RETURNING id").fetchone()[0]
        user = db.execute(
            "INSERT INTO organizations_user (username, email, password, is_superuser, is_staff, is_active, "
            "first_name, last_name, date_joined, time_zone, phone, postal_code, slack_user_id) "
            "VALUES ('ann', 'ann@example.com', '!', false, false, true, '', '', now(), 'UTC', '', '', '') "
            "RETURNING id").fetchone()[0]
        db.execute("INSERT INTO organizations_membership (organization_id, user_id, role, created_at) "
                   "VALUES (%s, %s, 'owner', now())", [org, user])
        tracker = db.execute("INSERT INTO trackers_tracker (organization_id, name, is_running, created_at) "
                             "VALUES (%s, 'Main', false, now()) RETURNING id", [org]).fetchone()[0]
        events = [db.execute("INSERT INTO trackers_trackerevent (organization_id, seq, tracker_id, action, actor_id, "
                             "actor_name, occurred_at) VALUES (%s, %s, %s, %s, %s, 'ann', now()) RETURNING id",
                             [org, seq, tracker, action, user]).fetchone()[0]
                  for seq, action in [(1, "start"), (2, "stop")]]
        db.execute("INSERT INTO notifications_notification (organization_id, recipient_id, event_id, seq, kind, "
                   "title, body, data, created_at) VALUES (%s, %s, %s, 2, 'tracker.event', 'ann stopped Main', '', "
                   "'{}', now())", [org, user, events[1]])

    _migrate(scratch_db)

    with psycopg.connect(scratch_db) as db:
        entries = db.execute("SELECT id, seq, kind, payload->>'action', payload->>'tracker_name', audience "
                             "FROM notifications_logentry WHERE organization_id = %s ORDER BY seq", [org]).fetchall()
        notification_entry = db.execute("SELECT entry_id FROM notifications_notification").fetchone()[0]
        tracker_events_gone = db.execute("SELECT to_regclass('trackers_trackerevent') IS NULL").fetchone()[0]
    assert [e[1:] for e in entries] == [(1, "tracker.event", "start", "Main", [user]),
                                        (2, "tracker.event", "stop", "Main", [user])]
    assert notification_entry == entries[1][0]
    assert tracker_events_gone


@pytest.mark.django_db
def test_existing_per_recipient_streams_get_their_member(scratch_db):
    """0011: email, sms and whatsapp streams (destination: a user id) and push streams (a device id)
    get DeliveryStream.user; organization-wide streams keep none."""
    _migrate(scratch_db, "notifications", "0010_send")
    with psycopg.connect(scratch_db, autocommit=True) as db:
        org = db.execute("INSERT INTO organizations_organization (name, slug, time_zone, last_event_seq, created_at) "
                         "VALUES ('Acme', 'acme', 'UTC', 0, now()) RETURNING id").fetchone()[0]
        ann, bob = [db.execute(
            "INSERT INTO organizations_user (username, email, password, is_superuser, is_staff, is_active, "
            "first_name, last_name, date_joined, time_zone, phone, postal_code, slack_user_id) "
            "VALUES (%s, %s, '!', false, false, true, '', '', now(), 'UTC', '', '', '') RETURNING id",
            [name, f"{name}@example.com"]).fetchone()[0] for name in ("ann", "bob")]
        device = db.execute("INSERT INTO notifications_device (user_id, token, platform, name, created_at, "
                            "last_seen_at) VALUES (%s, 'tok-0123456789abcdef', 'android', '', now(), now()) "
                            "RETURNING id", [bob]).fetchone()[0]
        streams = {("email", str(ann)): ann, ("sms", str(ann)): ann, ("whatsapp", str(bob)): bob,
                   ("push", str(device)): bob, ("inapp", ""): None, ("webhook", "7"): None,
                   ("sms", "999999"): None}  # a user that is gone keeps none
        for channel, destination in streams:
            db.execute("INSERT INTO notifications_deliverystream (organization_id, channel, destination, "
                       "delivered_seq, head_attempts, last_error, on_dead_letter, held, active, updated_at) "
                       "VALUES (%s, %s, %s, 0, 0, '', 'skip', false, true, now())", [org, channel, destination])
    _migrate(scratch_db, "notifications", "0011_stream_member")
    with psycopg.connect(scratch_db, autocommit=True) as db:
        got = {(c, d): u for c, d, u in db.execute(
            "SELECT channel, destination, user_id FROM notifications_deliverystream").fetchall()}
    assert got == streams
