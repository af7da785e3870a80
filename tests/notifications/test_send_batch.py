"""POST /api/v1/send/batch (issue 13): several sends in one request, all or nothing. An invalid send
is /send's error with its index (`sends[3].kind`) and nothing is written; the Idempotency-Key
covers the whole batch (replay, 422, 409); the sends' log entries take the organization's next
seqs in request order, gapless; each send is then a normal send (status, deliveries, cancel);
preferences, digests, schedules and priorities behave as for /send; the writes are set-based (the
statements do not grow with the number of sends)."""
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.delivery.fence import stream_deliver
from notifications.models import DeliveryStream, IdempotencyKey, LogEntry, Notification, Send, SendDelivery
from notifications.preferences import digest_set, preference_set
from notifications.publish import publish_many
from notifications.send import idempotency, services
from tests.conftest import assert_error
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import ApiKeyFactory, MembershipFactory
from tests.support.stack import database_url

pytestmark = pytest.mark.django_db


@pytest.fixture
def key_client(org_with_members, api_key_client):
    send_template(org_with_members.org)
    key = ApiKeyFactory(organization=org_with_members.org)
    return api_key_client(key.plaintext)


def _item(recipients, **extra) -> dict:
    return {"recipients": recipients, "kind": "welcome", "data": {"title": "Hi", "body": "Welcome"}, **extra}


def _batch(client, sends, key: str | None = None, **body):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post("/api/v1/send/batch", {"sends": sends, **body}, format="json", **headers)


def _drain(org) -> None:
    while stream_deliver(org_id=org.id, channel="inapp").kind != "idle":
        pass


def _nothing_written() -> None:
    assert not Send.objects.exists() and not LogEntry.objects.filter(kind="message").exists()
    assert not SendDelivery.objects.exists() and not IdempotencyKey.objects.exists()


# --- accepting a batch ------------------------------------------------------------------------------

def test_a_batch_answers_each_send_in_order_with_gapless_seqs_in_request_order(org_with_members, key_client):
    o = org_with_members
    before = LogEntry.objects.filter(organization=o.org).count()
    sends = [_item([o.member.pk], data={"title": "first", "body": "1"}),
             _item([o.member.pk, o.admin.email], data={"title": "second", "body": "2"}),
             _item({"topic": "members"}, data={"title": "third", "body": "3"})]
    response = _batch(key_client, sends)
    assert response.status_code == 202, response.content
    results = response.json()["results"]
    assert [(r["status"], r["recipients"]) for r in results] == [("queued", 1), ("queued", 2), ("queued", 3)]
    assert all(set(r) == {"id", "status", "recipients"} for r in results)
    ids = [r["id"] for r in results]
    seqs = [Send.objects.select_related("entry").get(pk=i).entry.seq for i in ids]
    o.org.refresh_from_db()
    assert seqs == [o.org.last_event_seq - 2, o.org.last_event_seq - 1, o.org.last_event_seq]
    assert LogEntry.objects.filter(organization=o.org).count() == before + 3
    assert sorted(LogEntry.objects.filter(organization=o.org).values_list("seq", flat=True)) == \
        list(range(1, o.org.last_event_seq + 1))  # gapless
    for send_id, title in zip(ids, ["first", "second", "third"], strict=True):
        send = Send.objects.get(pk=send_id)
        assert send.payload == send.entry.payload and send.payload["send_id"] == send_id
        assert send.payload["parts"]["en"]["inapp"]["title"] == title and send.api_key_id is not None
        assert send.entry.audience == sorted(SendDelivery.objects.filter(send=send).values_list("user_id", flat=True))
    _drain(o.org)
    inbox = list(Notification.objects.filter(recipient=o.member, kind="message").order_by("seq")
                 .values_list("title", "seq"))
    assert inbox == [("first", seqs[0]), ("second", seqs[1]), ("third", seqs[2])]
    assert Notification.objects.filter(kind="message").count() == 6
    assert set(SendDelivery.objects.values_list("state", flat=True)) == {"sent"}
    # Each send is a normal send.
    body = key_client.get(f"/api/v1/send/{ids[1]}").json()
    assert body["counts"] == {"inapp": {"sent": 2}} and body["seq"] == seqs[1]
    assert key_client.get(f"/api/v1/send/{ids[2]}/deliveries").json()["count"] == 3
    # A redelivered drain (the cursor rolled back by hand) writes nothing twice.
    DeliveryStream.objects.filter(organization=o.org, channel="inapp").update(delivered_seq=0)
    _drain(o.org)
    assert Notification.objects.filter(kind="message").count() == 6


