"""Transactional sends reach members who have no email stream (issue 13): email is opt-in, so a
member's email stream exists only while they chose an email category; a transactional category
cannot be turned off, so a send of one creates (or re-activates) the recipient's email stream in its
own transaction, for the recipients that lack one, as a stream that carries sends only
(DeliveryStream.sends_only). Against real Postgres, Redis and two SMTP stand-ins on loopback; the
fence runs in this process."""
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications import digests
from notifications.models import DeliveryStream, DigestItem, SendDelivery
from notifications.preferences import digest_set, preference_set
from notifications.send import services as send_services
from notifications.send.services import send_backlog
from organizations.models import Membership, Organization
from tests.notifications.test_email_stream import _deliver, _toggle, providers  # noqa: F401 - the fixture
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def key_client(org_with_members, api_key_client):
    org = org_with_members.org
    send_template(org, kind="invoice", category="billing", email=True)
    send_template(org, kind="reset", category="security", email=True)
    send_template(org, kind="sale", category="marketing", email=True)
    send_template(org, kind="nudge", category="reminders", email=True)
    return api_key_client(ApiKeyFactory(organization=org).plaintext)


def _send(client, kind, recipients, channels=("email",), **extra) -> int:
    response = client.post("/api/v1/send", {"recipients": recipients, "kind": kind, "channels": list(channels),
                                            "data": {"title": f"{kind} title", "body": "body"}, **extra},
                           format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def _rows(send_id, channel="email") -> dict:
    return {r.user_id: (r.state, r.error) for r in SendDelivery.objects.filter(send_id=send_id, channel=channel)}


def _stream(org, user) -> DeliveryStream | None:
    return DeliveryStream.objects.filter(organization=org, channel="email", destination=str(user.id)).first()


def test_a_transactional_send_emails_a_member_who_has_no_email_stream(providers, org_with_members, key_client):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    assert _stream(o.org, o.member) is None  # never opted in to email
    send_id = _send(key_client, "invoice", [o.member.pk])
    assert _rows(send_id) == {o.member.pk: ("queued", "")}
    _deliver(o.org, o.member)
    assert _rows(send_id) == {o.member.pk: ("sent", "")}
    mails = primary.messages(to=o.member.email)
    assert len(mails) == 1 and "invoice" in mails[0]["subject"]
    counts = key_client.get(f"/api/v1/send/{send_id}").json()["counts"]
    assert counts["email"] == {"sent": 1}


def test_the_stream_a_send_makes_starts_at_the_send_and_rests_once_caught_up(providers, org_with_members,  # noqa: F811
                                                                             key_client):
    """No replay of the organization's history, and no stream left for every later entry to kick."""
    primary, _ = providers
    o = org_with_members
    preference_set(user=o.admin, organization=o.org, enabled=True)  # the admin gets tracker emails
    _toggle(o.org, o.owner, times=3)  # history the member must not get
    send_id = _send(key_client, "reset", [o.member.pk, o.admin.pk])
    stream = _stream(o.org, o.member)
    assert stream.sends_only and stream.active and stream.user_id == o.member.pk
    assert stream.delivered_seq == Organization.objects.get(pk=o.org.pk).last_event_seq - 1
    assert not _stream(o.org, o.admin).sends_only  # the admin's own stream carried it
    _deliver(o.org, o.member)
    _deliver(o.org, o.admin)
    assert _rows(send_id) == {o.member.pk: ("sent", ""), o.admin.pk: ("sent", "")}
    assert len(primary.messages(to=o.member.email)) == 1
    stream.refresh_from_db()
    assert not stream.active  # at rest: not kicked, swept or counted as backlog
    _toggle(o.org, o.owner, times=2)
    assert send_backlog(organization_id=o.org.id, channels=["email"]) == 2  # the admin's stream only
    # A second send wakes it where the log is now: one email, the tracker events never.
    second = _send(key_client, "reset", [o.member.pk])
    _deliver(o.org, o.member)
    assert _rows(second) == {o.member.pk: ("sent", "")}
    mails = primary.messages(to=o.member.email)
    assert len(mails) == 2 and all(m["headers"]["x-herald-first-seq"] == m["headers"]["x-herald-last-seq"]
                                   for m in mails)


def test_tracker_events_still_reach_only_opted_in_members(providers, org_with_members, key_client):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    preference_set(user=o.admin, organization=o.org, enabled=True)
    _send(key_client, "invoice", [o.member.pk])
    stream = _stream(o.org, o.member)
    # Tracker events while the send-only stream is still active (not yet drained) are not its own.
    _toggle(o.org, o.owner, times=2)
    _deliver(o.org, o.member)
    _deliver(o.org, o.admin)
    assert len(primary.messages(to=o.member.email)) == 1  # the invoice only
    assert "invoice" in primary.messages(to=o.member.email)[0]["subject"]
    assert len(primary.messages(to=o.admin.email)) == 1  # the two tracker events, as one digest
    stream.refresh_from_db()
    assert not stream.active


def test_a_member_who_opts_in_later_gets_no_duplicate(providers, org_with_members, key_client):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    first = _send(key_client, "invoice", [o.member.pk])
    preference_set(user=o.member, organization=o.org, enabled=True)  # opts in before the drain
    assert DeliveryStream.objects.filter(organization=o.org, channel="email", user=o.member).count() == 1
    assert not _stream(o.org, o.member).sends_only
    second = _send(key_client, "invoice", [o.member.pk])
    _deliver(o.org, o.member)
    assert _rows(first) == {o.member.pk: ("sent", "")} and _rows(second) == {o.member.pk: ("sent", "")}
    assert len(primary.messages(to=o.member.email)) == 1  # both invoices, in one email (one stream)
    _toggle(o.org, o.owner)  # opted in: tracker events now come
    _deliver(o.org, o.member)
    assert len(primary.messages(to=o.member.email)) == 2
    assert _stream(o.org, o.member).active  # an opted-in stream never rests


def test_a_member_who_opted_out_of_every_email_still_gets_transactional_ones(providers, org_with_members,  # noqa: F811
                                                                              key_client):
    primary, _ = providers
    o = org_with_members
    preference_set(user=o.member, organization=o.org, enabled=True)
    preference_set(user=o.member, organization=o.org, enabled=False)  # the stream is deactivated
    assert not _stream(o.org, o.member).active
    _toggle(o.org, o.owner)
    send_id = _send(key_client, "invoice", [o.member.pk])
    _deliver(o.org, o.member)
    assert _rows(send_id) == {o.member.pk: ("sent", "")}
    mails = primary.messages(to=o.member.email)  # the invoice, not the tracker event before it
    assert len(mails) == 1 and "invoice" in mails[0]["subject"]


def test_an_opted_out_member_of_a_promotional_send_is_still_suppressed(providers, org_with_members, key_client):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    preference_set(user=o.admin, organization=o.org, channel="email", category="marketing", enabled=False)
    send_id = _send(key_client, "sale", [o.member.pk, o.admin.pk])
    rows = _rows(send_id)
    assert rows[o.admin.pk] == ("suppressed", "preference")
    assert rows[o.member.pk][0] == "suppressed" and "email" in rows[o.member.pk][1]  # email is opt-in
    other = _send(key_client, "nudge", [o.member.pk])  # not transactional either
    assert _rows(other)[o.member.pk][0] == "suppressed"
    assert _stream(o.org, o.member) is None  # no stream made for what it may not carry
    assert primary.messages() == []


def test_a_scheduled_transactional_send_reaches_a_member_without_a_stream(providers, org_with_members, key_client):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    send_id = _send(key_client, "invoice", [o.member.pk],
                    send_at=(timezone.now() + timedelta(minutes=5)).isoformat())
    assert _rows(send_id) == {o.member.pk: ("scheduled", "")}
    assert _stream(o.org, o.member) is None  # made when it falls due, not before
    SendDelivery.objects.filter(send_id=send_id).update(due_at=timezone.now() - timedelta(seconds=1))
    send_services.Send.objects.filter(pk=send_id).update(due_at=timezone.now() - timedelta(seconds=1))
    assert send_services.sends_dispatch_due() == 1
    assert _stream(o.org, o.member).sends_only
    _deliver(o.org, o.member)
    assert _rows(send_id) == {o.member.pk: ("sent", "")}
    assert len(primary.messages(to=o.member.email)) == 1


def test_a_member_without_an_email_address_is_dead_with_the_reason(providers, org_with_members, key_client):  # noqa: F811
    o = org_with_members
    o.member.email = ""
    o.member.save(update_fields=["email"])
    send_id = _send(key_client, "invoice", [o.member.pk])
    _deliver(o.org, o.member)
    state, error = _rows(send_id)[o.member.pk]
    assert state == "dead" and "no email address" in error


def _bulk_members(org, count: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("""INSERT INTO organizations_user (password, is_superuser, username, first_name, last_name,
                          email, is_staff, is_active, date_joined, time_zone, phone, postal_code, slack_user_id)
                          SELECT '', false, 'bulk' || g || '-' || %s, '', '', 'bulk' || g || '@example.com', false,
                                 true, now(), 'UTC', '', '', '' FROM generate_series(1, %s) g""", [org.pk, count])
        cursor.execute("""INSERT INTO organizations_membership (organization_id, user_id, role, created_at)
                          SELECT %s, id, 'member', now() FROM organizations_user
                          WHERE username LIKE 'bulk%%-' || %s AND id NOT IN (
                              SELECT user_id FROM organizations_membership WHERE organization_id = %s)""",
                       [org.pk, org.pk, org.pk])


def test_a_transactional_topic_send_makes_the_streams_set_based(org_with_members, key_client):
    """The statements of a send do not grow with its recipients: 3 members against 10,000."""
    o = org_with_members
    _send(key_client, "invoice", [o.owner.pk], channels=("inapp", "email"))  # warm (caches, the key's use)
    with CaptureQueriesContext(connection) as few:
        _send(key_client, "invoice", {"topic": "members"}, channels=("inapp", "email"))
    assert DeliveryStream.objects.filter(organization=o.org, channel="email", sends_only=True).count() == 3
    _bulk_members(o.org, 9997)
    with CaptureQueriesContext(connection) as many:
        send_id = _send(key_client, "invoice", {"topic": "members"}, channels=("inapp", "email"))
    assert len(many) == len(few), [q["sql"][:80] for q in many.captured_queries]
    assert len(many) <= 18
    assert DeliveryStream.objects.filter(organization=o.org, channel="email", sends_only=True,
                                         active=True).count() == 10_000
    assert SendDelivery.objects.filter(send_id=send_id, channel="email", state="queued").count() == 10_000


def test_a_ten_thousand_recipient_list_send_stays_set_based(org_with_members, key_client):
    o = org_with_members
    _bulk_members(o.org, 9997)
    users = [o.owner.pk, o.admin.pk, o.member.pk]
    _send(key_client, "invoice", [o.owner.pk])  # warm (caches, the key's use)
    with CaptureQueriesContext(connection) as few:
        _send(key_client, "invoice", users)
    everyone = list(Membership.objects.filter(organization=o.org).values_list("user_id", flat=True))
    assert len(everyone) == 10_000
    with CaptureQueriesContext(connection) as many:
        send_id = _send(key_client, "invoice", everyone)
    assert len(many) == len(few), [q["sql"][:80] for q in many.captured_queries]
    assert SendDelivery.objects.filter(send_id=send_id, state="queued").count() == 10_000


def test_a_digest_of_a_transactional_kind_reaches_a_member_without_an_email_stream(providers, org_with_members,  # noqa: F811
                                                                                    key_client):
    """Held for the member's digest (`digested`), the invoices go out in the digest: by email too."""
    primary, _ = providers
    o = org_with_members
    digest_set(user=o.member, organization=o.org, kind="invoice", window="hourly")
    first = _send(key_client, "invoice", [o.member.pk])
    _send(key_client, "invoice", [o.member.pk])
    assert _rows(first) == {o.member.pk: ("digested", "")}
    assert _stream(o.org, o.member) is None  # nothing to send before the window ends
    DigestItem.objects.filter(digest__isnull=True).update(due_at=timezone.now() - timedelta(hours=2))
    assert digests.digests_publish_due() == 1
    assert _stream(o.org, o.member).sends_only
    _deliver(o.org, o.member)
    mails = primary.messages(to=o.member.email)
    assert len(mails) == 1 and "2" in mails[0]["subject"]
    assert not _stream(o.org, o.member).active  # rests again


def test_a_digest_of_a_kind_that_is_not_transactional_does_not(providers, org_with_members, key_client):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    digest_set(user=o.member, organization=o.org, kind="nudge", window="hourly")
    _send(key_client, "nudge", [o.member.pk])
    DigestItem.objects.filter(digest__isnull=True).update(due_at=timezone.now() - timedelta(hours=2))
    assert digests.digests_publish_due() == 1
    assert _stream(o.org, o.member) is None
    assert primary.messages() == []


def test_a_batch_send_emails_members_without_an_email_stream_as_a_send_does(providers, org_with_members,  # noqa: F811
                                                                           key_client):
    """POST /send/batch takes /send's rule: a transactional send on email queues the row and makes the
    member's stream of sends only; a promotional one leaves a member who never opted in suppressed."""
    primary, _ = providers
    o = org_with_members
    body = {"sends": [{"recipients": [o.member.pk], "kind": kind, "channels": ["email"],
                       "data": {"title": f"{kind} title", "body": "body"}} for kind in ("invoice", "sale")]}
    response = key_client.post("/api/v1/send/batch", body, format="json")
    assert response.status_code == 202, response.content
    invoice, sale = (r["id"] for r in response.json()["results"])
    assert _rows(invoice) == {o.member.pk: ("queued", "")}
    assert _rows(sale)[o.member.pk][0] == "suppressed"
    assert _stream(o.org, o.member).sends_only
    _deliver(o.org, o.member)
    assert _rows(invoice) == {o.member.pk: ("sent", "")}
    mails = primary.messages(to=o.member.email)
    assert len(mails) == 1 and "invoice" in mails[0]["subject"]


def test_making_ten_thousand_streams_reads_the_members_streams_once(org_with_members, monkeypatch):
    """The statement that makes the streams probed the members' own streams once per recipient, each
    probe also scanning the index entries the statement had added so far: quadratic (18 s for
    10,000 recipients, 1.2 million buffer reads). Read once as a hashed set: linear."""
    from notifications.delivery import streams  # noqa: PLC0415

    o = org_with_members
    send_template(o.org, kind="invoice", category="billing", email=True)
    _bulk_members(o.org, 9997)
    plans = []

    def explained(sql, params):
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
            plans.append(cursor.fetchone()[0][0]["Plan"])
        return []

    monkeypatch.setattr(streams, "_sends_only_ensure", explained)
    send_services.send_create(organization_id=o.org.id, recipients=None, topic="members", kind="invoice",
                              data={"title": "t", "body": "b"}, channels=["inapp", "email"])
    [plan] = plans
    assert plan["Actual Rows"] == 10_000
    assert plan["Shared Hit Blocks"] + plan["Shared Read Blocks"] < 400_000, plan["Shared Hit Blocks"]
