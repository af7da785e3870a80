"""POST /api/v1/send, GET|DELETE /api/v1/send/{id}, GET /api/v1/send/{id}/deliveries (issue 13 #1,
#2, #9, #11): validation naming the field, another organization's recipients refused like a 404
and never delivered, one log entry per send, set-based status rows moved once by the in-app
fan-out, cancellation the fan-out honours, scheduled sends dispatched by beat's task, Stripe's
Idempotency-Key rules."""
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.delivery.fence import stream_deliver
from notifications.models import DeliveryStream, IdempotencyKey, LogEntry, Notification, Send, SendDelivery
from notifications.send import idempotency, services
from notifications.send.apis import SendCreateApi, send_input_plain
from notifications.send.schedule import local_due
from notifications.templating import template_create
from organizations.models import ApiKeyScope
from tests.conftest import assert_error
from tests.organizations.factories import ApiKeyFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def send_template(organization, kind: str = "welcome", category: str = "transactional", email: bool = False):
    """The organization's template of `kind`: in-app (and email) parts from `title` and `body`."""
    parts = {"inapp": {"title": "{{ title }}", "body": "{{ body }}"}}
    if email:
        parts["email"] = {"subject": "{{ title }}", "text": "{{ body }}", "html": "<p>{{ body }}</p>"}
    return template_create(organization=organization, kind=kind, locale="en", category=category, parts=parts,
                           variables=["title", "body"])


@pytest.fixture
def key_client(org_with_members, api_key_client):
    send_template(org_with_members.org)
    key = ApiKeyFactory(organization=org_with_members.org)
    return api_key_client(key.plaintext)


def _drain(org) -> None:
    stream_deliver(org_id=org.id, channel="inapp")


def _send(client, key: str | None = None, **body):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post("/api/v1/send", {"kind": "welcome", "data": {"title": "Hi", "body": "Welcome"}, **body},
                       format="json", **headers)


# --- accepting a send -------------------------------------------------------------------------------

def test_a_send_is_one_log_entry_with_a_status_row_per_recipient_and_channel(org_with_members, key_client):
    o = org_with_members
    response = _send(key_client, recipients=[o.member.pk, o.admin.email.upper()])
    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == {"id", "status", "recipients"} and body["status"] == "queued" and body["recipients"] == 2
    send = Send.objects.get(pk=body["id"])
    entry = LogEntry.objects.get(organization=o.org, kind="message")
    assert send.entry_id == entry.id and sorted(entry.audience) == sorted([o.member.pk, o.admin.pk])
    assert entry.payload["parts"]["en"]["inapp"] == {"title": "Hi", "body": "Welcome"}
    assert entry.payload["send_id"] == send.pk
    rows = SendDelivery.objects.filter(send=send)
    assert sorted((r.user_id, r.channel, r.state) for r in rows) == sorted(
        [(o.member.pk, "inapp", "queued"), (o.admin.pk, "inapp", "queued")])


def test_a_keyed_send_is_ten_statements_and_its_row_is_what_the_orm_reads(org_with_members, key_client):
    """The hot path of issue 13, pinned: the API key; the key's advisory lock and its lookup; the
    members; the organization's locale with the kind's templates (one statement); the send's
    INSERT; the log append; the status rows (with the send's payload and entry, one statement);
    the key's answer; the activity row. Under the test's transaction the view's two atomic blocks
    and the activity row's are savepoints (2 statements each)."""
    o = org_with_members
    assert _send(key_client, recipients=[o.member.pk]).status_code == 202  # the key's first use writes last_used_at
    with CaptureQueriesContext(connection) as queries:
        response = _send(key_client, key="pinned", recipients=[o.member.pk, o.admin.pk])
    assert response.status_code == 202, response.content
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 10, "\n".join(s[:100] for s in statements)
    send = Send.objects.get(pk=response.json()["id"])
    entry = LogEntry.objects.filter(organization=o.org, kind="message").latest("seq")
    assert (send.organization_id, send.kind, send.category, send.status, send.priority, send.channels,
            send.recipients, send.data, send.api_key.organization_id, send.entry_id) == (
        o.org.id, "welcome", "transactional", "queued", "transactional", ["inapp"], 2,
        {"title": "Hi", "body": "Welcome"}, o.org.id, entry.id)
    assert send.payload == entry.payload and send.payload["send_id"] == send.pk
    assert send.created_at is not None and send.due_at is None and send.cancelled_at is None