def test_a_batch_occurred_when_its_entries_were_written_not_when_its_transaction_began(org_with_members):
    # The drains' lag (admission control) counts from occurred_at: a batch that spent time preparing
    # its rows inside its transaction must not read as backlog from the moment the transaction began.
    o = org_with_members
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            began = cursor.fetchone()[0]
            cursor.execute("SELECT pg_sleep(0.2)")
        entries = publish_many(organization_id=o.org.id, kind="message", payloads=[{"n": 1}, {"n": 2}],
                               audiences=[[o.member.pk], [o.member.pk]])
    assert all(e.occurred_at - began >= timedelta(seconds=0.2) for e in entries)
    stored = LogEntry.objects.filter(pk__in=[e.pk for e in entries]).values_list("occurred_at", flat=True)
    assert all(t - began >= timedelta(seconds=0.2) for t in stored)


def test_the_writes_are_set_based_the_same_statements_for_two_sends_as_for_fifty(org_with_members, key_client):
    o = org_with_members
    for _ in range(5):
        MembershipFactory(organization=o.org)
    members = list(o.org.memberships.values_list("user_id", flat=True))

    def statements(n: int) -> list[str]:
        sends = [_item([members[(i + j) % len(members)] for j in range(3)], data={"title": f"t{i}", "body": "b"})
                 for i in range(n)]
        with CaptureQueriesContext(connection) as queries:
            response = _batch(key_client, sends, key=f"k{n}")
        assert response.status_code == 202, response.content
        return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]

    statements(1)  # the key's first use writes last_used_at
    two, fifty = statements(2), statements(50)
    assert len(two) == len(fifty), "\n".join(s[:100] for s in fifty)
    assert sum("INSERT INTO notifications_send\n" in s for s in fifty) == 1
    assert sum("INSERT INTO notifications_senddelivery" in s for s in fifty) == 1
    assert sum("INSERT INTO notifications_logentry" in s for s in fifty) == 1
    assert SendDelivery.objects.count() == 3 * 53


def test_a_user_token_names_the_organization_once(org_with_members, other_org, auth_client):
    o = org_with_members
    send_template(o.org)
    response = _batch(auth_client(o.admin), [_item([o.member.pk])], organization=o.org.pk)
    assert response.status_code == 202, response.content
    assert Send.objects.get().created_by_id == o.admin.pk
    assert_error(_batch(auth_client(o.admin), [_item([o.member.pk])]), 400, "validation_error")
    assert_error(_batch(auth_client(o.member), [_item([o.member.pk])], organization=o.org.pk), 403, "admin_required")
    assert_error(_batch(auth_client(o.admin), [_item([other_org.member.pk])], organization=other_org.org.pk),
                 404, "organization_not_found")
    assert Send.objects.count() == 1


# --- all or nothing -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "field", "code"), [
    ({"recipients": []}, "recipients", "validation_error"),
    ({"recipients": {"topic": "admins"}}, "recipients", "validation_error"),
    ({"recipients": [2**70]}, "recipients", "validation_error"),
    ({"kind": "no-such-template"}, "kind", "unknown_template"),
    ({"channels": ["pigeon"]}, "channels", "unknown_channel"),
    ({"channels": ["slack"]}, "channels", "channel_not_supported"),
    ({"priority": "urgent"}, "priority", "validation_error"),
    ({"send_at": "tomorrow"}, "send_at", "validation_error"),
    ({"deliver_at_local": "25:00"}, "deliver_at_local", "validation_error"),
    ({"send_at": "2099-01-01T00:00:00Z"}, "send_at", "validation_error"),
    ({"data": {"title": "only a title"}}, "data", "template_render_error"),
    ({"surprise": 1}, "surprise", "validation_error"),
    ({"organization": 1}, "organization", "validation_error"),
])
def test_an_invalid_send_is_its_error_named_by_index_and_nothing_is_written(org_with_members, key_client, bad, field,
                                                                           code):
    o = org_with_members
    sends = [_item([o.member.pk]), _item([o.admin.pk]), _item([o.member.pk]), {**_item([o.member.pk]), **bad}]
    error = assert_error(_batch(key_client, sends, key="k"), 400, code)
    assert error["extra"]["index"] == 3 and error["message"].startswith("sends[3]")
    if code == "template_render_error":  # /send names the channel and field of the template instead
        assert error["extra"]["channel"] == "inapp" and "sends[3]" in error["extra"]["fields"]
    else:
        assert f"sends[3].{field}" in error["extra"]["fields"], error
    _nothing_written()


