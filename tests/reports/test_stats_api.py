"""GET /orgs/{id}/stats: the aggregate, its bad input, and the per-caller / per-org rate limit
with RateLimit-* headers (single process here; several Daphne processes in test_stats_stack.py)."""
import datetime as dt

import pytest

from organizations.services import api_key_create
from tests.conftest import assert_error
from tests.reports.factories import seed_entries
from tests.trackers.factories import TimeEntryFactory, TrackerFactory
from trackers.models import Tracker

pytestmark = pytest.mark.django_db
START = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def url(org, query="from=2026-03-01&to=2026-03-03") -> str:
    return f"/api/v1/orgs/{org.id}/stats?{query}"


@pytest.fixture
def limits(settings):
    settings.HERALD_RATE_LIMITS = {**settings.HERALD_RATE_LIMITS,
                                   "stats.caller": {"rate": 1 / 60, "burst": 3, "headroom": 0.0},
                                   "stats.org": {"rate": 1 / 60, "burst": 5, "headroom": 0.0}}


def test_hours_per_member_tracker_and_day(auth_client, org_with_members):
    org = org_with_members.org
    main = Tracker.objects.get(organization=org)
    side = TrackerFactory(organization=org, name="Side")
    # main: 6 entries of 30 min on Mar 1, owner/member in turn; side: one 2 h entry by the member on Mar 3.
    seed_entries(tracker=main, users=[org_with_members.owner, org_with_members.member], count=6, start=START,
                 step_seconds=3600, duration_seconds=1800)
    TimeEntryFactory(tracker=side, started_by=org_with_members.member, started_at=START + dt.timedelta(days=2),
                     stopped_at=START + dt.timedelta(days=2, hours=2))
    TimeEntryFactory(tracker=side, started_by=org_with_members.member, started_at=START + dt.timedelta(days=9),
                     stopped_at=START + dt.timedelta(days=9, hours=2))  # outside the range
    response = auth_client(org_with_members.member).get(url(org))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["total_hours"] == 5.0
    members = {m["username"]: m["hours"] for m in body["members"]}
    assert members == {org_with_members.member.username: 3.5, org_with_members.owner.username: 1.5}
    assert {t["name"]: t["hours"] for t in body["trackers"]} == {main.name: 3.0, "Side": 2.0}
    assert body["days"] == [{"date": "2026-03-01", "hours": 3.0, "entries": 6},
                            {"date": "2026-03-02", "hours": 0.0, "entries": 0},
                            {"date": "2026-03-03", "hours": 2.0, "entries": 1}]
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(response.headers)


def test_stats_is_one_query_whatever_the_data(auth_client, org_with_members, django_assert_num_queries):
    client = auth_client(org_with_members.member)
    client.get(url(org_with_members.org))  # the token's first use writes last_used_at
    seed_entries(tracker=Tracker.objects.get(organization=org_with_members.org), users=[org_with_members.owner],
                 count=500, start=START)
    with django_assert_num_queries(3):  # token, organization (access) + the one aggregate
        assert client.get(url(org_with_members.org)).status_code == 200


def test_day_buckets_follow_the_organizations_time_zone(auth_client, org_with_members):
    org = org_with_members.org
    org.time_zone = "America/New_York"
    org.save(update_fields=["time_zone"])
    late = dt.datetime(2026, 3, 2, 3, 0, tzinfo=dt.UTC)  # 22:00 on Mar 1 in New York
    TimeEntryFactory(tracker=Tracker.objects.get(organization=org), started_by=org_with_members.owner,
                     started_at=late, stopped_at=late + dt.timedelta(hours=1))
    days = auth_client(org_with_members.owner).get(url(org)).json()["days"]
    assert days[0] == {"date": "2026-03-01", "hours": 1.0, "entries": 1}


@pytest.mark.parametrize("query, code", [
    ("", "range_required"), ("from=2026-03-01", "range_required"), ("to=2026-03-01", "range_required"),
    ("from=2026-03-05&to=2026-03-01", "range_invalid"), ("from=03/01/2026&to=2026-03-05", "range_invalid"),
    ("from=2024-01-01&to=2026-03-01", "range_too_long"),
])
def test_bad_ranges_are_400_with_a_code(auth_client, org_with_members, query, code):
    response = auth_client(org_with_members.member).get(url(org_with_members.org, query))
    assert_error(response, 400, code)
    assert response["RateLimit-Limit"]


def test_another_org_is_404(auth_client, org_with_members, other_org):
    assert_error(auth_client(org_with_members.member).get(url(other_org.org)), 404, "organization_not_found")


def test_429_with_retry_after_once_the_caller_quota_is_spent(auth_client, org_with_members, limits):
    client = auth_client(org_with_members.member)
    remaining = []
    for _ in range(3):
        response = client.get(url(org_with_members.org))
        assert response.status_code == 200
        assert response["RateLimit-Limit"] == "3"
        remaining.append(int(response["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    limited = client.get(url(org_with_members.org))
    body = assert_error(limited, 429, "stats_rate_limited")
    assert 50 <= int(limited["Retry-After"]) <= 60 and body["extra"]["retry_after"] > 0
    assert limited["RateLimit-Remaining"] == "0" and 100 <= int(limited["RateLimit-Reset"]) <= 180
    # Another caller still has its own quota, until the organization's is spent.
    other = auth_client(org_with_members.admin)
    assert other.get(url(org_with_members.org)).status_code == 200
    assert other.get(url(org_with_members.org)).status_code == 200
    org_limited = other.get(url(org_with_members.org))
    assert_error(org_limited, 429, "stats_rate_limited")
    assert org_limited["RateLimit-Remaining"] == "0"


def test_api_keys_are_callers_of_their_own(api_key_client, auth_client, org_with_members, limits):
    _, key = api_key_create(organization=org_with_members.org, name="bi", created_by=org_with_members.owner)
    bot = api_key_client(key)
    for _ in range(3):
        assert bot.get(url(org_with_members.org)).status_code == 200
    assert_error(bot.get(url(org_with_members.org)), 429, "stats_rate_limited")
    assert auth_client(org_with_members.owner).get(url(org_with_members.org)).status_code == 200
