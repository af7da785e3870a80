"""Trackers: list/create per organization, start/stop, and the ordered event log."""
import pytest

from organizations.models import Organization
from tests.conftest import assert_error, queries_for
from tests.organizations.factories import UserFactory
from tests.trackers.factories import TrackerEventFactory, TrackerFactory
from notifications.models import LogEntry
from notifications.publish import entry_message
from trackers.apis import EventOutput, TrackerOutput
from trackers.models import TimeEntry, Tracker
from trackers.services import tracker_start

pytestmark = pytest.mark.django_db

HUGE_ID = 10**20  # beyond bigint


def trackers_url(org_id):
    return f"/api/v1/orgs/{org_id}/trackers/"


def events_url(org_id, query=""):
    return f"/api/v1/orgs/{org_id}/events/{query}"


def start_url(tracker_id):
    return f"/api/v1/trackers/{tracker_id}/start"


def stop_url(tracker_id):
    return f"/api/v1/trackers/{tracker_id}/stop"


@pytest.fixture
def main_tracker(org_with_members) -> Tracker:
    return Tracker.objects.get(organization=org_with_members.org)


# --- list / create --------------------------------------------------------------------------

def test_list_trackers(auth_client, org_with_members, other_org):
    extra = TrackerFactory(organization=org_with_members.org, name="Second")

    response = auth_client(org_with_members.member).get(trackers_url(org_with_members.org.id))

    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 2 and page["next"] is None
    body = page["results"]
    assert [t["name"] for t in body] == ["Main tracker", "Second"]
    assert body[1]["id"] == extra.id
    assert body[0] == {**body[0], "organization_id": org_with_members.org.id, "is_running": False,
                       "started_at": None, "started_by": None}
    assert set(body[0]) == {"id", "organization_id", "name", "is_running", "started_at", "started_by",
                            "created_at"}


def test_list_trackers_of_another_org_is_404(auth_client, org_with_members, other_org):
    assert_error(auth_client(org_with_members.owner).get(trackers_url(other_org.org.id)), 404,
                 "organization_not_found")


def test_list_trackers_is_paginated(auth_client, org_with_members):
    TrackerFactory.create_batch(2, organization=org_with_members.org)
    client = auth_client(org_with_members.member)

    first = client.get(trackers_url(org_with_members.org.id) + "?page_size=2").json()
    second = client.get(first["next"]).json()

    assert first["count"] == 3 and len(first["results"]) == 2
    assert len(second["results"]) == 1 and second["next"] is None
    assert {t["id"] for t in first["results"]}.isdisjoint({t["id"] for t in second["results"]})


def test_list_trackers_query_count_does_not_grow(auth_client, org_with_members, django_assert_max_num_queries):
    client = auth_client(org_with_members.member)
    url = trackers_url(org_with_members.org.id)
    client.get(url)
    few, _ = queries_for(django_assert_max_num_queries, 4, lambda: client.get(url))  # auth, org, count, page

    # Running trackers have a started_by user to show: that must not cost a query per row.
    users = UserFactory.create_batch(3)
    for i in range(12):
        tracker = TrackerFactory(organization=org_with_members.org)
        tracker_start(tracker_id=tracker.id, actor=users[i % 3])
    many, response = queries_for(django_assert_max_num_queries, 4, lambda: client.get(url))

    results = response.json()["results"]
    assert len(results) == 13
    assert {t["started_by"] for t in results if t["is_running"]} == {u.username for u in users}
    assert many == few


def test_create_tracker_by_admin(auth_client, org_with_members):
    response = auth_client(org_with_members.admin).post(trackers_url(org_with_members.org.id), {"name": "Support"},
                                                        format="json")

    assert response.status_code == 201, response.content
    assert response.json()["name"] == "Support"
    assert response.json()["is_running"] is False
    assert Tracker.objects.filter(organization=org_with_members.org, name="Support").exists()