def test_a_recipient_of_another_organization_is_refused_like_a_404_naming_the_send(org_with_members, other_org,
                                                                                  key_client):
    o = org_with_members
    for recipient in (other_org.member.pk, other_org.admin.email, 999_999):
        sends = [_item([o.member.pk]), _item([o.admin.pk, recipient])]
        error = assert_error(_batch(key_client, sends), 404, "recipient_not_found")
        assert error["extra"]["index"] == 1 and error["extra"]["recipients"] == [recipient]
        assert "sends[1].recipients" in error["extra"]["fields"]
    _nothing_written()
    assert not Notification.objects.filter(recipient=other_org.member).exists()


@pytest.mark.parametrize("body", [[], {"sends": []}, {"sends": "x"}, {"sends": [{}] * 1001}, {"other": 1},
                                  {"sends": [_item([1])], "organization": "1"}])
def test_a_malformed_batch_is_a_400(key_client, body):
    response = key_client.post("/api/v1/send/batch", body, format="json")
    error = assert_error(response, 400, "validation_error")
    assert error["extra"]["fields"]
    _nothing_written()


def test_at_most_ten_thousand_recipients_in_all(org_with_members, key_client):
    o = org_with_members
    with connection.cursor() as cursor:  # 9,997 extra members: 10,000 in all
        cursor.execute("""INSERT INTO organizations_user (password, is_superuser, username, first_name, last_name,
                          email, is_staff, is_active, date_joined, time_zone, phone, postal_code, slack_user_id)
                          SELECT '', false, 'bulk' || g, '', '', 'bulk' || g || '@example.com', false, true, now(),
                                 'UTC', '', '', '' FROM generate_series(1, 9997) g""")
        cursor.execute("""INSERT INTO organizations_membership (organization_id, user_id, role, created_at)
                          SELECT %s, id, 'member', now() FROM organizations_user WHERE username LIKE 'bulk%%'""",
                       [o.org.pk])
    error = assert_error(_batch(key_client, [_item({"topic": "members"}), _item([o.member.pk])]), 400,
                         "too_many_recipients")
    assert error["extra"]["index"] == 1 and "sends[1].recipients" in error["extra"]["fields"]
    _nothing_written()
    response = _batch(key_client, [_item({"topic": "members"})])
    assert response.status_code == 202 and response.json()["results"][0]["recipients"] == 10_000


# --- Idempotency-Key -----------------------------------------------------------------------------------

def test_the_key_covers_the_whole_batch_replay_reuse_and_in_flight(org_with_members, key_client):
    o = org_with_members
    sends = [_item([o.member.pk]), _item([o.admin.pk])]
    first = _batch(key_client, sends, key="batch-1")
    second = _batch(key_client, sends, key="batch-1")
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json() and second["Idempotent-Replayed"] == "true"
    assert Send.objects.count() == 2 and LogEntry.objects.filter(kind="message").count() == 2
    assert_error(_batch(key_client, sends[:1], key="batch-1"), 422, "idempotency_key_reused")
    # The same key on /send is another request (another path): 422 as well.
    assert_error(key_client.post("/api/v1/send", sends[0], format="json", HTTP_IDEMPOTENCY_KEY="batch-1"), 422,
                 "idempotency_key_reused")
    # In flight: another session holds the key's lock (as a request still running does).
    lock = idempotency._lock_id(o.org.pk, "batch-2")
    with psycopg.connect(database_url()) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", [lock])
        assert_error(_batch(key_client, sends, key="batch-2"), 409, "idempotency_key_in_use")
    assert Send.objects.count() == 2
    response = _batch(key_client, sends, key="batch-2")  # once released
    assert response.status_code == 202 and "Idempotent-Replayed" not in response


def test_a_failed_batch_stores_no_key(org_with_members, key_client):
    o = org_with_members
    assert_error(_batch(key_client, [_item([o.member.pk]), _item([999_999])], key="k"), 404, "recipient_not_found")
    _nothing_written()
    assert _batch(key_client, [_item([o.member.pk])], key="k").status_code == 202


# --- each send of a batch is a normal send --------------------------------------------------------------

