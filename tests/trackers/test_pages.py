"""Server-rendered tracker pages: the layout's navigation, a tracker's comment threads (post, reply,
edit, delete through forms), time entries with filters; another org's objects are 404 pages."""
import datetime

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.trackers.factories import TimeEntryFactory, TrackerFactory
from trackers.models import Comment, Tracker
from trackers.services import comment_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser_for():
    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client
    return make


def test_layout_has_navigation_and_marks_the_current_page(browser_for, org_with_members):
    html = browser_for(org_with_members.member).get("/").content.decode()

    assert '<nav class="mainnav" aria-label="Main">' in html
    assert f'href="/orgs/{org_with_members.org.id}/time-entries/"' in html
    assert 'href="/" aria-current="page">Live' in html
    assert "Skip to content" in html


def test_admin_links_only_for_admins(browser_for, org_with_members):
    assert ">Admin<" not in browser_for(org_with_members.member).get("/").content.decode()
    assert ">Admin<" in browser_for(org_with_members.admin).get("/").content.decode()


def test_tracker_page_shows_threads_and_takes_a_reply(browser_for, org_with_members):
    tracker = Tracker.objects.get(organization=org_with_members.org)
    root = comment_create(tracker=tracker, author=org_with_members.owner, body="Root <b>words</b>")
    client = browser_for(org_with_members.member)

    page = client.get(f"/trackers/{tracker.id}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Root &lt;b&gt;words&lt;/b&gt;" in html and f'id="comment-{root.id}"' in html

    response = client.post(f"/trackers/{tracker.id}/comments/post", {"body": "A reply", "parent": root.id})
    assert response.status_code == 302
    reply = Comment.objects.get(parent=root)
    assert reply.author == org_with_members.member and response["Location"].endswith(f"#comment-{reply.id}")

    fragment = client.get(f"/trackers/{tracker.id}/comments/").content.decode()
    assert "A reply" in fragment and "<html" not in fragment


def test_tracker_page_edit_and_delete_forms(browser_for, org_with_members):
    tracker = Tracker.objects.get(organization=org_with_members.org)
    mine = comment_create(tracker=tracker, author=org_with_members.member, body="draft")
    theirs = comment_create(tracker=tracker, author=org_with_members.owner, body="owner")
    client = browser_for(org_with_members.member)

    client.post(f"/comments/{mine.id}/change", {"body": "final"})
    client.post(f"/comments/{theirs.id}/change", {"action": "delete"})  # not the author: refused

    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.body == "final" and mine.edited_at is not None
    assert theirs.deleted_at is None
    follow = client.get(f"/trackers/{tracker.id}/")
    assert "Only the author or an organization admin" in follow.content.decode()


def test_another_orgs_tracker_page_is_404(browser_for, org_with_members, other_org):
    foreign = Tracker.objects.get(organization=other_org.org)
    client = browser_for(org_with_members.member)
    assert client.get(f"/trackers/{foreign.id}/").status_code == 404
    assert client.post(f"/trackers/{foreign.id}/comments/post", {"body": "x"}).status_code == 404
    assert client.get(f"/orgs/{other_org.org.id}/time-entries/").status_code == 404
    assert Comment.objects.count() == 0


def test_time_entries_filters(browser_for, org_with_members):
    main = Tracker.objects.get(organization=org_with_members.org)
    side = TrackerFactory(organization=org_with_members.org, name="Side project")
    day = timezone.now() - datetime.timedelta(days=3)
    TimeEntryFactory(tracker=main, started_by=org_with_members.owner, started_at=day, notes="owner-on-main")
    TimeEntryFactory(tracker=side, started_by=org_with_members.member, notes="member-on-side")
    client = browser_for(org_with_members.member)
    url = f"/orgs/{org_with_members.org.id}/time-entries/"

    everything = client.get(url).content.decode()
    by_tracker = client.get(url, {"tracker": side.id}).content.decode()
    by_member = client.get(url, {"member": org_with_members.owner.id}).content.decode()
    by_date = client.get(url, {"started_from": timezone.now().date().isoformat()}).content.decode()
    bad = client.get(url, {"started_from": "2026-05-02", "started_to": "2026-05-01"})

    assert "owner-on-main" in everything and "member-on-side" in everything
    assert "member-on-side" in by_tracker and "owner-on-main" not in by_tracker
    assert "owner-on-main" in by_member and "member-on-side" not in by_member
    assert "member-on-side" in by_date and "owner-on-main" not in by_date
    assert bad.status_code == 200 and "must not be after" in bad.content.decode()


def test_time_entries_page_query_count_does_not_grow_with_rows(browser_for, org_with_members):
    main = Tracker.objects.get(organization=org_with_members.org)
    client = browser_for(org_with_members.member)
    url = f"/orgs/{org_with_members.org.id}/time-entries/"

    def add_entries(count: int, offset: int):
        now = timezone.now()
        for n in range(offset, offset + count):
            start = now - datetime.timedelta(hours=n + 1)
            TimeEntryFactory(tracker=main, started_by=org_with_members.owner, started_at=start,
                             stopped_at=start + datetime.timedelta(minutes=30), stopped_by=org_with_members.member)

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        return len(ctx)

    add_entries(1, 0)
    queries()  # the first page view also writes the session's current organization
    one = queries()
    add_entries(30, 1)
    assert queries() == one <= 9