def test_create_tracker_by_member_is_403(auth_client, org_with_members):
    response = auth_client(org_with_members.member).post(trackers_url(org_with_members.org.id), {"name": "X"},
                                                         format="json")
    assert_error(response, 403, "admin_required")


def test_create_tracker_in_another_org_is_404(auth_client, org_with_members, other_org):
    response = auth_client(org_with_members.owner).post(trackers_url(other_org.org.id), {"name": "X"}, format="json")
    assert_error(response, 404, "organization_not_found")
    assert Tracker.objects.filter(organization=other_org.org).count() == 1


@pytest.mark.parametrize("payload,field", [
    ({"name": ""}, "name"),
    ({"name": "x" * 121}, "name"),
    ({"name": "X", "is_running": True}, "is_running"),
    ({"name": "X", "organization_id": 1}, "organization_id"),
])
def test_create_tracker_bad_input_is_400(auth_client, org_with_members, payload, field):
    body = assert_error(auth_client(org_with_members.owner).post(trackers_url(org_with_members.org.id), payload,
                                                                 format="json"), 400, "validation_error")
    assert field in body["extra"]["fields"]


# --- start / stop ---------------------------------------------------------------------------

def test_start_then_stop(auth_client, org_with_members, main_tracker):
    client = auth_client(org_with_members.member)

    started = client.post(start_url(main_tracker.id))

    assert started.status_code == 200, started.content
    body = started.json()
    assert body["tracker"]["is_running"] is True
    assert body["tracker"]["started_by"] == org_with_members.member.username
    assert body["tracker"]["started_at"] is not None
    assert body["event"] == {**body["event"], "org_id": org_with_members.org.id, "seq": 1,
                             "tracker_id": main_tracker.id, "action": "start",
                             "actor": org_with_members.member.username}
    assert set(body["event"]) == {"org_id", "seq", "event_id", "tracker_id", "tracker_name", "action", "actor",
                                  "occurred_at"}
    entry = TimeEntry.objects.get(tracker=main_tracker)
    assert entry.stopped_at is None and entry.started_by == org_with_members.member

    stopped = client.post(stop_url(main_tracker.id))

    assert stopped.status_code == 200, stopped.content
    assert stopped.json()["tracker"]["is_running"] is False
    assert stopped.json()["tracker"]["started_by"] is None
    assert stopped.json()["event"]["seq"] == 2
    assert stopped.json()["event"]["action"] == "stop"
    entry.refresh_from_db()
    assert entry.stopped_at is not None and entry.duration == entry.stopped_at - entry.started_at
    assert entry.stopped_by == org_with_members.member
    assert Organization.objects.get(pk=org_with_members.org.pk).last_event_seq == 2


def test_start_when_running_is_409(auth_client, org_with_members, main_tracker):
    client = auth_client(org_with_members.member)
    client.post(start_url(main_tracker.id))

    body = assert_error(client.post(start_url(main_tracker.id)), 409, "tracker_already_running")

    assert body["extra"] == {}
    assert LogEntry.objects.count() == 1
    assert TimeEntry.objects.count() == 1


def test_stop_when_stopped_is_409(auth_client, org_with_members, main_tracker):
    assert_error(auth_client(org_with_members.member).post(stop_url(main_tracker.id)), 409, "tracker_not_running")
    assert not LogEntry.objects.exists()
    assert Organization.objects.get(pk=org_with_members.org.pk).last_event_seq == 0


@pytest.mark.parametrize("url", [start_url, stop_url])
def test_start_stop_another_orgs_tracker_is_404(auth_client, org_with_members, other_org, url):
    foreign = Tracker.objects.get(organization=other_org.org)

    assert_error(auth_client(org_with_members.owner).post(url(foreign.id)), 404, "tracker_not_found")
    foreign.refresh_from_db()
    assert foreign.is_running is False
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize("tracker_id", [987654321, HUGE_ID])
def test_start_nonexistent_tracker_is_404(auth_client, user, tracker_id):
    assert_error(auth_client(user).post(start_url(tracker_id)), 404, "tracker_not_found")


