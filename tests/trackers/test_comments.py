"""Nested comments on trackers and time entries: threads of any depth in one query, top-level
pagination, edit, soft delete keeping replies, author-or-admin rights, tenant isolation."""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.conftest import assert_error
from tests.organizations.factories import ApiKeyFactory
from tests.trackers.factories import TimeEntryFactory, TrackerFactory
from trackers.models import Comment, Tracker
from trackers.services import comment_create

pytestmark = pytest.mark.django_db


def comments_url(tracker_id):
    return f"/api/v1/trackers/{tracker_id}/comments/"


def entry_comments_url(entry_id):
    return f"/api/v1/time-entries/{entry_id}/comments/"


def comment_url(comment_id):
    return f"/api/v1/comments/{comment_id}"


@pytest.fixture
def tracker(org_with_members) -> Tracker:
    return Tracker.objects.get(organization=org_with_members.org)


def post(client, tracker_id, body, parent=None):
    return client.post(comments_url(tracker_id), {"body": body, "parent": parent}, format="json")


def test_post_comment_and_reply_and_read_the_thread(auth_client, org_with_members, tracker):
    owner, member = auth_client(org_with_members.owner), auth_client(org_with_members.member)

    top = post(owner, tracker.id, "Shall we stop at six?")
    assert top.status_code == 201, top.content
    top = top.json()
    author = {"id": org_with_members.owner.id, "username": org_with_members.owner.username}
    assert top == {**top, "parent": None, "body": "Shall we stop at six?", "deleted": False, "edited_at": None,
                   "replies": [], "author": author}
    reply = post(member, tracker.id, "Yes", parent=top["id"]).json()
    nested = post(owner, tracker.id, "Good", parent=reply["id"]).json()

    page = member.get(comments_url(tracker.id)).json()

    assert page["count"] == 1 and page["next"] is None and page["previous"] is None
    [thread] = page["results"]
    assert set(thread) == {"id", "parent", "author", "body", "created_at", "edited_at", "deleted", "replies"}
    assert thread["id"] == top["id"]
    assert [r["id"] for r in thread["replies"]] == [reply["id"]]
    assert thread["replies"][0]["parent"] == top["id"]
    assert [r["id"] for r in thread["replies"][0]["replies"]] == [nested["id"]]
    assert thread["replies"][0]["replies"][0]["body"] == "Good"


def test_siblings_are_in_creation_order_at_every_depth(org_with_members, tracker, auth_client):
    owner = org_with_members.owner
    root = comment_create(tracker=tracker, author=owner, body="root")
    first = comment_create(tracker=tracker, author=owner, body="a", parent_id=root.id)
    second = comment_create(tracker=tracker, author=owner, body="b", parent_id=root.id)
    under_first = comment_create(tracker=tracker, author=owner, body="a1", parent_id=first.id)

    [thread] = auth_client(owner).get(comments_url(tracker.id)).json()["results"]

    assert [r["body"] for r in thread["replies"]] == ["a", "b"]
    assert [r["body"] for r in thread["replies"][0]["replies"]] == ["a1"]
    assert thread["replies"][1]["id"] == second.id and under_first.root_id == root.id


def test_a_deep_thread_is_read_in_the_same_number_of_queries_as_a_flat_one(auth_client, org_with_members, tracker):
    """The thread is one query whatever its depth or size: the count of queries does not grow."""
    owner = org_with_members.owner
    client = auth_client(owner)
    comment_create(tracker=tracker, author=owner, body="lonely")

    def count_queries():
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(comments_url(tracker.id))
        assert response.status_code == 200
        return len(ctx), response.json()

    count_queries()  # the token's first use also records last_used_at: not part of the read
    small, _ = count_queries()
    parent = comment_create(tracker=tracker, author=owner, body="deep root")
    for depth in range(60):
        author = org_with_members.member if depth % 2 else owner
        parent = comment_create(tracker=tracker, author=author, body=f"level {depth + 1}", parent_id=parent.id)
    for n in range(5):
        comment_create(tracker=tracker, author=org_with_members.admin, body=f"top {n}")

    large, body = count_queries()

    # token (1) + tracker access (1) + count of top-level comments (1) + the whole page of threads (1)
    assert large == small == 4
    node, depth = body["results"][1], 0
    while node["replies"]:
        node, depth = node["replies"][0], depth + 1
    assert depth == 60 and node["body"] == "level 60"


