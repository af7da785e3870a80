"""GET /orgs/{id}/search: full-text search over tracker names, time-entry notes and comments,
ranked, paginated, escaped snippets; bad input; another organization; query counts; the log."""
import datetime as dt
from urllib.parse import parse_qs, urlparse

import pytest
from django.db import connection
from django.utils import timezone
from django.test.utils import CaptureQueriesContext

from organizations.services import api_key_create
from reports.models import SearchLog
from reports.search.selectors import search_page
from tests.conftest import assert_error
from tests.trackers.factories import TimeEntryFactory, TrackerFactory
from trackers import services as tracker_services
from trackers.models import Tracker

pytestmark = pytest.mark.django_db


def search(client, org, q, **params):
    return client.get(f"/api/v1/orgs/{org.id}/search", {"q": q, **params})


@pytest.fixture
def corpus(org_with_members):
    org = org_with_members.org
    budget = TrackerFactory(organization=org, name="Budget planning")
    entry = TimeEntryFactory(tracker=budget, notes="Reviewed the quarterly budget with finance; budget approved.",
                             started_at=timezone.now() - dt.timedelta(hours=1), stopped_at=timezone.now())
    TimeEntryFactory(tracker=budget, notes="")  # no notes: not in the index
    comment = tracker_services.comment_create(tracker=budget, author=org_with_members.member,
                                              body='Is the budget < 5k & "final"? <script>alert(1)</script>')
    gone = tracker_services.comment_create(tracker=budget, author=org_with_members.member, body="budget draft")
    tracker_services.comment_delete(comment_id=gone.id, actor=org_with_members.member)
    return {"tracker": budget, "entry": entry, "comment": comment}


def test_finds_trackers_notes_and_comments_ranked_with_snippets(auth_client, org_with_members, corpus):
    response = search(auth_client(org_with_members.member), org_with_members.org, "Budgets")  # stemmed
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 3 and body["next"] is None and body["previous"] is None
    by_type = {hit["type"]: hit for hit in body["results"]}
    assert set(by_type) == {"tracker", "time_entry", "comment"}  # the deleted comment is not found
    assert by_type["time_entry"]["id"] == corpus["entry"].id
    assert by_type["comment"]["id"] == corpus["comment"].id
    assert by_type["tracker"]["url"] == f"/trackers/{corpus['tracker'].id}/"
    assert by_type["comment"]["url"] == f"/trackers/{corpus['tracker'].id}/#comment-{corpus['comment'].id}"
    assert by_type["time_entry"]["tracker_name"] == "Budget planning"
    # Two occurrences in the notes outrank one elsewhere; ranks are in descending order.
    assert body["results"][0]["type"] == "time_entry"
    ranks = [hit["rank"] for hit in body["results"]]
    assert ranks == sorted(ranks, reverse=True)
    assert "<mark>budget</mark>" in by_type["time_entry"]["snippet"]
    # User text is escaped: only our <mark> tags are HTML.
    assert by_type["comment"]["snippet"] == "Is the <mark>budget</mark> &lt; 5k &amp; &quot;final&quot;? alert(1)"


def test_web_search_syntax_phrases_and_exclusions(auth_client, org_with_members, corpus):
    client = auth_client(org_with_members.member)
    assert search(client, org_with_members.org, '"budget approved"').json()["count"] == 1
    assert search(client, org_with_members.org, "budget -final").json()["count"] == 2
    assert search(client, org_with_members.org, "the").json()["count"] == 0  # stop word only: nothing, no error


def test_pagination_envelope(auth_client, org_with_members):
    org = org_with_members.org
    for i in range(5):
        TrackerFactory(organization=org, name=f"Migration step {i}")
    client = auth_client(org_with_members.member)
    first = search(client, org, "migration", page_size=2).json()
    assert first["count"] == 5 and len(first["results"]) == 2 and first["previous"] is None
    link = urlparse(first["next"])
    assert link.netloc == "testserver" and link.path == f"/api/v1/orgs/{org.id}/search"
    assert parse_qs(link.query) == {"q": ["migration"], "page_size": ["2"], "page": ["2"]}
    last = search(client, org, "migration", page_size=2, page=3).json()
    assert len(last["results"]) == 1 and last["next"] is None and "page=2" in last["previous"]
    ids = {h["id"] for p in (1, 2, 3) for h in search(client, org, "migration", page_size=2, page=p).json()["results"]}
    assert len(ids) == 5  # a stable order: no result on two pages
    assert_error(search(client, org, "migration", page=9), 404, "not_found")
    assert_error(search(client, org, "migration", page=0), 400, "validation_error")
    assert_error(search(client, org, "migration", page_size=201), 400, "validation_error")