def test_the_in_app_fan_out_writes_inbox_rows_with_the_template_and_marks_rows_sent(org_with_members, key_client):
    o = org_with_members
    send_id = _send(key_client, recipients=[o.member.pk, o.admin.pk]).json()["id"]
    _drain(o.org)
    inbox = Notification.objects.filter(kind="message").order_by("recipient_id")
    assert [(n.recipient_id, n.title, n.body) for n in inbox] == sorted(
        [(o.member.pk, "Hi", "Welcome"), (o.admin.pk, "Hi", "Welcome")])
    assert inbox[0].data["send_id"] == send_id
    assert not Notification.objects.filter(recipient=o.owner, kind="message").exists()  # not a recipient
    assert set(SendDelivery.objects.filter(send_id=send_id).values_list("state", flat=True)) == {"sent"}
    assert all(r.sent_at for r in SendDelivery.objects.filter(send_id=send_id))
    # A redelivered drain (the cursor rolled back by hand) writes nothing twice.
    DeliveryStream.objects.filter(organization=o.org, channel="inapp").update(delivered_seq=0)
    _drain(o.org)
    assert Notification.objects.filter(kind="message").count() == 2


def test_a_topic_send_reaches_every_member(org_with_members, key_client):
    o = org_with_members
    response = _send(key_client, recipients={"topic": "members"})
    assert response.status_code == 202 and response.json()["recipients"] == 3
    _drain(o.org)
    assert Notification.objects.filter(kind="message").count() == 3


def test_a_user_token_names_the_organization_and_must_be_an_admin(org_with_members, other_org, auth_client):
    o = org_with_members
    send_template(o.org)
    assert _send(auth_client(o.admin), organization=o.org.pk, recipients=[o.member.pk]).status_code == 202
    assert_error(_send(auth_client(o.admin), recipients=[o.member.pk]), 400, "validation_error")
    assert_error(_send(auth_client(o.member), organization=o.org.pk, recipients=[o.owner.pk]), 403, "admin_required")
    assert_error(_send(auth_client(o.admin), organization=other_org.org.pk, recipients=[other_org.member.pk]),
                 404, "organization_not_found")
    for organization in (2**63, 2**70):  # past bigint: a 400 naming the field, not a 500 from Postgres
        error = assert_error(_send(auth_client(o.admin), organization=organization, recipients=[o.member.pk]),
                             400, "validation_error")
        assert "organization" in error["extra"]["fields"]
        batch = auth_client(o.admin).post("/api/v1/send/batch", {"organization": organization, "sends": [
            {"recipients": [o.member.pk], "kind": "welcome", "data": {"title": "Hi", "body": "x"}}]}, format="json")
        assert "organization" in assert_error(batch, 400, "validation_error")["extra"]["fields"]


def test_an_api_key_needs_the_send_scope(org_with_members, api_key_client):
    send_template(org_with_members.org)
    key = ApiKeyFactory(organization=org_with_members.org, scopes=[ApiKeyScope.ORGS_READ])
    assert_error(_send(api_key_client(key.plaintext), recipients=[org_with_members.member.pk]), 403,
                 "scope_required")


def test_recipients_of_another_organization_are_refused_like_a_404_and_nothing_is_written(
        org_with_members, other_org, key_client):
    o = org_with_members
    for recipients in ([o.member.pk, other_org.member.pk], [other_org.admin.email], [999_999]):
        body = assert_error(_send(key_client, recipients=recipients), 404, "recipient_not_found")
        assert len(body["extra"]["recipients"]) == 1
    assert not Send.objects.exists() and not LogEntry.objects.filter(kind="message").exists()
    assert not SendDelivery.objects.exists()


