"""The account and admin pages in headless Chromium (Playwright, Debian's chromium) against a real
Daphne: a member edits their profile and email preferences; an owner changes a member's role,
invites someone, connects Slack, adds a webhook endpoint (its secret shown once) and creates and
revokes an API key, partly with the keyboard alone. Each page leaves a screenshot under
docs/screenshots/. No console errors allowed."""
import os
from pathlib import Path

import pytest

from organizations.models import User
from organizations.services import api_key_create, invitation_create, membership_create, organization_create
from tests.support.stack import Stack

CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "admin-pages-pass-123"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.stack, pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM} (make browser-deps)"),
]


@pytest.fixture
def org(transactional_db):
    """Made before the browser starts (Playwright's loop in this thread forbids ORM calls later)."""
    alice = User.objects.create_user(username="alice", email="alice@example.com", password=PASSWORD,
                                     first_name="Alice")
    org = organization_create(creator=alice, name="Acme Studio")
    for name, role in (("bob", "admin"), ("carol", "member"), ("dave", "member")):
        User.objects.create_user(username=name, email=f"{name}@example.com", password=PASSWORD)
        membership_create(organization=org, email=f"{name}@example.com", role=role)
    invitation_create(organization=org, email="erin@example.com", role="member", invited_by=alice)
    api_key_create(organization=org, name="Time clock kiosk", created_by=alice)
    return org