@pytest.mark.parametrize("q, code", [
    ("", "search_query_empty"), ("   \t ", "search_query_empty"), ("\x00\x01", "search_query_empty"),
    ("x" * 201, "search_query_too_long"),
])
def test_bad_queries_are_400_and_not_logged(auth_client, org_with_members, q, code):
    assert_error(search(auth_client(org_with_members.member), org_with_members.org, q), 400, code)
    assert not SearchLog.objects.exists()


def test_missing_q_is_400(auth_client, org_with_members):
    response = auth_client(org_with_members.member).get(f"/api/v1/orgs/{org_with_members.org.id}/search")
    assert_error(response, 400, "search_query_empty")


def test_200_characters_is_accepted(auth_client, org_with_members):
    assert search(auth_client(org_with_members.member), org_with_members.org, "y" * 200).status_code == 200


def test_another_organization_is_404_and_its_data_never_found(auth_client, org_with_members, other_org, corpus):
    assert_error(search(auth_client(other_org.member), org_with_members.org, "budget"), 404, "organization_not_found")
    TrackerFactory(organization=other_org.org, name="Budget of the other org")
    body = search(auth_client(org_with_members.member), org_with_members.org, "budget").json()
    assert body["count"] == 3
    assert all(hit["tracker_id"] != Tracker.objects.get(organization=other_org.org, name__startswith="Budget").id
               for hit in body["results"])


def test_every_search_is_logged_normalized(auth_client, api_key_client, org_with_members, corpus):
    search(auth_client(org_with_members.member), org_with_members.org, "  BUDGET   Review ")
    _, key = api_key_create(organization=org_with_members.org, name="ci", created_by=org_with_members.owner)
    assert search(api_key_client(key), org_with_members.org, "Budget review").status_code == 200
    rows = list(SearchLog.objects.order_by("id").values("organization_id", "user_id", "api_key_id", "query"))
    assert [r["query"] for r in rows] == ["budget review", "budget review"]
    assert rows[0]["user_id"] == org_with_members.member.id and rows[0]["api_key_id"] is None
    assert rows[1]["user_id"] is None and rows[1]["api_key_id"] is not None
    assert {r["organization_id"] for r in rows} == {org_with_members.org.id}


def test_a_search_is_four_queries_whatever_the_hits(auth_client, org_with_members, django_assert_num_queries):
    client = auth_client(org_with_members.member)
    search(client, org_with_members.org, "warmup")  # the token's first use writes last_used_at
    for i in range(30):
        TrackerFactory(organization=org_with_members.org, name=f"Release {i}")
    with django_assert_num_queries(4):  # token, organization access, the search, the log INSERT
        assert len(search(client, org_with_members.org, "release", page_size=30).json()["results"]) == 30


def test_the_search_uses_the_gin_indexes(org_with_members):
    """Each source is read through its (organization_id, tsvector) index, organization included."""
    with CaptureQueriesContext(connection) as captured:
        search_page(organization_id=org_with_members.org.id, query="budget", offset=0, limit=10)
    sql = captured.captured_queries[0]["sql"]
    with connection.cursor() as cursor:
        # A test database is tiny: without its plain organization_id indexes and sequential scans the
        # planner shows whether the search indexes serve both conditions (words and organization).
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename IN ('trackers_tracker', "
                       "'trackers_timeentry', 'trackers_comment') AND indexdef LIKE '%%btree (organization_id%%'")
        for (name,) in cursor.fetchall():
            cursor.execute(f'DROP INDEX "{name}"')  # rolled back with the test's transaction
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    for index in ("tracker_name_search", "entry_notes_search", "comment_body_search"):
        assert index in plan, plan
    assert plan.count("Index Cond: ((organization_id = ") >= 3, plan