def test_cancel_one_send_of_a_batch(org_with_members, key_client):
    o = org_with_members
    results = _batch(key_client, [_item([o.member.pk, o.admin.pk], data={"title": f"t{i}", "body": "b"})
                                  for i in range(3)]).json()["results"]
    cancelled = key_client.delete(f"/api/v1/send/{results[1]['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["cancelled"] == 2
    _drain(o.org)
    assert sorted(Notification.objects.filter(recipient=o.member, kind="message").values_list("title", flat=True)) \
        == ["t0", "t2"]
    assert key_client.get(f"/api/v1/send/{results[1]['id']}").json()["counts"] == {"inapp": {"cancelled": 2}}
    assert key_client.get(f"/api/v1/send/{results[2]['id']}").json()["counts"] == {"inapp": {"sent": 2}}


def test_schedules_preferences_and_digests_as_for_send(org_with_members, key_client):
    o = org_with_members
    send_template(o.org, kind="nudge", category="reminders")
    preference_set(user=o.member, organization=None, channel="inapp", category="reminders", enabled=False)
    digest_set(user=o.admin, organization=o.org, kind="welcome", window="hourly")
    later = (timezone.now() + timedelta(hours=1)).isoformat()
    results = _batch(key_client, [
        _item([o.member.pk, o.admin.pk], kind="nudge"),  # member: off; admin: queued
        _item([o.member.pk], send_at=later),  # scheduled: no entry now
        _item([o.member.pk, o.admin.pk]),  # admin digests "welcome"
        _item([o.member.pk], deliver_at_local="09:00"),
    ]).json()["results"]
    assert [r["status"] for r in results] == ["queued", "scheduled", "queued", "scheduled"]
    rows = {(r.send_id, r.user_id): (r.state, r.error) for r in SendDelivery.objects.all()}
    ids = [r["id"] for r in results]
    assert rows[(ids[0], o.member.pk)] == ("suppressed", "preference") and rows[(ids[0], o.admin.pk)] == ("queued", "")
    assert rows[(ids[1], o.member.pk)] == ("scheduled", "")
    assert rows[(ids[2], o.admin.pk)] == ("digested", "") and rows[(ids[2], o.member.pk)] == ("queued", "")
    assert rows[(ids[3], o.member.pk)] == ("scheduled", "")
    sends = {s.pk: s for s in Send.objects.all()}
    assert sends[ids[1]].entry_id is None and sends[ids[1]].due_at is not None
    assert sends[ids[2]].entry.seq == sends[ids[0]].entry.seq + 1  # the scheduled send takes no seq
    Send.objects.filter(pk=ids[1]).update(due_at=timezone.now() - timedelta(hours=1))
    SendDelivery.objects.filter(send_id=ids[1]).update(due_at=timezone.now() - timedelta(hours=1))
    assert services.sends_dispatch_due() == 1
    _drain(o.org)
    assert Notification.objects.filter(recipient=o.member, kind="message").count() == 2  # welcome, then dispatched
    assert Notification.objects.filter(recipient=o.admin, kind="message").count() == 1  # nudge; welcome digested


@pytest.fixture
def lanes(settings):
    settings.SEND_PROMOTIONAL_DELAY_BACKLOG = 2
    settings.SEND_PROMOTIONAL_SHED_BACKLOG = 4
    settings.SEND_PROMOTIONAL_HOLD_SECONDS = 0


def test_promotional_sends_of_a_batch_are_held_or_shed_as_for_send(org_with_members, key_client, lanes):
    o = org_with_members
    assert _batch(key_client, [_item([o.member.pk]) for _ in range(2)]).status_code == 202  # a backlog of 2
    held = _batch(key_client, [_item([o.member.pk]), _item([o.member.pk], priority="promotional")]).json()
    assert [r["status"] for r in held["results"]] == ["queued", "scheduled"]
    assert _batch(key_client, [_item([o.member.pk])]).status_code == 202  # a backlog of 4 (the held one took none)
    shed = _batch(key_client, [_item([o.member.pk], priority="promotional"), _item([o.admin.pk])]).json()
    assert [r["status"] for r in shed["results"]] == ["shed", "queued"]
    assert key_client.get(f"/api/v1/send/{shed['results'][0]['id']}").json()["counts"] == {"inapp": {"shed": 1}}


def test_a_batch_body_may_be_larger_than_other_requests_up_to_its_own_limit(org_with_members, key_client, settings):
    o = org_with_members
    big = [_item([o.member.pk], data={"title": "t", "body": "b", "pad": "x" * 2000}) for _ in range(600)]  # ~1.2 MB
    response = _batch(key_client, big)
    assert response.status_code == 202, response.content[:300]
    assert_error(key_client.post("/api/v1/send", {**big[0], "data": {"pad": "x" * (2 * 1024 * 1024)}},
                                 format="json"), 413, "request_too_large")
    assert_error(_batch(key_client, [_item([o.member.pk], data={"pad": "x" * (9 * 1024 * 1024)})]), 413,
                 "request_too_large")