def test_start_unauthenticated_is_401(api_client, main_tracker):
    assert_error(api_client.post(start_url(main_tracker.id)), 401, "not_authenticated")


def test_seq_is_per_organization(auth_client, org_with_members, other_org, main_tracker):
    foreign = Tracker.objects.get(organization=other_org.org)
    auth_client(org_with_members.owner).post(start_url(main_tracker.id))
    response = auth_client(other_org.owner).post(start_url(foreign.id))

    assert response.json()["event"]["seq"] == 1


# --- events ---------------------------------------------------------------------------------

@pytest.fixture
def five_events(main_tracker):
    actions = ["start", "stop", "start", "stop", "start"]
    return [TrackerEventFactory(tracker=main_tracker, action=a) for a in actions]


def test_events_ordered_by_seq(auth_client, org_with_members, five_events):
    response = auth_client(org_with_members.member).get(events_url(org_with_members.org.id))

    assert response.status_code == 200
    body = response.json()
    assert [e["seq"] for e in body["results"]] == [1, 2, 3, 4, 5]
    assert [e["event_id"] for e in body["results"]] == [e.id for e in five_events]
    assert body["next_after_seq"] is None


def test_events_after_seq(auth_client, org_with_members, five_events):
    body = auth_client(org_with_members.member).get(events_url(org_with_members.org.id, "?after_seq=2")).json()

    assert [e["seq"] for e in body["results"]] == [3, 4, 5]
    assert [e["action"] for e in body["results"]] == ["start", "stop", "start"]


def test_events_limit_pages_with_next_after_seq(auth_client, org_with_members, five_events):
    client = auth_client(org_with_members.member)
    seen, after = [], 0
    for _ in range(5):
        body = client.get(events_url(org_with_members.org.id, f"?after_seq={after}&limit=2")).json()
        seen += [e["seq"] for e in body["results"]]
        if body["next_after_seq"] is None:
            break
        after = body["next_after_seq"]

    assert seen == [1, 2, 3, 4, 5]


def test_events_limit_exactly_remaining_has_no_next(auth_client, org_with_members, five_events):
    body = auth_client(org_with_members.member).get(events_url(org_with_members.org.id, "?after_seq=3&limit=2"))
    assert [e["seq"] for e in body.json()["results"]] == [4, 5]
    assert body.json()["next_after_seq"] is None


def test_events_after_the_last_is_empty(auth_client, org_with_members, five_events):
    body = auth_client(org_with_members.member).get(events_url(org_with_members.org.id, "?after_seq=5")).json()
    assert body == {"results": [], "next_after_seq": None}


def test_events_after_seq_beyond_bigint_is_empty(auth_client, org_with_members, five_events):
    response = auth_client(org_with_members.member).get(events_url(org_with_members.org.id, f"?after_seq={HUGE_ID}"))

    assert response.status_code == 200, response.content
    assert response.json() == {"results": [], "next_after_seq": None}


def test_events_never_include_another_org(auth_client, org_with_members, other_org, five_events):
    TrackerEventFactory(tracker=Tracker.objects.get(organization=other_org.org))

    body = auth_client(org_with_members.member).get(events_url(org_with_members.org.id)).json()

    assert {e["org_id"] for e in body["results"]} == {org_with_members.org.id}
    assert len(body["results"]) == 5


def test_events_of_another_org_is_404(auth_client, org_with_members, other_org):
    assert_error(auth_client(org_with_members.owner).get(events_url(other_org.org.id)), 404,
                 "organization_not_found")


@pytest.mark.parametrize("query", ["?after_seq=abc", "?after_seq=-1", "?after_seq=1.5", "?limit=0", "?limit=501",
                                   "?limit=x", "?after_seq="])
def test_events_bad_query_is_400(auth_client, org_with_members, query):
    body = assert_error(auth_client(org_with_members.member).get(events_url(org_with_members.org.id, query)), 400,
                        "validation_error")
    assert body["extra"] == {} or "fields" in body["extra"]


