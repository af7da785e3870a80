"""Server-rendered notification pages: the inbox (mark read, mark all read, pagination, another
member's notification 404, a query count that does not grow with the page), notification
preferences (only what was changed becomes a choice; locked ones stay on) and webhook endpoints
(admins only; the secret shown once; another org's endpoint 404)."""
import pytest
from django.test import Client

from notifications.models import ChannelDestination, MemberNotificationSettings, Notification, NotificationPreference
from notifications.pages import INBOX_PER_PAGE
from notifications.preferences import preference_list
from tests.conftest import queries_for
from tests.notifications.factories import NotificationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser_for():
    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client
    return make


def test_inbox_lists_own_notifications_newest_first_with_unread_marked(browser_for, org_with_members):
    member = org_with_members.member
    old = NotificationFactory(organization=org_with_members.org, recipient=member, title="older one")
    new = NotificationFactory(organization=org_with_members.org, recipient=member, title="newer <b>one</b>")
    NotificationFactory(organization=org_with_members.org, recipient=org_with_members.owner, title="not yours")
    Notification.objects.filter(pk=old.pk).update(read_at=new.created_at)

    html = browser_for(member).get("/inbox/").content.decode()

    assert html.index("newer &lt;b&gt;one&lt;/b&gt;") < html.index("older one") and "not yours" not in html
    assert f'class="notification unread" data-id="{new.id}"' in html
    assert f'class="notification" data-id="{old.id}"' in html
    assert 'data-count="1"' in html and 'href="/inbox/" aria-current="page">Inbox' in html
    unread = browser_for(member).get("/inbox/?show=unread").content.decode()
    assert "newer" in unread and "older one" not in unread


def test_mark_read_and_mark_all_read(browser_for, org_with_members):
    member = org_with_members.member
    first, second, third = (NotificationFactory(organization=org_with_members.org, recipient=member)
                            for _ in range(3))
    client = browser_for(member)

    response = client.post(f"/inbox/{first.id}/read", {"next": "/inbox/?show=unread&page=1"})
    assert response.status_code == 302 and response["Location"] == "/inbox/?show=unread&page=1"
    first.refresh_from_db()
    assert first.read_at is not None
    assert Notification.objects.filter(recipient=member, read_at__isnull=True).count() == 2

    response = client.post("/inbox/read-all", {"next": "https://evil.example/"})
    assert response.status_code == 302 and response["Location"] == "/inbox/"  # no open redirect
    assert not Notification.objects.filter(recipient=member, read_at__isnull=True).exists()
    assert "Marked 2 notifications read." in client.get("/inbox/").content.decode()


def test_another_members_notification_is_404_and_unchanged(browser_for, org_with_members, other_org):
    foreign = NotificationFactory(organization=other_org.org, recipient=other_org.member)
    response = browser_for(org_with_members.member).post(f"/inbox/{foreign.id}/read")
    assert response.status_code == 404 and b"notification_not_found" in response.content
    foreign.refresh_from_db()
    assert foreign.read_at is None


def test_inbox_paginates_and_its_query_count_does_not_grow(browser_for, org_with_members,
                                                           django_assert_max_num_queries):
    member = org_with_members.member
    client = browser_for(member)
    NotificationFactory.create_batch(3, organization=org_with_members.org, recipient=member)
    client.get("/inbox/")  # the first request of a session also writes the session
    few, _ = queries_for(django_assert_max_num_queries, 12, lambda: client.get("/inbox/"))
    NotificationFactory.create_batch(INBOX_PER_PAGE * 2, organization=org_with_members.org, recipient=member)
    many, response = queries_for(django_assert_max_num_queries, 12, lambda: client.get("/inbox/"))
    assert many == few
    html = response.content.decode()
    assert html.count('<li class="notification') == INBOX_PER_PAGE and "Page 1 of 3" in html
    last = client.get("/inbox/?page=3").content.decode()
    assert last.count('<li class="notification') == 3
    fragment = client.get("/inbox/?page=1&fragment=1").content.decode()
    assert "<html" not in fragment and fragment.count('<li class="notification') == INBOX_PER_PAGE
    assert 'name="next" value="/inbox/?show=all&amp;page=1"' in fragment  # never back to the fragment