def test_top_level_pagination_keeps_each_thread_whole(auth_client, org_with_members, tracker):
    owner = org_with_members.owner
    roots = [comment_create(tracker=tracker, author=owner, body=f"top {n}") for n in range(5)]
    comment_create(tracker=tracker, author=owner, body="reply to 3", parent_id=roots[3].id)
    client = auth_client(owner)

    first = client.get(comments_url(tracker.id) + "?page_size=2").json()
    second = client.get(first["next"]).json()
    last = client.get(comments_url(tracker.id) + "?page=3&page_size=2").json()

    assert first["count"] == 5 and first["previous"] is None
    assert [c["body"] for c in first["results"]] == ["top 0", "top 1"]
    assert [c["body"] for c in second["results"]] == ["top 2", "top 3"]
    assert second["results"][1]["replies"][0]["body"] == "reply to 3"
    assert [c["body"] for c in last["results"]] == ["top 4"] and last["next"] is None


def test_bad_page_parameters_are_400(auth_client, org_with_members, tracker):
    client = auth_client(org_with_members.owner)
    assert_error(client.get(comments_url(tracker.id) + "?page=0"), 400, "validation_error")
    assert_error(client.get(comments_url(tracker.id) + "?page_size=abc"), 400, "validation_error")
    assert_error(client.get(comments_url(tracker.id) + "?page_size=100000"), 400, "validation_error")


def test_edit_sets_edited_at_and_delete_keeps_replies(auth_client, org_with_members, tracker):
    owner, member = org_with_members.owner, org_with_members.member
    root = comment_create(tracker=tracker, author=member, body="tpyo")
    reply = comment_create(tracker=tracker, author=owner, body="you mean typo?", parent_id=root.id)
    client = auth_client(member)

    edited = client.patch(comment_url(root.id), {"body": "typo"}, format="json")
    assert edited.status_code == 200, edited.content
    assert edited.json()["body"] == "typo" and edited.json()["edited_at"] is not None

    assert client.delete(comment_url(root.id)).status_code == 204

    [thread] = client.get(comments_url(tracker.id)).json()["results"]
    assert thread["deleted"] is True and thread["body"] == "" and thread["author"] is None
    assert thread["replies"][0]["id"] == reply.id and thread["replies"][0]["body"] == "you mean typo?"
    root.refresh_from_db()
    assert root.body == "" and root.deleted_at is not None
    assert_error(client.patch(comment_url(root.id), {"body": "back"}, format="json"), 409, "comment_deleted")
    assert_error(post(client, tracker.id, "reply to nothing", parent=root.id), 409, "comment_deleted")


def test_someone_elses_comment_cannot_be_edited_or_deleted_by_a_member(auth_client, org_with_members, tracker):
    mine = comment_create(tracker=tracker, author=org_with_members.owner, body="owner's words")
    client = auth_client(org_with_members.member)

    assert_error(client.delete(comment_url(mine.id)), 403, "comment_not_author")
    assert_error(client.patch(comment_url(mine.id), {"body": "mine now"}, format="json"), 403, "comment_not_author")
    mine.refresh_from_db()
    assert mine.body == "owner's words" and mine.deleted_at is None and mine.edited_at is None


def test_an_org_admin_can_delete_a_members_comment(auth_client, org_with_members, tracker):
    theirs = comment_create(tracker=tracker, author=org_with_members.member, body="spam")

    assert auth_client(org_with_members.admin).delete(comment_url(theirs.id)).status_code == 204

    theirs.refresh_from_db()
    assert theirs.deleted_at is not None


def test_reply_to_a_comment_of_another_tracker_is_400(auth_client, org_with_members, tracker):
    other_tracker = TrackerFactory(organization=org_with_members.org)
    elsewhere = comment_create(tracker=other_tracker, author=org_with_members.owner, body="elsewhere")
    client = auth_client(org_with_members.owner)

    assert_error(post(client, tracker.id, "reply", parent=elsewhere.id), 400, "parent_in_other_thread")
    assert Comment.objects.filter(tracker=tracker).count() == 0


