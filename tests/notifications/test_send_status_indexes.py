"""The indexes of the send API's status rows (notifications_senddelivery, migration 0020): the
in-app claim (queued -> sent) is a HOT update, because no index has a column it writes (state,
sent_at, updated_at) in its key or predicate; a member's rows not yet due (change of zone) and an
organization's recent failures (failed_at) are still read by index, with many rows that went out."""
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from notifications.delivery import status
from notifications.delivery.fence import stream_deliver
from notifications.models import LogEntry, Send, SendDelivery
from notifications.send import schedule
from notifications.send.selectors import send_failures
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db

CLAIM_WRITES = ("state", "sent_at", "updated_at")


@pytest.fixture
def key_client(org_with_members, api_key_client):
    send_template(org_with_members.org)
    return api_key_client(ApiKeyFactory(organization=org_with_members.org).plaintext)


def _send(client, recipients, **body):
    response = client.post("/api/v1/send", {"recipients": recipients, "kind": "welcome",
                                            "data": {"title": "Hi", "body": "there"}, **body}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def _updates():
    with connection.cursor() as cursor:
        cursor.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
                       "WHERE relname = 'notifications_senddelivery'")
        return cursor.fetchone()


def _plan(sql, params) -> str:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE notifications_senddelivery")
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def _bulk_rows(send_id, org_id, *, user_sql: str, n: int, state: str, due_sql: str = "NULL", failed_sql="NULL",
               tag: str = "bulk"):
    """n synthetic status rows of one send (channel made unique per row), for the planner."""
    with connection.cursor() as cursor:
        cursor.execute(f"""
            INSERT INTO notifications_senddelivery
                (send_id, organization_id, user_id, channel, locale, state, due_at, failed_at, error)
            SELECT %s, %s, {user_sql}, %s || i, 'en', %s, {due_sql}, {failed_sql}, ''
            FROM generate_series(1, %s) AS i""", [send_id, org_id, tag, state, n])