def test_pages_need_sign_in(client):
    for url in ("/inbox/", "/me/notifications/", "/me/profile/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def _effective(user, org_id, category="tracker_event"):
    return next(p for p in preference_list(user=user) if p.organization_id == org_id and p.category == category)


def test_preferences_page_sets_only_what_changed(browser_for, org_with_members):
    member = org_with_members.member
    org_id = org_with_members.org.id
    client = browser_for(member)
    html = client.get("/me/notifications/").content.decode()
    assert "All my organizations" in html and "Acme" in html
    assert 'id="pref-all-email-profile_updated" checked disabled' in html  # locked: always sent
    shown = ["all:email:tracker_event", f"{org_id}:email:tracker_event"]

    response = client.post("/me/notifications/", {"shown": shown, "on": [f"{org_id}:email:tracker_event"]})

    assert response.status_code == 302
    assert NotificationPreference.objects.filter(user=member).count() == 1  # the global one stays a default
    assert _effective(member, org_id).enabled and _effective(member, org_id).source == "organization"
    assert _effective(member, None).source == "default"
    assert "Preferences saved." in client.get("/me/notifications/").content.decode()

    client.post("/me/notifications/", {"shown": shown, "on": []})
    assert not _effective(member, org_id).enabled


def test_preferences_page_refuses_unknown_or_foreign_keys(browser_for, org_with_members, other_org):
    client = browser_for(org_with_members.member)
    response = client.post("/me/notifications/", {"shown": [f"{other_org.org.id}:email:tracker_event"],
                                                  "on": [f"{other_org.org.id}:email:tracker_event"]}, follow=True)
    assert "[unknown_preference]" in response.content.decode()
    assert not NotificationPreference.objects.exists()


def test_preferences_page_sets_any_category_x_channel_quiet_hours_and_caps(browser_for, org_with_members):
    member, org_id = org_with_members.member, org_with_members.org.id
    client = browser_for(member)
    html = client.get("/me/notifications/").content.decode()
    assert f'id="pref-{org_id}-inapp-marketing"' in html and 'id="pref-all-sms-billing" checked disabled' in html
    assert 'name="quiet_start"' in html and 'name="cap_email"' in html
    shown = [f"{org_id}:inapp:marketing", "all:push:reminders"]

    response = client.post("/me/notifications/", {"shown": shown, "on": ["all:push:reminders"],
                                                  "quiet_start": "22:00", "quiet_end": "07:00",
                                                  "cap_email": "4", "cap_sms": ""})

    assert response.status_code == 302
    choices = set(NotificationPreference.objects.filter(user=member).values_list("organization_id", "channel",
                                                                                 "category", "enabled"))
    assert choices == {(org_id, "inapp", "marketing", False)}  # push reminders were on already: no choice
    row = MemberNotificationSettings.objects.get(user=member)
    assert (row.quiet_hours_start.isoformat(), row.quiet_hours_end.isoformat(), row.daily_caps) == (
        "22:00:00", "07:00:00", {"email": 4})
    html = client.get("/me/notifications/").content.decode()
    assert "Preferences saved." in html and 'value="22:00"' in html and 'value="4"' in html

    client.post("/me/notifications/", {"quiet_start": "", "quiet_end": "", "cap_email": ""})
    row.refresh_from_db()
    assert (row.quiet_hours_start, row.daily_caps) == (None, {})


@pytest.mark.parametrize(("form", "code"), [
    ({"quiet_start": "22:00", "quiet_end": ""}, "invalid_quiet_hours"),
    ({"quiet_start": "9pm", "quiet_end": "07:00"}, "validation_error"),
    ({"cap_sms": "500"}, "daily_cap_out_of_range"),
    ({"cap_sms": "-2"}, "validation_error"),
    ({"shown": ["all:inapp:billing"], "on": []}, None),  # locked: ignored, nothing changes
])
def test_preferences_page_shows_the_api_s_errors_and_writes_nothing(browser_for, org_with_members, form, code):
    member = org_with_members.member
    client = browser_for(member)
    response = client.post("/me/notifications/", {"shown": ["all:inapp:reminders"], "on": [], **form}, follow=True)
    html = response.content.decode()
    if code is None:
        assert "Nothing changed." in html
        assert not NotificationPreference.objects.filter(category="billing").exists()
        return
    assert f"[{code}]" in html
    assert not NotificationPreference.objects.exists()  # the reminders change rolled back with it
    assert not MemberNotificationSettings.objects.filter(user=member).exclude(daily_caps={}).exists()


WEBHOOKS = "/orgs/{}/admin/webhooks/"


def test_webhooks_page_creates_shows_secret_once_and_removes(browser_for, org_with_members):
    org = org_with_members.org
    client = browser_for(org_with_members.admin)

    response = client.post(WEBHOOKS.format(org.id), {"url": "https://hooks.example.com/herald",
                                                      "description": "CI"})

    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    html = response.content.decode()
    row = ChannelDestination.objects.get(organization=org, channel="webhook")
    assert 'id="webhook-secret" readonly value="whsec_' in html and f'data-webhook-id="{row.id}"' in html
    again = client.get(WEBHOOKS.format(org.id)).content.decode()
    assert "whsec_" not in again and "https://hooks.example.com/herald" in again

    response = client.post(f"{WEBHOOKS.format(org.id)}{row.id}/delete")
    assert response.status_code == 302
    row.refresh_from_db()
    assert not row.enabled and "No endpoints yet." in client.get(WEBHOOKS.format(org.id)).content.decode()


def test_webhooks_page_shows_the_apis_error_code(browser_for, org_with_members):
    client = browser_for(org_with_members.admin)
    html = client.post(WEBHOOKS.format(org_with_members.org.id), {"url": "http://10.0.0.1/x"}).content.decode()
    assert "[invalid_webhook_url]" in html and 'role="alert"' in html
    assert 'value="http://10.0.0.1/x"' in html  # the form keeps what was typed
    assert not ChannelDestination.objects.exists()


def test_webhooks_page_is_for_admins_and_own_org_only(browser_for, org_with_members, other_org):
    foreign = ChannelDestination.objects.create(organization=other_org.org, channel="webhook",
                                                address="https://other.example.com/h")
    member = browser_for(org_with_members.member)
    assert member.get(WEBHOOKS.format(org_with_members.org.id)).status_code == 403
    assert member.post(WEBHOOKS.format(org_with_members.org.id), {"url": "https://a.example.com"}).status_code == 403
    admin = browser_for(org_with_members.admin)
    assert admin.get(WEBHOOKS.format(other_org.org.id)).status_code == 404
    assert admin.post(f"{WEBHOOKS.format(other_org.org.id)}{foreign.id}/delete").status_code == 404
    response = admin.post(f"{WEBHOOKS.format(org_with_members.org.id)}{foreign.id}/delete")
    assert response.status_code == 404 and b"webhook_not_found" in response.content
    foreign.refresh_from_db()
    assert foreign.enabled
    assert ChannelDestination.objects.count() == 1


def test_webhooks_page_query_count_does_not_grow(browser_for, org_with_members, django_assert_max_num_queries):
    org = org_with_members.org
    client = browser_for(org_with_members.admin)
    ChannelDestination.objects.create(organization=org, channel="webhook", address="https://a.example.com/1")
    client.get(WEBHOOKS.format(org.id))  # the first request of a session also writes the session
    few, _ = queries_for(django_assert_max_num_queries, 12, lambda: client.get(WEBHOOKS.format(org.id)))
    for n in range(8):
        ChannelDestination.objects.create(organization=org, channel="webhook", address=f"https://a.example.com/{n}")
    many, _ = queries_for(django_assert_max_num_queries, 12, lambda: client.get(WEBHOOKS.format(org.id)))
    assert many == few