def test_named_recipients_are_read_by_their_keys_not_by_scanning_the_users(org_with_members):
    """The named members' read starts from the ids and emails (an index probe each), whatever the
    planner's statistics say: 5,000 users added since the tables were last analyzed."""
    o = org_with_members
    with connection.cursor() as cursor:
        cursor.execute("""INSERT INTO organizations_user (password, is_superuser, username, first_name, last_name,
                          email, is_staff, is_active, date_joined, time_zone, phone, postal_code, slack_user_id)
                          SELECT '', false, 'bulk' || g, '', '', 'bulk' || g || '@example.com', false, true, now(),
                                 'UTC', '', '', '' FROM generate_series(1, 5000) g""")
        cursor.execute("""INSERT INTO organizations_membership (organization_id, user_id, role, created_at)
                          SELECT %s, id, 'member', now() FROM organizations_user WHERE username LIKE 'bulk%%'""",
                       [o.org.pk])
        cursor.execute("SELECT id FROM organizations_user WHERE username LIKE 'bulk%' ORDER BY id LIMIT 10")
        ids = [row[0] for row in cursor.fetchall()]
        params = {"org": o.org.pk, "ids": ids, "emails": [o.admin.email.lower()]}
        cursor.execute("EXPLAIN " + services._MEMBERS_NAMED_SQL, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan" not in plan, plan
    rows = services._members_read(organization_id=o.org.pk, everyone=False, ids=ids, emails=[o.admin.email])
    assert [row[0] for row in rows] == sorted([*ids, o.admin.pk])
    assert len(services._members_read(organization_id=o.org.pk, everyone=True, ids=[], emails=[])) == 5003


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"recipients": []}, "recipients", "validation_error"),
    ({"recipients": "everyone"}, "recipients", "validation_error"),
    ({"recipients": {"topic": "admins"}}, "recipients", "validation_error"),
    ({"recipients": [True]}, "recipients", "validation_error"),
    ({"recipients": [2**63]}, "recipients", "validation_error"),  # past bigint: was a 500 (DataError)
    ({"recipients": [2**70, 1]}, "recipients", "validation_error"),
    ({"recipients": [0]}, "recipients", "validation_error"),
    ({"recipients": [-5]}, "recipients", "validation_error"),
    ({"kind": "Bad Kind!"}, "kind", "unknown_template"),
    ({"kind": "no-such-template"}, "kind", "unknown_template"),
    ({"channels": ["pigeon"]}, "channels", "unknown_channel"),
    ({"channels": ["slack"]}, "channels", "channel_not_supported"),
    ({"channels": ["inapp", "inapp"]}, "channels", "validation_error"),
    ({"priority": "urgent"}, "priority", "validation_error"),
    ({"send_at": "tomorrow"}, "send_at", "validation_error"),
    ({"deliver_at_local": "25:00"}, "deliver_at_local", "validation_error"),
    ({"deliver_at_local": "9am"}, "deliver_at_local", "validation_error"),
    ({"send_at": "2030-01-01T00:00:00Z", "deliver_at_local": "09:00"}, "deliver_at_local", "validation_error"),
    ({"send_at": "2099-01-01T00:00:00Z"}, "send_at", "validation_error"),
    ({"surprise": 1}, "surprise", "unknown_field"),
])
def test_bad_input_is_a_400_naming_the_field(org_with_members, key_client, body, field, code):
    body = {"recipients": [org_with_members.member.pk], **body}
    error = assert_error(_send(key_client, **body), 400, "validation_error" if code == "unknown_field" else code)
    assert field in error["extra"]["fields"], error
    assert not Send.objects.exists()


def test_a_channel_the_template_has_no_part_for_and_data_that_does_not_fit_are_400(org_with_members, key_client):
    send_template(org_with_members.org, kind="inapp-only")
    error = assert_error(_send(key_client, kind="inapp-only", recipients=[org_with_members.member.pk],
                               channels=["email"]), 400, "channel_not_supported")
    assert "channels" in error["extra"]["fields"]
    response = key_client.post("/api/v1/send", {"kind": "welcome", "recipients": [org_with_members.member.pk],
                                                "data": {"title": "only a title"}}, format="json")
    error = assert_error(response, 400, "template_render_error")
    assert error["extra"]["channel"] and error["extra"]["field"]
    assert not Send.objects.exists()


