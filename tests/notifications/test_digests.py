"""Digests (issue 13 #8) against real Postgres, Redis and the SMTP stand-ins, the fence and beat's task
body run in this process: a member who digests a kind gets nothing of it until the window ends,
then one inbox row and one email listing the held items in seq order; hourly and daily at a local
time; exactly once across a crashed and a repeated run; items that arrive as the window closes go
in the next one (nothing lost); the API that sets it."""
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.utils import timezone

from notifications import digests
from notifications.delivery.fence import stream_deliver
from notifications.models import Digest, DigestItem, DigestSetting, LogEntry, Notification, SendDelivery
from notifications.preferences import digest_set, preference_set
from tests.conftest import assert_error
from tests.notifications.test_email_stream import _deliver, _toggle, providers  # noqa: F401 - the fixture
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/me/preferences"


@pytest.fixture
def key_client(org_with_members, api_key_client):
    send_template(org_with_members.org, kind="nudge", category="reminders", email=True)
    send_template(org_with_members.org, kind="invoice", category="billing", email=True)
    return api_key_client(ApiKeyFactory(organization=org_with_members.org).plaintext)


def _send(client, kind: str, title: str, recipients) -> int:
    response = client.post("/api/v1/send", {"recipients": list(recipients), "kind": kind,
                                            "channels": ["inapp", "email"],
                                            "data": {"title": title, "body": f"about {title}"}}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def _drain_inapp(org) -> None:
    while stream_deliver(org_id=org.id, channel="inapp").kind != "idle":
        pass


def _window_ends() -> None:
    # Postgres now() in these tests is the test transaction's start: well before it.
    DigestItem.objects.filter(digest__isnull=True).update(due_at=timezone.now() - timedelta(hours=2))


def test_a_digest_window_end_to_end(providers, org_with_members, key_client):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    preference_set(user=o.member, organization=o.org, enabled=True)  # the member's email stream
    digest_set(user=o.member, organization=o.org, kind="nudge", window="hourly")

    nudges = [_send(key_client, "nudge", f"nudge {n}", [o.member.pk, o.admin.pk]) for n in (1, 2, 3)]
    _send(key_client, "invoice", "invoice 1", [o.member.pk])

    for send_id in nudges:
        states = dict(SendDelivery.objects.filter(send_id=send_id, user=o.member).values_list("channel", "state"))
        assert states == {"inapp": "digested", "email": "digested"}
        assert SendDelivery.objects.get(send_id=send_id, user=o.admin, channel="inapp").state == "queued"
    items = list(DigestItem.objects.filter(user=o.member).order_by("seq"))
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    assert [i.kind for i in items] == ["nudge"] * 3 and {i.due_at for i in items} == {hour}

    _drain_inapp(o.org)
    _deliver(o.org, o.member)
    assert list(Notification.objects.filter(recipient=o.member).values_list("title", flat=True)) == ["invoice 1"]
    assert [m["subject"] for m in primary.messages(to=o.member.email)] == ["[Acme] invoice 1"]
    assert Notification.objects.filter(recipient=o.admin, kind="message").count() == 3  # not theirs to digest

    assert digests.digests_publish_due() == 0  # the window has not ended
    _window_ends()
    assert digests.digests_publish_due() == 1
    assert digests.digests_publish_due() == 0  # exactly once
    _drain_inapp(o.org)
    _deliver(o.org, o.member)

    [digest_row] = Notification.objects.filter(recipient=o.member, kind="digest")
    assert digest_row.title == "3 notifications: nudge"
    lines = digest_row.body.splitlines()
    assert [line.split(" — ")[0] for line in lines] == ["• nudge 1", "• nudge 2", "• nudge 3"]
    assert "about nudge 1" in lines[0]
    mails = primary.messages(to=o.member.email)
    assert len(mails) == 2 and mails[1]["subject"] == "[Acme] 3 notifications: nudge"
    text = mails[1]["text"]
    assert text.index("nudge 1") < text.index("nudge 2") < text.index("nudge 3")
    [digest] = Digest.objects.all()
    assert (digest.user_id, digest.kind, digest.items) == (o.member.pk, "nudge", 3)
    assert set(DigestItem.objects.values_list("digest_id", flat=True)) == {digest.pk}
    assert LogEntry.objects.get(pk=digest.entry_id).audience == [o.member.pk]
    assert not Notification.objects.filter(recipient=o.admin, kind="digest").exists()


def test_tracker_events_digested_daily_at_a_local_time_in_every_channel(providers, org_with_members):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    o.member.time_zone = "America/New_York"
    o.member.save(update_fields=["time_zone"])
    preference_set(user=o.member, organization=o.org, enabled=True)  # tracker emails on
    digest_set(user=o.member, organization=o.org, kind="tracker.event", window="daily", at=time(8, 0))

    seqs = _toggle(o.org, o.owner, 2)

    zone = ZoneInfo("America/New_York")
    entry = LogEntry.objects.get(organization=o.org, seq=seqs[0])
    local = entry.occurred_at.astimezone(zone)
    expected = datetime.combine(local.date(), time(8), tzinfo=zone)
    if expected <= entry.occurred_at:
        expected = datetime.combine(local.date() + timedelta(days=1), time(8), tzinfo=zone)
    assert {i.due_at for i in DigestItem.objects.all()} == {expected.astimezone(UTC)}
    _drain_inapp(o.org)
    _deliver(o.org, o.member)
    assert not Notification.objects.filter(recipient=o.member).exists()
    assert Notification.objects.filter(recipient=o.admin, kind="tracker.event").count() == 2
    assert primary.messages(to=o.member.email) == []  # the email stream skipped them too

    _window_ends()
    assert digests.digests_publish_due() == 1
    _drain_inapp(o.org)
    _deliver(o.org, o.member)
    [row] = Notification.objects.filter(recipient=o.member)
    assert row.kind == "digest" and row.title == "2 notifications: tracker.event"
    assert [f"(#{s})" in line for s, line in zip(seqs, row.body.splitlines(), strict=True)] == [True, True]
    [mail] = primary.messages(to=o.member.email)
    assert "2 notifications: tracker.event" in mail["subject"]
    assert mail["text"].index(f"#{seqs[0]})") < mail["text"].index(f"#{seqs[1]})")


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Asia/Kathmandu", "UTC"])
def test_an_hourly_window_ends_on_the_member_s_local_hour(org_with_members, key_client, zone):
    o = org_with_members
    o.member.time_zone = zone
    o.member.save(update_fields=["time_zone"])
    digest_set(user=o.member, organization=o.org, kind="nudge", window="hourly")
    _send(key_client, "nudge", "nudge 1", [o.member.pk])
    item = DigestItem.objects.get()
    local = LogEntry.objects.get(pk=item.entry_id).occurred_at.astimezone(ZoneInfo(zone))
    expected = local.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    assert item.due_at == expected.astimezone(UTC)
    assert item.due_at.astimezone(ZoneInfo(zone)).minute == 0  # on the hour where the member lives


def test_a_crashed_run_publishes_nothing_and_the_retry_publishes_once(org_with_members, key_client, monkeypatch):
    o = org_with_members
    digest_set(user=o.member, organization=o.org, kind="nudge", window="hourly")
    for n in (1, 2):
        _send(key_client, "nudge", f"nudge {n}", [o.member.pk])
    _window_ends()
    real_publish = digests.publish

    def crash(**kwargs):
        real_publish(**kwargs)
        raise RuntimeError("worker killed after publishing")

    monkeypatch.setattr(digests, "publish", crash)
    with pytest.raises(RuntimeError):
        digests.digests_publish_due()
    assert not Digest.objects.exists() and not LogEntry.objects.filter(kind="digest").exists()
    assert DigestItem.objects.filter(digest__isnull=True).count() == 2

    monkeypatch.setattr(digests, "publish", real_publish)
    assert digests.digests_publish_due() == 1
    assert digests.digests_publish_due() == 0
    assert LogEntry.objects.filter(kind="digest").count() == 1 and Digest.objects.get().items == 2
    o.org.refresh_from_db()
    assert list(LogEntry.objects.filter(organization=o.org).order_by("seq").values_list("seq", flat=True)) == list(
        range(1, o.org.last_event_seq + 1))  # the rolled-back entry left no gap


def test_items_arriving_as_the_window_closes_go_in_the_next_window(org_with_members, key_client):
    o = org_with_members
    digest_set(user=o.member, organization=o.org, kind="nudge", window="hourly")
    _send(key_client, "nudge", "nudge 1", [o.member.pk])
    _window_ends()
    window = DigestItem.objects.get().due_at
    assert digests.digests_publish_due() == 1

    # Published inside that window, committed after the run took it: due at the window already sent.
    _send(key_client, "nudge", "nudge 2", [o.member.pk])
    DigestItem.objects.filter(digest__isnull=True).update(due_at=window)
    assert digests.digests_publish_due() == 0
    late = DigestItem.objects.get(digest__isnull=True)
    assert late.due_at == window + timedelta(hours=1)  # moved to the next window, not dropped

    _window_ends()
    assert digests.digests_publish_due() == 1
    _drain_inapp(o.org)
    bodies = list(Notification.objects.filter(recipient=o.member, kind="digest").order_by("seq")
                  .values_list("body", flat=True))
    assert len(bodies) == 2 and "nudge 1" in bodies[0] and "nudge 2" in bodies[1]
    assert not DigestItem.objects.filter(digest__isnull=True).exists()


def test_turning_a_digest_off_sends_each_one_again_and_held_items_still_go(org_with_members, key_client):
    o = org_with_members
    digest_set(user=o.member, organization=o.org, kind="nudge", window="hourly")
    _send(key_client, "nudge", "held", [o.member.pk])
    digest_set(user=o.member, organization=o.org, kind="nudge", window="off")
    _send(key_client, "nudge", "direct", [o.member.pk])
    _drain_inapp(o.org)
    assert list(Notification.objects.filter(recipient=o.member).values_list("title", flat=True)) == ["direct"]
    _window_ends()
    assert digests.digests_publish_due() == 1
    _drain_inapp(o.org)
    assert "held" in Notification.objects.get(recipient=o.member, kind="digest").body


# --- the API ---------------------------------------------------------------------------------------

def test_digests_are_set_listed_and_removed_through_preferences(auth_client, org_with_members):
    o = org_with_members
    client = auth_client(o.member)

    body = client.put(URL, {"digests": [
        {"organization_id": o.org.id, "kind": "tracker.event", "window": "daily", "at": "08:30"},
        {"organization_id": o.org.id, "kind": "order.shipped", "window": "hourly"}]}, format="json").json()
    assert body["digests"] == [
        {"organization_id": o.org.id, "kind": "order.shipped", "window": "hourly", "at": None},
        {"organization_id": o.org.id, "kind": "tracker.event", "window": "daily", "at": "08:30"}]

    body = client.put(URL, {"digests": [{"organization_id": o.org.id, "kind": "order.shipped", "window": "off"}]},
                      format="json").json()
    assert [d["kind"] for d in body["digests"]] == ["tracker.event"]
    assert client.get(URL).json()["digests"] == body["digests"]


@pytest.mark.parametrize(("item", "code"), [
    ({"kind": "tracker.event", "window": "daily"}, "invalid_digest"),  # daily needs a time
    ({"kind": "tracker.event", "window": "hourly", "at": "08:00"}, "invalid_digest"),
    ({"kind": "digest", "window": "hourly"}, "invalid_digest"),
    ({"kind": "comment.created", "window": "hourly"}, "invalid_digest"),  # live only
    ({"kind": "Bad Kind!", "window": "hourly"}, "invalid_digest"),
    ({"kind": "tracker.event", "window": "weekly"}, "validation_error"),
    ({"kind": "tracker.event", "window": "daily", "at": "8 am"}, "validation_error"),
])
def test_bad_digest_settings_are_400_and_change_nothing(auth_client, org_with_members, item, code):
    o = org_with_members
    response = auth_client(o.member).put(URL, {
        "preferences": [{"channel": "inapp", "category": "reminders", "enabled": False}],
        "digests": [{"organization_id": o.org.id, **item}]}, format="json")
    assert_error(response, 400, code)
    assert not DigestSetting.objects.exists()


def test_another_organization_s_digest_is_404(auth_client, org_with_members, other_org):
    response = auth_client(org_with_members.member).put(URL, {"digests": [
        {"organization_id": other_org.org.id, "kind": "tracker.event", "window": "hourly"}]}, format="json")
    assert_error(response, 404, "organization_not_found")
    assert not DigestSetting.objects.exists()


def test_a_digest_entry_is_never_digested_itself(org_with_members):
    o = org_with_members
    DigestSetting.objects.create(user=o.member, organization=o.org, kind="digest", frequency="hourly")
    with transaction.atomic():
        digests.publish(organization_id=o.org.id, kind="digest", payload={"kind": "x", "items": []},
                        audience=[o.member.pk])
    assert not DigestItem.objects.exists()
