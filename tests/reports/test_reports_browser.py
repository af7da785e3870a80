"""The reports and stats pages in headless Chromium (Playwright, Debian's chromium) against real
Daphne and a real reports worker: a member requests a report, watches its progress bar reach
100 % without reloading, reloads and still sees it, and downloads the file; the stats page draws
its charts. Each page leaves a screenshot under docs/screenshots/. No console errors allowed."""
import datetime as dt
import os
from pathlib import Path

import pytest
from django.utils import timezone

from organizations.models import User
from organizations.services import membership_create, organization_create
from tests.reports.factories import seed_entries
from tests.support.stack import Stack
from tests.trackers.factories import TrackerFactory
from trackers.models import Tracker

CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "reports-page-pass-123"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.stack, pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM} (make browser-deps)"),
]


@pytest.fixture
def org(transactional_db):
    """Made before the browser starts (Playwright's loop in this thread forbids ORM calls later)."""
    alice = User.objects.create_user(username="alice", email="alice@example.com", password=PASSWORD)
    names = ["bob", "carol", "dave"]
    others = [User.objects.create_user(username=n, email=f"{n}@example.com", password=PASSWORD) for n in names]
    org = organization_create(creator=alice, name="Acme Studio")
    for user in others:
        membership_create(organization=org, email=user.email, role="member")
    main = Tracker.objects.get(organization=org)
    design = TrackerFactory(organization=org, name="Design")
    start = timezone.now().replace(hour=7, minute=0, second=0, microsecond=0) - dt.timedelta(days=27)
    people = [alice, *others]
    for i, user in enumerate(people):  # uneven hours per member and per day, so the charts say something
        seed_entries(tracker=main if i % 2 else design, users=[user], count=400 + 250 * i, start=start,
                     step_seconds=5400 + 900 * i, duration_seconds=1500 + 600 * i)
    return org


@pytest.fixture
def stack(org):
    with Stack(env={"REPORT_PROGRESS_SECONDS": "0.05", "REPORT_CHUNK_ROWS": "100"}) as harness:
        harness.start_daphne("web")
        harness.start_worker("reports", ["reports"])
        harness.wait_ready(timeout=60)
        with harness.dump_logs_on_failure(lines=40):
            yield harness


@pytest.fixture
def page(stack):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
            page = context.new_page()
            page.errors = []
            page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.goto(stack.url("web") + "/accounts/login/")
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/accounts/login/" not in url)
            yield page
        finally:
            browser.close()


def test_request_a_report_watch_it_finish_reload_and_download(stack, org, page):
    expect = sync_api.expect
    page.goto(stack.url("web") + f"/orgs/{org.id}/reports/")
    expect(page.locator("#job-rows tr.empty")).to_have_text("No reports yet.")
    page.select_option("#report-kind", "time_entries")
    page.fill("#report-from", (timezone.localdate() - dt.timedelta(days=30)).isoformat())
    page.get_by_role("button", name="Request report").click()
    expect(page.locator("#report-message")).to_contain_text("queued")
    row = page.locator("#job-rows tr[data-job-id]").first
    expect(row.locator(".job-status")).to_have_text("succeeded", timeout=60_000)
    expect(row.locator("progress")).to_have_attribute("value", "100")
    rows = int(row.locator(".job-rows").inner_text())
    assert rows > 1000

    page.get_by_role("button", name="Request report").click()  # same request again: a new job, it finished
    expect(page.locator("#job-rows tr[data-job-id]")).to_have_count(2, timeout=10_000)
    page.select_option("#report-format", "xlsx")
    page.fill("#report-from", "2026-03-10")
    page.fill("#report-to", "2026-03-01")
    page.get_by_role("button", name="Request report").click()
    expect(page.locator("#report-message")).to_contain_text("range_invalid")
    # Chromium logs the refused request itself as a console error: that one is expected.
    page.errors = [e for e in page.errors if "status of 400" not in e]

    page.reload()  # the server draws the table: every job is still there, where it stands
    expect(page.locator("#job-rows tr[data-job-id]")).to_have_count(2)
    expect(page.locator("#job-rows tr[data-job-id]").first.locator(".job-status")).to_have_text("succeeded",
                                                                                               timeout=60_000)
    with page.expect_download() as download_info:
        page.locator("#job-rows tr[data-job-id]").last.get_by_role("link", name="Download").click()
    download = download_info.value
    assert download.suggested_filename.startswith("time_entries_") and download.suggested_filename.endswith(".csv")
    with open(download.path()) as fh:
        assert sum(1 for _ in fh) == rows + 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "reports.png"), full_page=True)
    assert page.errors == []


def test_stats_page_draws_hours_per_member_and_per_day(stack, org, page):
    expect = sync_api.expect
    page.goto(stack.url("web") + f"/orgs/{org.id}/stats/")
    expect(page.locator("#stats[data-loaded=true]")).to_have_count(1, timeout=15_000)
    expect(page.locator("#chart-members rect.bar")).to_have_count(4)
    expect(page.locator("#chart-days rect.bar")).to_have_count(30)
    for name in ("alice", "bob", "carol", "dave"):
        expect(page.locator(f'#chart-members rect[data-user="{name}"]')).to_have_count(1)
    expect(page.locator("#stats-total")).to_contain_text("hours from")
    expect(page.locator("#stats-quota")).to_contain_text("requests left")
    page.locator("#trackers-table").evaluate("t => t.closest('details').open = true")
    expect(page.locator("#trackers-table tbody tr")).to_have_count(2)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "stats.png"), full_page=True)
    assert page.errors == []
