"""The hourly top-10: the refresh (beat) aggregates the last hour of the search log into SearchTop
and Redis; GET /orgs/{id}/search/top serves Redis (no ORM), recomputes a stale or missing value
once at a time (a Redis lock) while the stale one is served, and falls back to the table without
Redis."""
import threading
import time
from datetime import timedelta

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from config.routing import route_task
from organizations.services import api_key_create
from reports.models import SearchLog, SearchTop
from reports.search import top
from tests.conftest import assert_error

pytestmark = pytest.mark.django_db


def log(org, query, count=1, ago=timedelta(minutes=5)):
    SearchLog.objects.bulk_create([SearchLog(organization_id=org.id, user_id=None, query=query,
                                             created_at=timezone.now() - ago) for _ in range(count)])


def url(org):
    return f"/api/v1/orgs/{org.id}/search/top"


def test_refresh_ranks_the_last_hour_per_organization(org_with_members, other_org):
    org = org_with_members.org
    for i in range(12):
        log(org, f"query {i:02d}", count=12 - i)  # "query 00" most searched
    log(org, "query 11", count=50, ago=timedelta(hours=2))  # outside the window
    log(other_org.org, "other", count=3)
    result = top.search_top_refresh()
    assert result["organizations"] == 2 and result["rows"] == 11
    rows = list(SearchTop.objects.filter(organization=org).order_by("rank").values_list("rank", "query", "searches"))
    assert rows == [(i + 1, f"query {i:02d}", 12 - i) for i in range(10)]
    assert list(SearchTop.objects.filter(organization=other_org.org).values_list("query", "searches")) == [("other", 3)]


def test_ties_are_ordered_by_query(org_with_members):
    for q in ("beta", "alpha", "gamma"):
        log(org_with_members.org, q, count=2)
    top.search_top_refresh()
    assert list(SearchTop.objects.order_by("rank").values_list("query", flat=True)) == ["alpha", "beta", "gamma"]


def test_the_endpoint_serves_the_refreshed_value_from_redis(auth_client, org_with_members,
                                                            django_assert_num_queries):
    org = org_with_members.org
    log(org, "invoices", count=3)
    log(org, "payroll", count=1)
    top.search_top_refresh()
    client = auth_client(org_with_members.member)
    client.get(url(org))  # the token's first use writes last_used_at
    with django_assert_num_queries(2) as captured:  # the token, the membership; nothing of SearchTop
        response = client.get(url(org))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert not any("reports_searchtop" in q["sql"] for q in captured.captured_queries)
    body = response.json()
    assert body["results"] == [{"rank": 1, "query": "invoices", "searches": 3},
                               {"rank": 2, "query": "payroll", "searches": 1}]
    assert body["window_start"] < body["window_end"]


def test_an_organization_without_searches_gets_an_empty_list_once_computed(auth_client, org_with_members,
                                                                           django_assert_num_queries):
    client = auth_client(org_with_members.member)
    top.search_top_refresh()
    body = client.get(url(org_with_members.org)).json()  # computed from the table, then cached
    assert body["results"] == [] and body["window_end"] is not None
    with django_assert_num_queries(2):
        assert client.get(url(org_with_members.org)).json() == body


def test_an_organization_that_drops_out_is_emptied_by_the_refresh(auth_client, org_with_members):
    log(org_with_members.org, "stale query", ago=timedelta(minutes=50))
    top.search_top_refresh()
    client = auth_client(org_with_members.member)
    assert client.get(url(org_with_members.org)).json()["results"][0]["query"] == "stale query"
    SearchLog.objects.all().delete()
    top.search_top_refresh()
    assert client.get(url(org_with_members.org)).json()["results"] == []


def test_another_organization_is_404(auth_client, api_key_client, org_with_members, other_org):
    assert_error(auth_client(other_org.member).get(url(org_with_members.org)), 404, "organization_not_found")
    _, key = api_key_create(organization=other_org.org, name="k", created_by=other_org.owner)
    assert_error(api_key_client(key).get(url(org_with_members.org)), 404, "organization_not_found")
    assert api_key_client(key).get(url(other_org.org)).status_code == 200


@pytest.fixture
def slow_table(monkeypatch):
    """Counts recomputations from the table; each takes 0.3 s (the window a stampede would use)."""
    calls = []

    def fake(organization_id, generation):
        calls.append(organization_id)
        time.sleep(0.3)
        return b'{"results":"fresh"}'

    monkeypatch.setattr(top, "_table_body", fake)
    return calls


def _hammer(org_id: int, n: int = 12) -> list[bytes]:
    results: list[bytes] = []
    barrier = threading.Barrier(n)

    def one():
        barrier.wait()
        results.append(top.search_top_body(organization_id=org_id))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_a_stale_value_is_recomputed_once_and_served_meanwhile(org_with_members, slow_table):
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(top.org_key(org_with_members.org.id), b"old-generation\n" + b'{"results":"stale"}')
    client.set(top.GEN_KEY, b"new-generation")
    results = _hammer(org_with_members.org.id)
    assert slow_table == [org_with_members.org.id]  # one recompute
    assert sorted(results) == sorted([b'{"results":"fresh"}'] + [b'{"results":"stale"}'] * 11)
    assert client.get(top.org_key(org_with_members.org.id)) == b"new-generation\n" + b'{"results":"fresh"}'


def test_a_missing_value_is_computed_once_while_the_others_wait_for_it(org_with_members, slow_table):
    redis.Redis.from_url(settings.REDIS_URL).set(top.GEN_KEY, b"gen")
    results = _hammer(org_with_members.org.id)
    assert slow_table == [org_with_members.org.id]
    assert results == [b'{"results":"fresh"}'] * 12


def test_without_redis_the_table_answers(auth_client, org_with_members, monkeypatch):
    log(org_with_members.org, "offline")
    top.search_top_refresh()
    monkeypatch.setattr(top, "_client", redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))
    response = auth_client(org_with_members.member).get(url(org_with_members.org))
    assert response.status_code == 200
    assert response.json()["results"] == [{"rank": 1, "query": "offline", "searches": 1}]
    assert top.search_top_refresh()["rows"] == 1  # the refresh commits the table, Redis or not


def test_a_refresh_while_another_runs_is_skipped(org_with_members):
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k in ("host", "port", "user", "password", "dbname")},
                         autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [top._REFRESH_ADVISORY_LOCK])
        assert top.search_top_refresh() == {"skipped": True}
        other.execute("SELECT pg_advisory_unlock(%s)", [top._REFRESH_ADVISORY_LOCK])
    assert "skipped" not in top.search_top_refresh()


def test_old_log_rows_are_purged_by_the_refresh(org_with_members, settings):
    settings.SEARCH_LOG_RETENTION_DAYS = 30
    log(org_with_members.org, "ancient", count=3, ago=timedelta(days=31))
    log(org_with_members.org, "recent", count=2, ago=timedelta(days=29))
    assert top.search_top_refresh()["purged"] == 3
    assert set(SearchLog.objects.values_list("query", flat=True)) == {"recent"}


def test_beat_runs_the_refresh_hourly_on_the_maintenance_queue():
    entry = settings.CELERY_BEAT_SCHEDULE["reports.refresh_search_top"]
    assert entry["task"] == "reports.tasks.refresh_search_top"
    assert entry["schedule"].minute == {0} and len(entry["schedule"].hour) == 24
    assert route_task("reports.tasks.refresh_search_top", (), {}, {}, None)["queue"] == "maintenance"