def test_events_query_count_does_not_grow(auth_client, org_with_members, main_tracker,
                                          django_assert_max_num_queries):
    client = auth_client(org_with_members.member)
    url = events_url(org_with_members.org.id)
    TrackerEventFactory(tracker=main_tracker)
    client.get(url)
    few, _ = queries_for(django_assert_max_num_queries, 4, lambda: client.get(url))  # auth, org, count, page

    TrackerEventFactory.create_batch(20, tracker=main_tracker, actor=org_with_members.owner)
    many, response = queries_for(django_assert_max_num_queries, 3, lambda: client.get(url))

    assert len(response.json()["results"]) == 21
    assert many == few


def test_start_and_stop_statement_counts(auth_client, org_with_members, main_tracker, django_assert_num_queries):
    """The hot path's statements, pinned. Start: the token; one statement that UPDATEs the tracker
    (its lock; state and access checked in its WHERE) and INSERTs the time entry; the log append;
    the activity row. Stop: the token; UPDATE tracker; UPDATE the open time entry (its duration
    computed in SQL); the log append; the activity row. No read of the tracker before or after the
    write, none for the activity row's organization. In production add BEGIN and COMMIT: 6 and 7
    statements, from 13. Under the test's transaction each atomic block is SAVEPOINT + RELEASE
    (2 x 2)."""
    client = auth_client(org_with_members.member)
    assert client.get("/api/v1/me").status_code == 200  # the token's first use writes last_used_at

    with django_assert_num_queries(4 + 4):
        started = client.post(start_url(main_tracker.id))
    with django_assert_num_queries(5 + 4):
        stopped = client.post(stop_url(main_tracker.id))

    assert started.status_code == 200 and stopped.status_code == 200
    assert started.json()["tracker"]["started_by"] == org_with_members.member.username
    assert stopped.json()["tracker"] == {**stopped.json()["tracker"], "is_running": False, "started_at": None,
                                         "started_by": None}
    entry = TimeEntry.objects.get(tracker=main_tracker)
    assert entry.duration == entry.stopped_at - entry.started_at and entry.stopped_by == org_with_members.member
    main_tracker.refresh_from_db()
    assert main_tracker.is_running is False and main_tracker.started_by is None


def test_stop_closes_only_the_open_time_entry(auth_client, org_with_members, main_tracker):
    client = auth_client(org_with_members.member)
    for _ in range(2):
        assert client.post(start_url(main_tracker.id)).status_code == 200
        assert client.post(stop_url(main_tracker.id)).status_code == 200
    first, second = TimeEntry.objects.filter(tracker=main_tracker).order_by("id")

    assert first.stopped_at < second.started_at <= second.stopped_at
    assert first.duration == first.stopped_at - first.started_at
    assert second.duration == second.stopped_at - second.started_at


def test_start_a_tracker_of_an_org_one_left_is_404(auth_client, org_with_members, main_tracker):
    client = auth_client(org_with_members.member)
    org_with_members.org.memberships.filter(user=org_with_members.member).delete()

    assert_error(client.post(start_url(main_tracker.id)), 404, "tracker_not_found")
    main_tracker.refresh_from_db()
    assert main_tracker.is_running is False and not TimeEntry.objects.exists()


def test_start_and_stop_answer_what_their_serializers_would(auth_client, org_with_members, main_tracker):
    """The answer of start/stop is built without DRF serializers (their per-instance field copies
    cost CPU on every tracker event): it is exactly what TrackerOutput and EventOutput give."""
    client = auth_client(org_with_members.member)
    for url in (start_url(main_tracker.id), stop_url(main_tracker.id)):
        body = client.post(url).json()
        main_tracker.refresh_from_db()
        entry = LogEntry.objects.get(organization=org_with_members.org, seq=body["event"]["seq"])
        event = entry_message(entry)
        del event["type"]
        assert body["tracker"] == TrackerOutput(main_tracker).data
        assert body["event"] == EventOutput(event).data
