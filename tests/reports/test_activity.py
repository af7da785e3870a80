"""The activity log: every successful API write is one row (actor, org, action, object, IP);
partitions by day are created ahead and old days dropped whole."""
import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from organizations.services import api_key_create
from reports import activity
from reports.models import ActivityLog
from trackers.models import Tracker

pytestmark = pytest.mark.django_db


def test_writes_are_logged_reads_and_failures_are_not(auth_client, org_with_members):
    client = auth_client(org_with_members.owner)
    tracker = Tracker.objects.get(organization=org_with_members.org)
    client.get(f"/api/v1/orgs/{org_with_members.org.id}/trackers/")
    assert client.post(f"/api/v1/trackers/{tracker.id}/start").status_code == 200
    assert client.post(f"/api/v1/trackers/{tracker.id}/start").status_code == 409  # not a write that happened
    created = client.post(f"/api/v1/orgs/{org_with_members.org.id}/trackers/", {"name": "Two"}, format="json")
    assert created.status_code == 201
    rows = list(ActivityLog.objects.filter(organization_id=org_with_members.org.id).order_by("id"))
    assert [(r.method, r.action, r.object_type, r.object_id) for r in rows] == [
        ("POST", "tracker-start", "tracker", str(tracker.id)),
        ("POST", "org-trackers", "org-trackers", str(created.json()["id"])),
    ]
    first = rows[0]
    assert first.organization_id == org_with_members.org.id  # found from the tracker
    assert (first.actor_user_id, first.actor_name) == (org_with_members.owner.id, org_with_members.owner.username)
    assert first.ip == "127.0.0.1" and first.status == 200 and first.path == f"/api/v1/trackers/{tracker.id}/start"


def test_api_key_writes_name_the_key(api_key_client, org_with_members):
    api_key, key = api_key_create(organization=org_with_members.org, name="ci", created_by=org_with_members.owner)
    tracker = Tracker.objects.get(organization=org_with_members.org)
    assert api_key_client(key).post(f"/api/v1/trackers/{tracker.id}/start").status_code == 200
    row = ActivityLog.objects.get(actor_api_key_id=api_key.id)
    assert (row.actor_api_key_id, row.actor_user_id, row.organization_id) == (api_key.id, None,
                                                                               org_with_members.org.id)
    assert row.actor_name == f"api-key:{api_key.prefix}"


def test_logging_a_write_is_one_insert_and_reads_log_nothing(auth_client, org_with_members):
    client = auth_client(org_with_members.owner)
    url = f"/api/v1/orgs/{org_with_members.org.id}/trackers/"
    client.post(url, {"name": "warm"}, format="json")
    with CaptureQueriesContext(connection) as read:
        client.get(url)
    with CaptureQueriesContext(connection) as write:
        client.post(url, {"name": "Two"}, format="json")
    assert not [q for q in read.captured_queries if "reports_activitylog" in q["sql"]]
    logged = [q["sql"] for q in write.captured_queries if "reports_activitylog" in q["sql"]]
    assert len(logged) == 1 and logged[0].lstrip().startswith("INSERT")


@pytest.fixture
def empty_log(transactional_db):
    """The log is unmanaged (raw-SQL partitions), so Django's flush between transactional tests
    leaves it alone: start from an empty table with only the migration's partitions."""
    today = _today()
    with connection.cursor() as cur:
        cur.execute("TRUNCATE reports_activitylog")
        for name, day, _ in activity.activity_partitions():
            if day < today - dt.timedelta(days=1):
                cur.execute(f'ALTER TABLE reports_activitylog DETACH PARTITION "{name}"')
                cur.execute(f'DROP TABLE "{name}"')


def _partition_days() -> list[dt.date]:
    return [day for _, day, _ in activity.activity_partitions()]


def _today() -> dt.date:
    with connection.cursor() as cur:
        cur.execute("SELECT (now() AT TIME ZONE 'UTC')::date")
        return cur.fetchone()[0]


def test_purge_drops_whole_days_older_than_the_retention_and_keeps_the_rest(empty_log):
    today = _today()
    old_days = [today - dt.timedelta(days=n) for n in (45, 31, 30)]
    for day in old_days:
        activity.activity_partition_create(day=day)
        with connection.cursor() as cur:
            cur.execute("""INSERT INTO reports_activitylog (created_at, method, action, path, status)
                           SELECT %s::timestamptz + g * interval '1 minute', 'POST', 'x', '/api/x', 200
                           FROM generate_series(0, 99) g""", [f"{day.isoformat()} 00:00:00+00"])
    with connection.cursor() as cur:
        cur.execute("INSERT INTO reports_activitylog (method, action, path, status) VALUES ('POST','now','/',200)")
    dropped = activity.activity_purge(keep_days=30, pause=0)
    assert dropped == [activity.partition_name(today - dt.timedelta(days=45)),
                       activity.partition_name(today - dt.timedelta(days=31))]
    days = _partition_days()
    assert today - dt.timedelta(days=30) in days and today - dt.timedelta(days=31) not in days
    assert ActivityLog.objects.count() == 101  # the 30-days-old day (100) and today's row remain
    assert activity.activity_purge(keep_days=30, pause=0) == []  # idempotent


def test_partitions_are_created_ahead_and_on_demand(empty_log):
    today = _today()
    assert activity.activity_partitions_ensure(days_ahead=10) >= 1
    assert all(today + dt.timedelta(days=n) in _partition_days() for n in range(11))
    assert activity.activity_partitions_ensure(days_ahead=10) == 0
    # A write on a day without a partition (beat never ran) creates it instead of losing the row.
    with connection.cursor() as cur:
        cur.execute(f'ALTER TABLE reports_activitylog DETACH PARTITION "{activity.partition_name(today)}"')
        cur.execute(f'DROP TABLE "{activity.partition_name(today)}"')
    activity.activity_record(record=activity.ActivityRecord(
        organization_id=None, actor_user_id=None, actor_api_key_id=None, actor_name="", method="POST",
        action="x", object_type="", object_id="", path="/api/x", status=200, ip=None))
    assert today in _partition_days() and ActivityLog.objects.filter(action="x").count() == 1


def test_purge_refuses_to_run_inside_a_transaction():
    with pytest.raises(RuntimeError):
        activity.activity_purge()


def test_admin_lists_the_log(client, org_with_members, auth_client):
    from organizations.models import User

    tracker = Tracker.objects.get(organization=org_with_members.org)
    auth_client(org_with_members.owner).post(f"/api/v1/trackers/{tracker.id}/start")
    User.objects.create_superuser("root", "root@example.com", "pw-root-123")
    client.login(username="root", password="pw-root-123")
    page = client.get("/admin/reports/activitylog/")
    assert page.status_code == 200 and b"tracker-start" in page.content
    assert client.get("/admin/reports/activitylog/add/").status_code == 403
