"""The inbox in headless Chromium (Playwright, Debian's chromium) against real Daphne and delivery
workers: one member has the inbox open on two devices; a colleague's tracker start arrives on both
without a reload, a read on one device shows on the other, "Mark all read" empties the unread count
everywhere, and the pages page through older notifications. Leaves docs/screenshots/inbox.png.
No console errors allowed."""
import os
import threading
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from notifications.models import Notification
from notifications.pages import INBOX_PER_PAGE
from organizations.models import User
from organizations.services import membership_create, organization_create
from tests.notifications.factories import NotificationFactory
from tests.support.stack import DELIVERY_QUEUES, Stack
from trackers.models import Tracker
from trackers.services import tracker_start

CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "inbox-page-pass-123"
LIVE = 8_000  # ms
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.stack, pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM} (make browser-deps)"),
]


@pytest.fixture
def inbox_setup(transactional_db):
    """Made before the browser starts (Playwright's loop in this thread forbids ORM calls later)."""
    alice = User.objects.create_user(username="alice", email="alice@example.com", password=PASSWORD)
    carol = User.objects.create_user(username="carol", email="carol@example.com", password=PASSWORD)
    org = organization_create(creator=alice, name="Acme Studio")
    membership_create(organization=org, email=carol.email, role="member")
    titles = ["Weekly report is ready", "carol replied to your comment", "bob stopped Design",
              "dave started Main tracker"]
    for n in range(INBOX_PER_PAGE + 4):
        NotificationFactory(organization=org, recipient=alice, kind="tracker.event", title=titles[n % 4] + f" ({n})",
                            body="" if n % 3 else "Open the tracker to see the timeline.")
    # the oldest ones were read; the newest three are unread
    newest = list(Notification.objects.filter(recipient=alice).order_by("-id").values_list("id", flat=True)[:3])
    Notification.objects.filter(recipient=alice).exclude(id__in=newest).update(read_at=timezone.now())
    return org, carol, Tracker.objects.get(organization=org).id


@pytest.fixture
def stack(inbox_setup):
    with Stack() as harness:
        harness.start_daphne("web")
        harness.start_worker("orgs", DELIVERY_QUEUES)
        harness.wait_ready(timeout=60)
        with harness.dump_logs_on_failure(lines=40):
            yield harness


def open_inbox(browser, base: str):
    page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.errors = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(base + "/inbox/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#inbox[data-connected=true]", timeout=15_000)
    page.evaluate("window.__sameDocument = true")
    return page


def _start(tracker_id: int, carol: User) -> None:
    try:
        tracker_start(tracker_id=tracker_id, actor=carol)
    finally:
        connection.close()


def test_inbox_live_on_two_devices_read_and_read_all(stack, inbox_setup):
    org, carol, tracker_id = inbox_setup
    expect = sync_api.expect
    base = stack.url("web")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            laptop, phone = open_inbox(browser, base), open_inbox(browser, base)
            for page in (laptop, phone):
                expect(page.locator("#inbox-unread")).to_have_text("3")
                expect(page.locator("#inbox-list li.notification")).to_have_count(INBOX_PER_PAGE)

            worker = threading.Thread(target=_start, args=(tracker_id, carol))
            worker.start()
            worker.join()

            for page in (laptop, phone):  # arrives live, no reload
                expect(page.locator("#inbox-unread")).to_have_text("4", timeout=LIVE)
                expect(page.locator("#inbox-list li.notification").first).to_have_class("notification unread")
                expect(page.locator("#inbox-live")).to_contain_text("New notification")
                assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            phone.screenshot(path=str(SCREENSHOTS / "inbox.png"), full_page=True)

            first = laptop.locator("#inbox-list li.notification").first
            first.locator("button[type=submit]").click()  # "Mark … read", a plain form: the laptop reloads
            expect(laptop.locator("#inbox-unread")).to_have_text("3")
            expect(laptop.locator("#inbox-list li.notification").first).to_have_class("notification")
            expect(phone.locator("#inbox-unread")).to_have_text("3", timeout=LIVE)  # synced to the other device
            expect(phone.locator("#inbox-list li.notification").first).to_have_class("notification")

            phone.locator("#inbox-read-all").focus()  # keyboard: focus and Enter
            phone.keyboard.press("Enter")
            expect(phone.locator(".message.success")).to_contain_text("Marked 3 notifications read.")
            expect(laptop.locator("#inbox-unread")).to_have_text("0", timeout=LIVE)
            expect(laptop.locator("#inbox-read-all")).to_be_disabled()
            expect(laptop.locator("#inbox-list li.unread")).to_have_count(0)

            laptop.get_by_role("link", name="Older →").click()
            expect(laptop.locator("#inbox-list li.notification")).to_have_count(5)
            expect(laptop.locator(".pager")).to_contain_text("Page 2 of 2")
            laptop.get_by_role("link", name="Unread").click()
            expect(laptop.locator("#inbox-list li.empty")).to_have_text("No unread notifications.")
            assert laptop.errors == [] and phone.errors == []
        finally:
            browser.close()