def test_reply_to_a_comment_of_another_org_is_400_like_a_missing_one(auth_client, org_with_members, other_org,
                                                                       tracker):
    foreign_tracker = Tracker.objects.get(organization=other_org.org)
    foreign = comment_create(tracker=foreign_tracker, author=other_org.owner, body="theirs")
    client = auth_client(org_with_members.owner)

    assert_error(post(client, tracker.id, "reply", parent=foreign.id), 400, "parent_not_found")
    assert_error(post(client, tracker.id, "reply", parent=10**9), 400, "parent_not_found")
    assert Comment.objects.filter(tracker=tracker).count() == 0


def test_another_orgs_tracker_and_comments_are_404(auth_client, org_with_members, other_org):
    foreign_tracker = Tracker.objects.get(organization=other_org.org)
    foreign = comment_create(tracker=foreign_tracker, author=other_org.owner, body="theirs")
    client = auth_client(org_with_members.owner)

    assert_error(client.get(comments_url(foreign_tracker.id)), 404, "tracker_not_found")
    assert_error(post(client, foreign_tracker.id, "hi"), 404, "tracker_not_found")
    assert_error(client.patch(comment_url(foreign.id), {"body": "x"}, format="json"), 404, "comment_not_found")
    assert_error(client.delete(comment_url(foreign.id)), 404, "comment_not_found")
    foreign.refresh_from_db()
    assert foreign.body == "theirs" and foreign.deleted_at is None


def test_bad_bodies_are_400(auth_client, org_with_members, tracker):
    client = auth_client(org_with_members.owner)
    assert_error(post(client, tracker.id, ""), 400, "validation_error")
    assert_error(post(client, tracker.id, "x" * 10001), 400, "validation_error")
    assert_error(client.post(comments_url(tracker.id), {"body": "hi", "extra": 1}, format="json"), 400,
                 "validation_error")
    assert_error(post(client, tracker.id, "hi", parent="abc"), 400, "validation_error")
    assert Comment.objects.count() == 0


def test_an_api_key_cannot_author_comments(api_key_client, org_with_members, tracker):
    key = ApiKeyFactory(organization=org_with_members.org)
    assert_error(post(api_key_client(key.plaintext), tracker.id, "bot"), 403, "user_required")


def test_time_entry_threads_are_separate_from_the_trackers(auth_client, org_with_members, tracker):
    entry = TimeEntryFactory(tracker=tracker, started_by=org_with_members.owner)
    client = auth_client(org_with_members.member)
    on_tracker = post(client, tracker.id, "on the tracker").json()

    created = client.post(entry_comments_url(entry.id), {"body": "on the entry"}, format="json")
    assert created.status_code == 201, created.content

    assert [c["body"] for c in client.get(entry_comments_url(entry.id)).json()["results"]] == ["on the entry"]
    assert [c["body"] for c in client.get(comments_url(tracker.id)).json()["results"]] == ["on the tracker"]
    bad = client.post(entry_comments_url(entry.id), {"body": "x", "parent": on_tracker["id"]}, format="json")
    assert_error(bad, 400, "parent_in_other_thread")


def test_another_orgs_time_entry_is_404(auth_client, org_with_members, other_org):
    foreign_entry = TimeEntryFactory(tracker=Tracker.objects.get(organization=other_org.org))
    client = auth_client(org_with_members.owner)
    assert_error(client.get(entry_comments_url(foreign_entry.id)), 404, "time_entry_not_found")
    assert_error(client.patch(f"/api/v1/time-entries/{foreign_entry.id}", {"notes": "x"}, format="json"), 404,
                 "time_entry_not_found")


def test_time_entry_notes_can_be_set(auth_client, org_with_members, tracker):
    entry = TimeEntryFactory(tracker=tracker, started_by=org_with_members.owner)
    response = auth_client(org_with_members.member).patch(f"/api/v1/time-entries/{entry.id}",
                                                          {"notes": "release prep"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["notes"] == "release prep"
    entry.refresh_from_db()
    assert entry.notes == "release prep"