def test_the_templates_category_sets_the_default_priority(org_with_members, key_client):
    send_template(org_with_members.org, kind="spring-sale", category="marketing")
    body = _send(key_client, kind="spring-sale", recipients=[org_with_members.member.pk]).json()
    assert Send.objects.get(pk=body["id"]).priority == "promotional"
    assert Send.objects.get(pk=body["id"]).category == "marketing"


def test_ten_thousand_recipients_pass_the_limit_and_ten_thousand_and_one_do_not(org_with_members, key_client):
    error = assert_error(_send(key_client, recipients=list(range(1, 10_002))), 400, "too_many_recipients")
    assert "recipients" in error["extra"]["fields"]
    # 10,000 is within the limit: refused only because these ids are not members.
    assert_error(_send(key_client, recipients=list(range(1, 10_001))), 404, "recipient_not_found")


def test_ten_thousand_members_fan_out_set_based(org_with_members, key_client):
    o = org_with_members
    with connection.cursor() as cursor:  # 10,000 extra members in two statements
        cursor.execute("""INSERT INTO organizations_user (password, is_superuser, username, first_name, last_name,
                          email, is_staff, is_active, date_joined, time_zone, phone, postal_code, slack_user_id)
                          SELECT '', false, 'bulk' || g, '', '', 'bulk' || g || '@example.com', false, true, now(),
                                 'UTC', '', '', '' FROM generate_series(1, 9997) g""")
        cursor.execute("""INSERT INTO organizations_membership (organization_id, user_id, role, created_at)
                          SELECT %s, id, 'member', now() FROM organizations_user WHERE username LIKE 'bulk%%'""",
                       [o.org.pk])
    with CaptureQueriesContext(connection) as queries:
        response = _send(key_client, recipients={"topic": "members"})
    assert response.status_code == 202 and response.json()["recipients"] == 10_000
    assert len(queries) <= 16, [q["sql"][:80] for q in queries]  # no statement per recipient
    with CaptureQueriesContext(connection) as queries:
        _drain(o.org)
    assert len(queries) <= 12
    assert Notification.objects.filter(kind="message").count() == 10_000
    assert SendDelivery.objects.filter(state="sent").count() == 10_000


# --- status, deliveries, cancel -----------------------------------------------------------------------

def test_status_counts_per_channel_and_state(org_with_members, key_client):
    o = org_with_members
    send_id = _send(key_client, recipients=[o.member.pk, o.admin.pk]).json()["id"]
    body = key_client.get(f"/api/v1/send/{send_id}").json()
    assert body["counts"] == {"inapp": {"queued": 2}} and body["status"] == "queued" and body["seq"] >= 1
    _drain(o.org)
    assert key_client.get(f"/api/v1/send/{send_id}").json()["counts"] == {"inapp": {"sent": 2}}


def test_deliveries_list_is_paginated_in_a_fixed_number_of_queries(org_with_members, key_client,
                                                                  django_assert_max_num_queries):
    o = org_with_members
    for _ in range(5):
        MembershipFactory(organization=o.org)
    send_id = _send(key_client, recipients={"topic": "members"}).json()["id"]
    with django_assert_max_num_queries(6):  # key auth (2), send, count, page
        response = key_client.get(f"/api/v1/send/{send_id}/deliveries?page_size=3")
    body = response.json()
    assert body["count"] == 8 and len(body["results"]) == 3 and body["next"]
    assert set(body["results"][0]) >= {"recipient", "channel", "state", "sent_at", "updated_at"}
    assert key_client.get(f"/api/v1/send/{send_id}/deliveries?state=sent").json()["count"] == 0
    assert_error(key_client.get(f"/api/v1/send/{send_id}/deliveries?state=lost"), 400, "validation_error")


def test_another_organizations_send_is_404(org_with_members, other_org, key_client, api_key_client, auth_client):
    send_id = _send(key_client, recipients=[org_with_members.member.pk]).json()["id"]
    other = api_key_client(ApiKeyFactory(organization=other_org.org).plaintext)
    for client in (other, auth_client(other_org.owner), auth_client(UserFactory())):
        assert_error(client.get(f"/api/v1/send/{send_id}"), 404, "send_not_found")
        assert_error(client.get(f"/api/v1/send/{send_id}/deliveries"), 404, "send_not_found")
        assert_error(client.delete(f"/api/v1/send/{send_id}"), 404, "send_not_found")
    assert_error(key_client.get("/api/v1/send/999999"), 404, "send_not_found")


