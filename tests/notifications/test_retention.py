"""Retention (notifications/retention.py): rows past the retention are archived to gzipped JSON
lines through the storage API and removed in batches; recent rows and pending deliveries stay; a
row a writer holds is skipped, not waited for; a crash between the file and the delete loses
nothing; beat schedules it on the maintenance queue. Real Postgres, the test media directory."""
import threading
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from config.routing import route_task
from notifications import retention
from notifications.models import Delivery, DeliveryStream, Notification, Send, SendDelivery
from tests.trackers.factories import TrackerEventFactory, TrackerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def archive_dir(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    settings.NOTIFICATION_RETENTION_PAUSE_SECONDS = 0
    return tmp_path


def _inbox(org_with_members, count, age_days):
    entry = TrackerEventFactory(tracker=TrackerFactory(organization=org_with_members.org))
    created = timezone.now() - timedelta(days=age_days)
    Notification.objects.bulk_create([
        Notification(organization=org_with_members.org, recipient=org_with_members.member, entry=None, seq=entry.seq,
                     kind="tracker.event", title=f"n{i}", body="", data={"i": i}, created_at=created)
        for i in range(count)])


def _delivery(org, status, age_days):
    stream, _ = DeliveryStream.objects.get_or_create(organization=org, channel="webhook", destination="1")
    delivery = Delivery.objects.create(organization=org, stream=stream, channel="webhook", first_seq=1, last_seq=1,
                                       status=status)
    Delivery.objects.filter(pk=delivery.pk).update(created_at=timezone.now() - timedelta(days=age_days))
    return delivery


def test_old_rows_are_archived_in_batches_and_removed_recent_ones_stay(org_with_members, archive_dir):
    _inbox(org_with_members, 5, age_days=91)
    _inbox(org_with_members, 2, age_days=10)
    old_ids = sorted(Notification.objects.filter(created_at__lt=timezone.now() - timedelta(days=90))
                     .values_list("id", flat=True))

    done = {a.model: a for a in retention.notifications_archive(batch=2)}

    notes = done["notifications.Notification"]
    assert notes.rows == 5 and len(notes.files) == 3  # 2 + 2 + 1
    archived = [row for name in notes.files for row in retention.archive_read(name)]
    assert [row["id"] for row in archived] == old_ids
    assert {row["title"] for row in archived} == {f"n{i}" for i in range(5)}
    assert archived[0]["data"] == {"i": archived[0]["data"]["i"]} and archived[0]["recipient_id"] == \
        org_with_members.member.id  # every column
    assert all(name.endswith(".jsonl.gz") and name.startswith("archive/notifications/notification/")
               for name in notes.files)
    assert (archive_dir / notes.files[0]).read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert Notification.objects.filter(title__startswith="n").count() == 2


def test_pending_deliveries_stay_whatever_their_age(org_with_members, archive_dir):
    org = org_with_members.org
    sent, dead = _delivery(org, "sent", 100), _delivery(org, "dead", 100)
    pending, recent = _delivery(org, "pending", 100), _delivery(org, "sent", 1)

    done = {a.model: a for a in retention.notifications_archive()}

    assert done["notifications.Delivery"].rows == 2
    assert set(Delivery.objects.values_list("id", flat=True)) == {pending.id, recent.id}
    archived = retention.archive_read(done["notifications.Delivery"].files[0])
    assert {row["id"] for row in archived} == {sent.id, dead.id}


def test_a_row_a_writer_holds_is_skipped_not_waited_for(org_with_members, archive_dir, transactional_db):
    _inbox(org_with_members, 3, age_days=95)
    held_id = Notification.objects.order_by("id").values_list("id", flat=True)[1]
    params = connection.get_connection_params()
    locked, release = threading.Event(), threading.Event()

    def writer():
        with psycopg.connect(host=params.get("host"), port=params.get("port"), user=params.get("user"),
                             dbname=settings.DATABASES["default"]["NAME"], autocommit=False) as conn:
            conn.execute("SELECT id FROM notifications_notification WHERE id = %s FOR UPDATE", [held_id])
            locked.set()
            release.wait(30)
            conn.rollback()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert locked.wait(10)
        done = {a.model: a for a in retention.notifications_archive(batch=10)}
    finally:
        release.set()
        thread.join()

    assert done["notifications.Notification"].rows == 2
    assert list(Notification.objects.values_list("id", flat=True)) == [held_id]
    assert retention.notifications_archive()[0].rows == 1  # next run takes it


def test_a_crash_before_the_delete_commits_loses_nothing_and_the_rerun_replaces_the_file(
        org_with_members, archive_dir, monkeypatch):
    _inbox(org_with_members, 3, age_days=120)
    real_delete = retention.apps.get_model("notifications.Notification").objects.filter

    def crash(*args, **kwargs):
        if "pk__in" in kwargs:
            raise RuntimeError("worker killed")
        return real_delete(*args, **kwargs)

    monkeypatch.setattr(Notification.objects, "filter", crash)
    with pytest.raises(RuntimeError):
        retention.notifications_archive()
    monkeypatch.undo()
    assert Notification.objects.count() == 3  # rolled back: still in the table

    [archived] = [a for a in retention.notifications_archive() if a.model == "notifications.Notification"]
    assert archived.rows == 3 and len(archived.files) == 1
    files = list((archive_dir / "archive/notifications/notification").rglob("*.jsonl.gz"))
    assert len(files) == 1  # the same name, replaced, not "..._abc123.jsonl.gz"


def test_bad_arguments_and_the_schedule(settings):
    with pytest.raises(ValueError):
        retention.notifications_archive(days=0)
    entry = settings.CELERY_BEAT_SCHEDULE["notifications.archive_notifications"]
    assert entry["task"] == "notifications.tasks.archive_notifications"
    assert route_task(entry["task"], (), {}, {}) == {"queue": "maintenance"}


def test_final_send_statuses_are_archived_and_pending_ones_stay(org_with_members, archive_dir):
    org, member = org_with_members.org, org_with_members.member
    send = Send.objects.create(organization=org, kind="welcome")
    done_row = SendDelivery.objects.create(send=send, organization=org, user=member, channel="inapp", state="sent")
    waiting = SendDelivery.objects.create(send=send, organization=org, user=member, channel="email",
                                          state="scheduled")
    SendDelivery.objects.update(created_at=timezone.now() - timedelta(days=200))

    done = {a.model: a for a in retention.notifications_archive()}

    assert done["notifications.SendDelivery"].rows == 1
    assert list(SendDelivery.objects.values_list("id", flat=True)) == [waiting.id]
    assert [row["id"] for row in retention.archive_read(done["notifications.SendDelivery"].files[0])] == [done_row.id]
