"""The notification preferences page in headless Chromium (Playwright, Debian's chromium) against a
real Daphne: a member turns a category off on one channel for one organization with the keyboard,
sees transactional categories locked on, sets quiet hours across midnight and a daily limit, saves,
and finds it all after a reload; a bad limit shows the API's error code. Leaves
docs/screenshots/notification-preferences.png. No console errors allowed."""
import os
from pathlib import Path

import pytest

from organizations.models import User
from organizations.services import membership_create, organization_create
from tests.support.stack import Stack

CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "prefs-page-pass-123"
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
    User.objects.create_user(username="carol", email="carol@example.com", password=PASSWORD,
                             time_zone="Europe/Berlin")
    org = organization_create(creator=alice, name="Acme Studio")
    membership_create(organization=org, email="carol@example.com", role="member")
    return org


@pytest.fixture
def stack(org):
    with Stack() as harness:
        harness.start_daphne("web")
        harness.wait_ready(timeout=60)
        with harness.dump_logs_on_failure(lines=40):
            yield harness


def test_member_sets_channels_quiet_hours_and_limits_with_the_keyboard(stack, org):
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.errors = []
            page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.goto(stack.url("web") + "/me/notifications/")
            page.fill("input[name=username]", "carol")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page.locator("h1")).to_have_text("Notification preferences")

            inapp_tracker = page.get_by_label("In-app: Tracker starts and stops, Acme Studio", exact=True)
            expect(inapp_tracker).to_be_checked()
            expect(page.get_by_label("SMS: Billing and receipts, Acme Studio (always sent)")).to_be_disabled()
            expect(page.locator("#scope-all caption")).to_have_text("All my organizations")
            inapp_tracker.focus()  # keyboard: Space toggles the focused box
            page.keyboard.press("Space")
            expect(inapp_tracker).not_to_be_checked()
            page.get_by_label("From", exact=True).fill("22:30")
            page.get_by_label("until", exact=True).fill("07:00")
            page.get_by_label("Email", exact=True).fill("3")
            expect(page.locator("fieldset").first).to_contain_text("Europe/Berlin")
            page.get_by_label("Email", exact=True).press("Enter")  # submits the form

            expect(page.locator(".message.success")).to_have_text("Preferences saved.")
            expect(inapp_tracker).not_to_be_checked()
            expect(page.get_by_label("In-app: Tracker starts and stops, All my organizations", exact=True)
                   ).to_be_checked()
            expect(page.get_by_label("From", exact=True)).to_have_value("22:30")
            expect(page.get_by_label("until", exact=True)).to_have_value("07:00")
            expect(page.get_by_label("Email", exact=True)).to_have_value("3")
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "notification-preferences.png"), full_page=True)

            page.get_by_label("Email", exact=True).fill("500")
            page.evaluate("document.getElementById('cap-email').removeAttribute('max')")  # past the browser's check
            page.get_by_role("button", name="Save preferences").click()
            expect(page.locator(".message.error")).to_contain_text("[daily_cap_out_of_range]")
            expect(page.get_by_label("Email", exact=True)).to_have_value("3")  # nothing changed
            assert page.errors == []
        finally:
            browser.close()