def test_cancel_before_the_fan_out_means_nobody_gets_it(org_with_members, key_client):
    o = org_with_members
    send_id = _send(key_client, recipients=[o.member.pk, o.admin.pk]).json()["id"]
    response = key_client.delete(f"/api/v1/send/{send_id}")
    assert response.status_code == 200 and response.json()["cancelled"] == 2
    assert response.json()["send"]["status"] == "cancelled"
    _drain(o.org)
    assert not Notification.objects.filter(kind="message").exists()
    assert set(SendDelivery.objects.filter(send_id=send_id).values_list("state", flat=True)) == {"cancelled"}
    assert key_client.delete(f"/api/v1/send/{send_id}").json()["cancelled"] == 0  # again: nothing, no error


def test_cancel_after_it_went_out_is_409(org_with_members, key_client):
    o = org_with_members
    send_id = _send(key_client, recipients=[o.member.pk]).json()["id"]
    _drain(o.org)
    assert_error(key_client.delete(f"/api/v1/send/{send_id}"), 409, "send_not_cancellable")


# --- schedules ------------------------------------------------------------------------------------------

def test_a_scheduled_send_waits_for_beat_and_is_then_one_entry(org_with_members, key_client):
    o = org_with_members
    at = (timezone.now() + timedelta(hours=1)).isoformat()
    body = _send(key_client, recipients=[o.member.pk], send_at=at).json()
    assert body["status"] == "scheduled"
    assert not LogEntry.objects.filter(kind="message").exists()
    assert list(SendDelivery.objects.values_list("state", flat=True)) == ["scheduled"]
    assert services.sends_dispatch_due() == 0  # not due yet
    # Well in the past: the dispatcher's rows query compares with Postgres' now(), the start of this
    # test's transaction, and a loaded box can take seconds to get here (now() - 1 s was not yet due).
    Send.objects.update(due_at=timezone.now() - timedelta(hours=1))
    SendDelivery.objects.update(due_at=timezone.now() - timedelta(hours=1))
    assert services.sends_dispatch_due() == 1
    assert Send.objects.get().status == "queued" and LogEntry.objects.filter(kind="message").count() == 1
    _drain(o.org)
    assert Notification.objects.filter(recipient=o.member, kind="message").count() == 1
    assert services.sends_dispatch_due() == 0


def test_a_cancelled_scheduled_send_is_never_published(org_with_members, key_client):
    o = org_with_members
    at = (timezone.now() + timedelta(hours=1)).isoformat()
    send_id = _send(key_client, recipients=[o.member.pk], send_at=at).json()["id"]
    assert key_client.delete(f"/api/v1/send/{send_id}").json()["cancelled"] == 1
    Send.objects.update(due_at=timezone.now() - timedelta(hours=1))
    SendDelivery.objects.update(due_at=timezone.now() - timedelta(hours=1))
    assert services.sends_dispatch_due() == 0
    assert not LogEntry.objects.filter(kind="message").exists()


def test_deliver_at_local_per_zone_dst_gap_moves_forward_and_overlap_takes_the_first():
    now = datetime(2026, 3, 1, tzinfo=UTC)
    # 2026-03-08 02:30 does not exist in New York (02:00 -> 03:00): 03:30 EDT = 07:30 UTC.
    assert local_due("2026-03-08 02:30", "America/New_York", now) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    # 2026-11-01 01:30 happens twice: the first (EDT, UTC-4) = 05:30 UTC.
    assert local_due("2026-11-01 01:30", "America/New_York", now) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    # No date: the next 09:00 in the zone.
    assert local_due("09:00", "Asia/Tokyo", datetime(2026, 3, 1, 1, 0, tzinfo=UTC)) == \
        datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    assert local_due("09:00", "Europe/Paris", datetime(2026, 3, 1, 1, 0, tzinfo=UTC)) == \
        datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def test_deliver_at_local_schedules_each_recipient_in_their_zone(org_with_members, key_client):
    o = org_with_members
    o.member.time_zone, o.admin.time_zone = "Asia/Tokyo", "America/New_York"
    o.member.save(update_fields=["time_zone"])
    o.admin.save(update_fields=["time_zone"])
    body = _send(key_client, recipients=[o.member.pk, o.admin.pk], deliver_at_local="09:00").json()
    assert body["status"] == "scheduled"
    rows = {r.user_id: r for r in SendDelivery.objects.all()}
    tokyo, new_york = rows[o.member.pk].due_at, rows[o.admin.pk].due_at
    assert tokyo.astimezone(ZoneInfo("Asia/Tokyo")).hour == 9
    assert new_york.astimezone(ZoneInfo("America/New_York")).hour == 9
    assert Send.objects.get().due_at == min(tokyo, new_york)


