"""The search page in headless Chromium against a real Daphne: a member searches from the
navigation with the keyboard, sees ranked results with highlighted matches, follows one to its
tracker, re-runs a top-10 query with one click, and a too-long query shows the API's code. A
screenshot lands in docs/screenshots/search.png. No console errors allowed."""
import datetime as dt
import os

import pytest
from django.utils import timezone

from reports.search import top
from tests.pages.test_account_admin_browser import CHROMIUM, PASSWORD, browser, shoot, sign_in  # noqa: F401
from tests.reports.test_search_top import log
from tests.trackers.factories import TimeEntryFactory, TrackerFactory
from tests.support.stack import Stack
from organizations.models import User
from organizations.services import membership_create, organization_create
from trackers import services as tracker_services

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.stack, pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM} (make browser-deps)"),
]


@pytest.fixture
def org(transactional_db):
    """Made before the browser starts (Playwright's loop in this thread forbids ORM calls later)."""
    alice = User.objects.create_user(username="alice", email="alice@example.com", password=PASSWORD)
    carol = User.objects.create_user(username="carol", email="carol@example.com", password=PASSWORD)
    org = organization_create(creator=alice, name="Acme Studio")
    membership_create(organization=org, email=carol.email, role="member")
    budget = TrackerFactory(organization=org, name="Budget planning")
    TrackerFactory(organization=org, name="Website redesign")
    TimeEntryFactory(tracker=budget, notes="Reviewed the quarterly budget with finance.",
                     started_at=timezone.now() - dt.timedelta(hours=2), stopped_at=timezone.now())
    tracker_services.comment_create(tracker=budget, author=carol, body="Is the budget final?")
    for query, count in (("budget", 7), ("website redesign", 4), ("invoices", 2)):
        log(org, query, count=count)
    top.search_top_refresh()
    org.budget_id = budget.id
    return org


@pytest.fixture
def stack(org):
    with Stack() as harness:
        harness.start_daphne("web")
        harness.wait_ready(timeout=60)
        with harness.dump_logs_on_failure(lines=40):
            yield harness


def test_search_with_the_keyboard_follow_a_result_and_rerun_a_top_query(stack, org, browser):  # noqa: F811
    expect = sync_api.expect
    page = sign_in(browser, stack.url("web"), "carol")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Search").click()
    expect(page.locator("#top-list li")).to_have_count(3)
    expect(page.locator("#top-list li").first).to_contain_text("budget")

    page.get_by_label("Search trackers, notes and comments").fill("budget")
    page.keyboard.press("Enter")
    expect(page.locator("#search-count")).to_contain_text("3 results for “budget”")
    expect(page.locator("#search-results mark").first).to_have_text("budget", ignore_case=True)
    types = page.locator("#search-results li").evaluate_all("items => items.map(i => i.dataset.type).sort()")
    assert types == ["comment", "time_entry", "tracker"]
    shoot(page, "search")

    page.locator("#search-top").get_by_role("link", name="website redesign").click()
    expect(page.locator("#search-count")).to_contain_text("1 result for “website redesign”")
    page.locator("#search-results").get_by_role("link", name="Website redesign").click()
    page.wait_for_url(lambda url: "/trackers/" in url)

    page.goto(stack.url("web") + f"/orgs/{org.id}/search/?q=" + "x" * 201)
    expect(page.locator("#search-error")).to_contain_text("search_query_too_long")
    page.errors = [e for e in page.errors if "status of 400" not in e]  # Chromium logs the 400 itself
    assert page.errors == []
