"""A comment notifies through the org log (notifications.publish): `comment.created` for every
member, live only (no inbox row, no email, never Slack or webhooks), and for a reply a private
`comment.reply` to the parent's author and the thread's participants (still members), minus the
replier: their inbox and their email stream. `report.ready` likewise reaches its requester only.
Real Postgres and Redis; the in-app fan-out and the email stream run their real drains, SMTP is a
server on loopback. The live path over Daphne is in test_comment_live_stack.py."""
import datetime as dt

import pytest
from django.db import transaction

from notifications.channels import registry
from notifications.delivery.fence import stream_deliver
from notifications.models import LogEntry, Notification
from notifications.preferences import preference_set
from organizations.models import Membership
from organizations.selectors import ApiKeyPrincipal
from organizations.services import api_key_create
from reports import services as report_services
from tests.notifications.test_email_stream import _deliver, providers  # noqa: F401 (fixture)
from tests.organizations.factories import MembershipFactory
from trackers import services
from trackers.models import Tracker

pytestmark = pytest.mark.django_db


@pytest.fixture
def thread(org_with_members):
    """owner wrote the top-level comment, admin replied to it; `member` is about to reply."""
    tracker = Tracker.objects.get(organization=org_with_members.org)
    top = services.comment_create(tracker=tracker, author=org_with_members.owner, body="Kick-off notes")
    services.comment_create(tracker=tracker, author=org_with_members.admin, body="Agreed", parent_id=top.id)
    return tracker, top


def entries(kind):
    return list(LogEntry.objects.filter(kind=kind).order_by("seq"))


def drain_inapp(org):
    while stream_deliver(org_id=org.id, channel="inapp").kind != "idle":
        pass


def test_every_comment_is_a_live_entry_for_every_member(org_with_members, thread):
    tracker, top = thread
    created = entries("comment.created")
    assert len(created) == 2
    members = sorted(Membership.objects.filter(organization=org_with_members.org).values_list("user_id", flat=True))
    assert created[0].audience == members
    assert created[0].payload == {"tracker_id": tracker.id, "tracker_name": tracker.name, "comment_id": top.id,
                                  "parent_id": None, "root_id": top.id, "time_entry_id": None,
                                  "excerpt": "Kick-off notes"}
    assert created[0].actor_id == org_with_members.owner.id
    drain_inapp(org_with_members.org)
    assert not Notification.objects.filter(kind="comment.created").exists()  # no inbox spam


def test_a_reply_notifies_the_parent_author_and_participants_but_not_the_replier(org_with_members, thread):
    tracker, top = thread
    [first_reply] = entries("comment.reply")  # the admin's reply told the owner
    assert first_reply.audience == [org_with_members.owner.id]
    reply = services.comment_create(tracker=tracker, author=org_with_members.member, body="Me too " * 40,
                                    parent_id=top.id)
    second = entries("comment.reply")[-1]
    assert second.audience == sorted([org_with_members.owner.id, org_with_members.admin.id])
    assert second.payload["comment_id"] == reply.id and second.payload["parent_id"] == top.id
    assert len(second.payload["excerpt"]) == 140 and second.payload["excerpt"].endswith("…")
    drain_inapp(org_with_members.org)
    inbox = sorted(Notification.objects.filter(entry=second).values_list("recipient_id", flat=True))
    assert inbox == sorted([org_with_members.owner.id, org_with_members.admin.id])
    title = Notification.objects.filter(entry=second).values_list("title", flat=True).first()
    assert title == f"{org_with_members.member.username} replied on {tracker.name}"


def test_a_top_level_comment_notifies_nobody_privately(org_with_members):
    tracker = Tracker.objects.get(organization=org_with_members.org)
    services.comment_create(tracker=tracker, author=org_with_members.member, body="hello")
    assert entries("comment.reply") == []


def test_a_former_member_is_not_notified_and_a_lone_replier_notifies_nobody(org_with_members):
    tracker = Tracker.objects.get(organization=org_with_members.org)
    leaver = MembershipFactory(organization=org_with_members.org).user
    top = services.comment_create(tracker=tracker, author=leaver, body="before leaving")
    Membership.objects.filter(user=leaver).delete()
    services.comment_create(tracker=tracker, author=org_with_members.member, body="answer", parent_id=top.id)
    assert entries("comment.reply") == []  # the only other participant left the organization
    mine = services.comment_create(tracker=tracker, author=org_with_members.member, body="mine")
    services.comment_create(tracker=tracker, author=org_with_members.member, body="self", parent_id=mine.id)
    assert entries("comment.reply") == []


def test_comment_kinds_never_reach_org_wide_channels_and_email_only_the_audience(org_with_members, thread):
    slack, webhook, email = registry.get("slack"), registry.get("webhook"), registry.get("email")
    created, reply = entries("comment.created")[0], entries("comment.reply")[0]
    for channel in (slack, webhook):
        assert not channel.wants(None, created) and not channel.wants(None, reply)

    class Target:
        def __init__(self, user):
            self.user = user

    assert not email.wants(Target(org_with_members.owner), created)
    assert email.wants(Target(org_with_members.owner), reply)
    assert not email.wants(Target(org_with_members.member), reply)


def test_a_reply_is_emailed_to_its_recipient_through_their_email_stream(providers, org_with_members):  # noqa: F811
    primary, _ = providers
    org, owner = org_with_members.org, org_with_members.owner
    preference_set(user=owner, organization=org, enabled=True)  # the owner's email stream exists
    tracker = Tracker.objects.get(organization=org)
    top = services.comment_create(tracker=tracker, author=owner, body="Plan for Monday")
    services.comment_create(tracker=tracker, author=org_with_members.member, body="Count me in", parent_id=top.id)
    _deliver(org, owner)
    [message] = primary.messages(to=owner.email)
    assert f"{org_with_members.member.username} replied on {tracker.name}" in message["text"]
    assert "commented on" not in message["text"]  # comment.created is live only


def test_report_ready_goes_to_the_requester_only(org_with_members, other_org):
    org = org_with_members.org
    job, _ = report_services.report_job_request(
        organization=org, requester=org_with_members.member, kind="time_entries", format="csv",
        date_from=dt.date(2026, 3, 1), date_to=dt.date(2026, 3, 2))
    job.rows = 12
    with transaction.atomic():
        report_services._notify_ready(job)
    [ready] = entries("report.ready")
    assert ready.audience == [org_with_members.member.id] and ready.payload["report_id"] == job.id
    assert not registry.get("slack").wants(None, ready) and not registry.get("webhook").wants(None, ready)
    drain_inapp(org)
    [note] = Notification.objects.filter(kind="report.ready")
    assert note.recipient_id == org_with_members.member.id
    assert note.title == "Your report is ready"
    assert note.body == ("time_entries 2026-03-01–2026-03-02 (csv): 12 rows. "
                         f"Download: /api/v1/reports/{job.id}/download")


def test_a_report_requested_by_an_api_key_notifies_nobody(org_with_members):
    key, _ = api_key_create(organization=org_with_members.org, name="k", created_by=org_with_members.owner)
    job, _ = report_services.report_job_request(
        organization=org_with_members.org, requester=ApiKeyPrincipal(api_key=key), kind="time_entries",
        format="csv", date_from=dt.date(2026, 3, 1), date_to=dt.date(2026, 3, 2))
    with transaction.atomic():
        report_services._notify_ready(job)
    assert entries("report.ready") == []