# --- Idempotency-Key ------------------------------------------------------------------------------------

def test_the_same_key_and_body_replays_the_first_answer_and_sends_nothing_again(org_with_members, key_client):
    o = org_with_members
    first = _send(key_client, recipients=[o.member.pk], key="order-1")
    second = _send(key_client, recipients=[o.member.pk], key="order-1")
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert Send.objects.count() == 1 and LogEntry.objects.filter(kind="message").count() == 1


def test_the_same_key_with_another_body_is_422(org_with_members, key_client):
    o = org_with_members
    assert _send(key_client, recipients=[o.member.pk], key="k").status_code == 202
    assert_error(_send(key_client, recipients=[o.admin.pk], key="k"), 422, "idempotency_key_reused")
    assert Send.objects.count() == 1


def test_keys_are_per_organization_and_a_failed_request_stores_nothing(org_with_members, other_org, key_client,
                                                                     api_key_client):
    o = org_with_members
    send_template(other_org.org)
    assert_error(_send(key_client, recipients=[999_999], key="k"), 404, "recipient_not_found")
    assert not IdempotencyKey.objects.exists()
    assert _send(key_client, recipients=[o.member.pk], key="k").status_code == 202
    other = api_key_client(ApiKeyFactory(organization=other_org.org).plaintext)
    response = _send(other, recipients=[other_org.member.pk], key="k")
    assert response.status_code == 202 and "Idempotent-Replayed" not in response
    assert_error(_send(key_client, recipients=[o.member.pk], key=""), 400,
                 "invalid_idempotency_key")
    assert_error(_send(key_client, recipients=[o.member.pk], key="x" * 256), 400,
                 "invalid_idempotency_key")


def test_a_key_expires_after_its_ttl_and_is_purged(org_with_members, key_client):
    o = org_with_members
    assert _send(key_client, recipients=[o.member.pk], key="k").status_code == 202
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = _send(key_client, recipients=[o.admin.pk], key="k")  # a new request now
    assert response.status_code == 202 and "Idempotent-Replayed" not in response
    assert Send.objects.count() == 2
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert idempotency.idempotency_keys_purge() == 1 and not IdempotencyKey.objects.exists()


def test_the_body_hash_ignores_key_order_and_spacing():
    a = idempotency.request_hash(method="post", path="/api/v1/send", body={"a": 1, "b": [1, 2]})
    b = idempotency.request_hash(method="POST", path="/api/v1/send", body={"b": [1, 2], "a": 1})
    assert a == b != idempotency.request_hash(method="POST", path="/api/v1/send", body={"a": 2, "b": [1, 2]})


# --- priorities ---------------------------------------------------------------------------------------

@pytest.fixture
def lanes(settings):
    settings.SEND_PROMOTIONAL_DELAY_BACKLOG = 2
    settings.SEND_PROMOTIONAL_SHED_BACKLOG = 4
    settings.SEND_PROMOTIONAL_HOLD_SECONDS = 0


def _make_due() -> None:
    """Tests run in one transaction, where now() stands still: move due times into its past."""
    past = timezone.now() - timedelta(hours=1)
    Send.objects.filter(status="scheduled").update(due_at=past)
    SendDelivery.objects.filter(state="scheduled").update(due_at=past)