@pytest.fixture
def stack(org):
    with Stack() as harness:
        harness.start_daphne("web")
        harness.wait_ready(timeout=60)
        with harness.dump_logs_on_failure(lines=40):
            yield harness


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def sign_in(browser, base: str, username: str):
    page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.errors = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(base + "/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    return page


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_member_edits_profile_and_preferences(stack, org, browser):
    expect = sync_api.expect
    page = sign_in(browser, stack.url("web"), "carol")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Profile").click()
    expect(page.locator("h1")).to_have_text("Profile")
    expect(page.get_by_role("link", name="Members")).to_have_count(0)  # no admin section for members
    page.get_by_label("First name").fill("Carol")
    page.get_by_label("Last name").fill("Jones")
    page.get_by_label("Time zone").select_option("Europe/Berlin")
    page.get_by_label("Language of notifications").select_option("de")
    page.get_by_role("button", name="Save profile").click()
    expect(page.locator(".message.success")).to_have_text("Profile saved.")
    expect(page.get_by_label("Time zone")).to_have_value("Europe/Berlin")
    page.get_by_label("Email", exact=True).fill("alice@example.com")  # taken: the API's error, in the page
    page.get_by_role("button", name="Save profile").click()
    expect(page.locator(".message.error")).to_contain_text("[email_taken]")
    page.get_by_label("Email", exact=True).fill("carol@example.com")
    shoot(page, "profile")

    page.get_by_role("link", name="Notification settings").click()
    box = page.locator(f"#pref-{org.id}-email-tracker_event")
    expect(box).not_to_be_checked()
    expect(page.locator("#pref-all-email-profile_updated")).to_be_disabled()
    box.check()
    page.get_by_role("button", name="Save preferences").click()
    expect(page.locator(".message.success")).to_have_text("Preferences saved.")
    expect(page.locator(f"#pref-{org.id}-email-tracker_event")).to_be_checked()
    expect(page.locator("#pref-all-email-tracker_event")).not_to_be_checked()
    shoot(page, "preferences")
    assert page.errors == []


def test_owner_manages_members_slack_webhooks_and_api_keys(stack, org, browser):
    expect = sync_api.expect
    page = sign_in(browser, stack.url("web"), "alice")
    page.keyboard.press("Tab")  # the first stop is the skip link
    expect(page.locator(".skip")).to_be_focused()

    page.get_by_role("link", name="Members").click()
    carol = page.locator('tr[data-username="carol"]')
    carol.get_by_label("Role of carol").select_option("admin")
    carol.get_by_role("button", name="Change role of carol").click()
    expect(page.locator(".message.success")).to_have_text("carol is now admin.")
    expect(page.locator('tr[data-username="alice"] .role')).to_have_text("Owner")
    page.get_by_label("Email", exact=True).fill("frank@example.com")
    page.get_by_label("Role", exact=True).select_option("member")
    page.get_by_role("button", name="Invite").click()
    assert "/invitations/hin_" in page.locator("#invitation-url").input_value()
    expect(page.locator("#invitations-table tbody tr[data-invitation-id]")).to_have_count(2)
    page.locator('tr[data-username="dave"]').get_by_role("button", name="Remove dave").click()
    expect(page.locator('tr[data-username="dave"]')).to_have_count(0)
    shoot(page, "members")

    page.get_by_role("link", name="Slack").click()
    expect(page.locator("#slack-none")).to_be_visible()
    page.get_by_label("Channel").fill("#team-time")
    page.get_by_label("Bot token").fill("xoxb-1234-not-a-real-token")
    page.get_by_role("button", name="Save Slack settings").click()
    expect(page.locator("#slack-channel")).to_have_text("#team-time")
    expect(page.get_by_label("Bot token")).to_have_value("")  # never echoed
    assert "xoxb-1234" not in page.content()
    shoot(page, "slack")

    page.get_by_role("link", name="Webhooks").click()
    page.get_by_label("URL").fill("https://hooks.example.com/herald")
    page.get_by_label("Description").fill("Payroll sync")
    page.get_by_role("button", name="Add endpoint").click()
    secret = page.locator("#webhook-secret").input_value()
    assert secret.startswith("whsec_")
    expect(page.locator("#webhooks-table tbody tr[data-webhook-id]")).to_have_count(1)
    shoot(page, "webhooks")
    page.goto(page.url)  # shown once: gone on the next view (the secret is never stored in the clear)
    expect(page.locator("#webhook-secret")).to_have_count(0)
    page.get_by_label("URL").fill("https://127.0.0.1/hook")
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.locator(".message.error")).to_contain_text("[invalid_webhook_url]")

    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").focus()  # keyboard only: type, tick a scope with Space, submit with Enter
    page.keyboard.type("Payroll export")
    page.get_by_label("members:write", exact=False).focus()
    page.keyboard.press("Space")
    page.get_by_label("Name").focus()
    page.keyboard.press("Enter")
    key = page.locator("#new-key").input_value()
    assert key.startswith("hak_")
    row = page.locator("#keys-table tbody tr[data-key-id]").first
    expect(row).to_contain_text("Payroll export")
    expect(row).to_contain_text("members:write")
    shoot(page, "api_keys")
    page.locator("#keys-table tbody tr[data-key-id]").last.get_by_role("button", name="Revoke Time clock kiosk").click()
    expect(page.locator("#keys-table tbody tr[data-key-id]").last).to_contain_text("revoked")
    assert page.errors == []


def test_member_pages_render_without_errors(stack, org, browser):
    """The pages that existed before (live, trackers, a tracker, time entries) in the same browser:
    each draws its heading with no console error, and leaves its screenshot."""
    expect = sync_api.expect
    page = sign_in(browser, stack.url("web"), "carol")
    expect(page.locator("#live[data-connected=true]")).to_have_count(1, timeout=15_000)
    shoot(page, "live")
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Trackers").click()
    expect(page.locator("h1")).to_contain_text("Trackers")
    shoot(page, "trackers")
    page.locator("main").get_by_role("link", name="Main tracker").click()
    page.get_by_label("New comment").fill("Starting the sprint board today.")
    page.get_by_role("button", name="Comment", exact=True).click()
    expect(page.locator("#threads")).to_contain_text("Starting the sprint board today.")
    shoot(page, "tracker")
    nav.get_by_role("link", name="Time entries").click()
    expect(page.locator("h1")).to_have_text("Time entries")
    shoot(page, "time_entries")
    assert page.errors == []