def test_no_index_of_the_status_rows_has_a_column_the_claim_writes():
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT i.relname, pg_get_indexdef(x.indexrelid), COALESCE(pg_get_expr(x.indpred, x.indrelid), '')
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indrelid = 'notifications_senddelivery'::regclass""")
        indexes = cursor.fetchall()
    names = {name for name, _, _ in indexes}
    assert {"senddelivery_user_due", "senddelivery_org_failed"} <= names
    assert not names & {"senddelivery_due", "senddelivery_user_scheduled", "senddelivery_org_failures"}
    for name, definition, predicate in indexes:
        columns = definition.split(" USING ", 1)[1]
        for column in CLAIM_WRITES:
            assert column not in columns and column not in predicate, (name, definition)
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = 'notifications_senddelivery'::regclass")
        assert "fillfactor=50" in cursor.fetchone()[0]


def test_the_in_app_claim_is_a_hot_update(org_with_members, key_client):
    o = org_with_members
    send_id = _send(key_client, [o.member.pk, o.admin.pk])
    updates, hot = _updates()
    stream_deliver(org_id=o.org.id, channel="inapp")
    assert set(SendDelivery.objects.filter(send_id=send_id).values_list("state", flat=True)) == {"sent"}
    after_updates, after_hot = _updates()
    assert after_updates - updates == 2
    assert after_hot - hot == 2


def test_failed_and_dead_rows_get_failed_at_and_the_failures_query_reads_its_index(org_with_members, key_client):
    o = org_with_members
    send_id = _send(key_client, [o.member.pk, o.admin.pk])
    entries = list(LogEntry.objects.filter(pk=SendDelivery.objects.filter(send_id=send_id).values("entry_id")[:1]))
    assert status.run_record(channel="inapp", recipient_id=o.member.pk, entries=entries, state="failed",
                             from_states=("queued",)) == 1
    failed = SendDelivery.objects.get(send_id=send_id, user=o.member)
    assert failed.state == "failed" and failed.failed_at is not None
    assert SendDelivery.objects.get(send_id=send_id, user=o.admin).failed_at is None
    assert status.run_record(channel="inapp", recipient_id=o.member.pk, entries=entries, state="dead") == 1
    dead = SendDelivery.objects.get(send_id=send_id, user=o.member)
    assert dead.state == "dead" and dead.failed_at >= failed.failed_at
    since = timezone.now() - timedelta(hours=1)
    assert [row.pk for row in send_failures(organization_id=o.org.id, since=since)] == [dead.pk]
    assert list(send_failures(organization_id=o.org.id + 1, since=since)) == []
    # A row that failed and then went out keeps failed_at, and is no failure of now.
    assert status.run_record(channel="inapp", recipient_id=o.member.pk, entries=entries, state="sent",
                             from_states=("dead",)) == 1
    assert list(send_failures(organization_id=o.org.id, since=since)) == []
    # Realistic data: many rows that went out, of this and other organizations.
    _bulk_rows(send_id, o.org.id, user_sql="1000000 + i", n=20000, state="sent")
    _bulk_rows(send_id, o.org.id + 1, user_sql="2000000 + i", n=500, state="dead",
               failed_sql="now() - i * interval '1 minute'")
    sql, params = send_failures(organization_id=o.org.id, since=since).query.sql_with_params()
    plan = _plan(sql, params)
    assert "senddelivery_org_failed" in plan and "Seq Scan on notifications_senddelivery" not in plan, plan


def test_the_zone_change_read_uses_the_members_due_index_among_many_rows_that_went_out(org_with_members, key_client):
    o = org_with_members
    send_id = _send(key_client, [o.member.pk], deliver_at_local=(timezone.now() + timedelta(days=2))
                    .strftime("%Y-%m-%d %H:%M"))
    assert SendDelivery.objects.get(send_id=send_id).state == "scheduled"
    # The member's and others' rows of sends that went out: their due times in the past.
    _bulk_rows(send_id, o.org.id, user_sql=str(o.member.pk), n=3000, state="sent",
               due_sql="now() - i * interval '1 minute'")
    _bulk_rows(send_id, o.org.id, user_sql="1000000 + i %% 2000", n=20000, state="sent",
               due_sql="now() - i * interval '1 minute'")
    _bulk_rows(send_id, o.org.id, user_sql="1000000 + i %% 2000", n=20000, state="sent", tag="undated")
    plan = _plan(schedule._MEMBER_SCHEDULED_SQL, {"user": o.member.pk, "now": timezone.now()})
    assert "senddelivery_user_due" in plan and "Seq Scan on notifications_senddelivery" not in plan, plan


def test_the_status_rows_have_no_database_foreign_key_or_trigger():
    # Deferred constraint checks cost a lookup per row at COMMIT (migration 0021): none is left.
    with connection.cursor() as cursor:
        cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'notifications_senddelivery'::regclass "
                       "AND contype = 'f'")
        assert cursor.fetchall() == []
        cursor.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'notifications_senddelivery'::regclass")
        assert cursor.fetchall() == []


def test_deleting_a_send_still_removes_its_status_rows(org_with_members, key_client):
    o = org_with_members
    kept = _send(key_client, [o.member.pk])
    gone = _send(key_client, [o.member.pk, o.admin.pk])
    assert SendDelivery.objects.filter(send_id=gone).count() == 2
    Send.objects.filter(pk=gone).delete()
    assert not SendDelivery.objects.filter(send_id=gone).exists()
    assert SendDelivery.objects.filter(send_id=kept).count() == 1


def test_deleting_an_organization_removes_its_sends_status_rows(org_with_members, other_org, key_client,
                                                                 api_key_client):
    o = org_with_members
    _send(key_client, [o.member.pk, o.admin.pk])
    send_template(other_org.org)
    other_client = api_key_client(ApiKeyFactory(organization=other_org.org).plaintext)
    theirs = _send(other_client, [other_org.member.pk])
    o.org.delete()
    assert not Send.objects.filter(organization_id=o.org.pk).exists()
    assert list(SendDelivery.objects.values_list("send_id", flat=True)) == [theirs]
