"""The search page (/orgs/{id}/search/): ranked results with escaped snippets and links, paging,
each search logged like the API's, bad queries shown with the API's code (400, not logged), the
top-10 of the last hour beside them, another organization 404, a bounded number of queries."""
import pytest
from django.test.utils import CaptureQueriesContext
from django.db import connection

from reports.models import SearchLog
from reports.search import top
from tests.reports.test_search_api import corpus  # noqa: F401 (fixture)
from tests.reports.test_search_top import log
from tests.trackers.factories import TrackerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def member(client, org_with_members):
    client.force_login(org_with_members.member)
    return client


def _url(org):
    return f"/orgs/{org.id}/search/"


def test_results_link_to_their_pages_escape_the_text_and_are_logged(member, org_with_members, corpus):  # noqa: F811
    org = org_with_members.org
    response = member.get(_url(org), {"q": "Budget"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "results for “Budget”" in html
    assert f'href="/trackers/{corpus["tracker"].id}/' in html
    assert "<mark>" in html and "<script>alert(1)</script>" not in html  # snippets escaped, matches marked
    assert 'aria-current="page">Search<' in html
    assert list(SearchLog.objects.values_list("query", "user_id")) == [("budget", org_with_members.member.id)]


def test_a_bad_query_shows_the_api_code_and_logs_nothing(member, org_with_members):
    response = member.get(_url(org_with_members.org), {"q": "x" * 201})
    assert response.status_code == 400
    assert "search_query_too_long" in response.content.decode()
    assert member.get(_url(org_with_members.org), {"q": "   "}).status_code == 400
    assert not SearchLog.objects.exists()


def test_no_query_shows_only_the_form_and_the_top_ten(member, org_with_members):
    org = org_with_members.org
    log(org, "invoices", count=3)
    log(org, "budget", count=5)
    top.search_top_refresh()
    html = member.get(_url(org)).content.decode()
    assert html.index(">budget<") < html.index(">invoices<")  # ranked
    assert "(5)" in html and SearchLog.objects.count() == 8  # opening the page searches nothing


def test_pages_of_results(member, org_with_members):
    org = org_with_members.org
    for i in range(25):
        TrackerFactory(organization=org, name=f"Design sprint {i}")
    first = member.get(_url(org), {"q": "design"}).content.decode()
    assert "Page 1 of 2" in first and 'rel="next"' in first
    second = member.get(_url(org), {"q": "design", "page": "2"}).content.decode()
    assert second.count('data-type="tracker"') == 5
    past = member.get(_url(org), {"q": "design", "page": "9"})
    assert past.status_code == 200 and "0 results" in past.content.decode()


def test_another_organization_is_404_and_anonymous_is_sent_to_sign_in(client, member, other_org):
    assert member.get(_url(other_org.org), {"q": "x"}).status_code == 404
    client.logout()
    assert client.get(_url(other_org.org)).status_code == 302


def test_queries_do_not_grow_with_results(member, org_with_members):
    org = org_with_members.org
    TrackerFactory(organization=org, name="Design one")
    member.get(_url(org), {"q": "design"})  # the first fills the session and the top-10 cache
    with CaptureQueriesContext(connection) as few:
        member.get(_url(org), {"q": "design"})
    for i in range(15):
        TrackerFactory(organization=org, name=f"Design {i}")
    with CaptureQueriesContext(connection) as many:
        member.get(_url(org), {"q": "design"})
    assert len(many) == len(few) <= 12