def test_under_backlog_promotional_waits_for_transactional_and_goes_once_it_clears(org_with_members, key_client,
                                                                                  lanes):
    o = org_with_members
    for _ in range(2):  # two transactional sends not fanned out yet: a backlog of 2 entries
        assert _send(key_client, recipients=[o.member.pk]).json()["status"] == "queued"
    promo = _send(key_client, recipients=[o.member.pk], priority="promotional").json()
    assert promo["status"] == "scheduled"  # held back, not in the log
    assert _send(key_client, recipients=[o.member.pk], priority="transactional").json()["status"] == "queued"
    _make_due()
    assert services.sends_dispatch_due() == 0  # due, but still behind: held again
    assert Send.objects.get(pk=promo["id"]).status == "scheduled"
    assert not LogEntry.objects.filter(payload__send_id=promo["id"]).exists()
    _drain(o.org)  # the backlog clears
    _make_due()
    assert services.sends_dispatch_due() == 1
    _drain(o.org)
    kinds = list(Notification.objects.filter(recipient=o.member).order_by("seq").values_list("data__send_id",
                                                                                             flat=True))
    assert kinds[-1] == promo["id"] and len(kinds) == 4  # every transactional one first


def test_past_the_shed_limit_promotional_is_shed_and_recorded(org_with_members, key_client, lanes):
    o = org_with_members
    for _ in range(4):
        _send(key_client, recipients=[o.member.pk])
    body = _send(key_client, recipients=[o.member.pk, o.admin.pk], priority="promotional").json()
    assert body["status"] == "shed" and body["recipients"] == 2
    detail = key_client.get(f"/api/v1/send/{body['id']}").json()
    assert detail["counts"] == {"inapp": {"shed": 2}}
    assert _send(key_client, recipients=[o.member.pk]).json()["status"] == "queued"  # transactional still goes
    _drain(o.org)
    assert not Notification.objects.filter(data__send_id=body["id"]).exists()


# --- the plain-body fast path -------------------------------------------------------------------

_PLAIN_CASES = {
    "organization": [1, 7, 0, -1, True, None, "7", 7.0, []],
    "recipients": [[1, 2], [], ["a@b.c"], {"topic": "members"}, {"topic": 1}, {"topic": "x", "y": 1}, {}, None, "1"],
    "kind": ["bench", "", " bench", "bench ", "x" * 100, "x" * 101, "é", "a\x00b", "\ud800", 5, None, "a b", "\tb"],
    "data": [{}, {"title": "n", "body": None}, {"a": [1, {"b": 2}]}, None, [], "x"],
    "channels": [["inapp"], [], ["inapp", "email"], ["x" * 32], ["x" * 33], [""], [" inapp"], [1], "inapp", None,
                 ["a"] * 10, ["a"] * 11],
    "priority": ["transactional", "promotional", "urgent", "", None, 1],
    "ordering_key": ["k", "", " k", "x" * 128, "x" * 129, None, 5, "ü"],
    "deliver_at_local": ["09:00", "", "x" * 16, "x" * 17, None],
    "send_at": ["2030-01-01T00:00:00Z"],
    "unknown": [1],
}


def test_a_plain_body_is_validated_as_the_input_serializer_would():
    """send_input_plain() skips DRF for plain bodies (every send pays for the serializer otherwise):
    whatever it accepts, Input accepts with the same validated data; the rest goes to Input."""
    base = {"recipients": [1, 2], "kind": "bench", "data": {"title": "t", "body": "b"}}
    bodies = [base, {"recipients": [1], "kind": "k"}, {}, [], "x", None, {"kind": "k"}, {"recipients": [1]}]
    bodies += [{**base, field: value} for field, values in _PLAIN_CASES.items() for value in values]
    bodies += [{"recipients": [3], "kind": "k", field: value} for field, values in _PLAIN_CASES.items()
               for value in values]
    plain = 0
    for body in bodies:
        fast = send_input_plain(body)
        serializer = SendCreateApi.Input(data=body)
        valid = serializer.is_valid()
        if fast is not None:
            plain += 1
            assert valid, (body, serializer.errors)
            assert dict(serializer.validated_data) == fast, body
    assert send_input_plain(base) == base and plain > 40
    assert send_input_plain({**base, "organization": 3, "channels": ["inapp"], "priority": "promotional",
                             "ordering_key": "k"}) is not None
