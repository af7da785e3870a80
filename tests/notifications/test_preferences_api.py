"""GET|PUT /api/v1/me/preferences extended (issue 13 #5): every category x channel, the precedence
(organization override > global > organization default > built-in), transactional categories locked
on, quiet hours and daily caps; GET|PUT /api/v1/orgs/{id}/preferences (organization defaults, admins
write). Error shapes, another organization -> 404, all or nothing, query counts."""
import pytest

from notifications.models import (
    DeliveryStream,
    MemberNotificationSettings,
    NotificationPreference,
    OrganizationPreference,
)
from organizations.models import Membership
from tests.conftest import assert_error, queries_for
from tests.organizations.factories import ApiKeyFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/me/preferences"


def _org_url(org) -> str:
    return f"/api/v1/orgs/{org.id}/preferences"


def _cell(body: dict, org_id, channel: str, category: str) -> dict:
    [cell] = [p for p in body["matrix"] if (p["organization_id"], p["channel"], p["category"]) == (org_id, channel,
                                                                                                   category)]
    return cell


def _put(client, **body):
    return client.put(URL, body, format="json")


def test_get_lists_every_category_x_channel_and_keeps_the_email_rows(auth_client, org_with_members):
    body = auth_client(org_with_members.member).get(URL).json()
    org_id = org_with_members.org.id

    assert len(body["preferences"]) == 4  # the email rows as before (test_email_preferences_api.py)
    assert body["channels"][0] == "inapp" and {"email", "sms", "push", "whatsapp"} <= set(body["channels"])
    names = [c["name"] for c in body["categories"]]
    assert len(body["matrix"]) == len(body["channels"]) * len(names) * 2  # global + one organization
    assert _cell(body, org_id, "inapp", "tracker_event") == {
        "organization_id": org_id, "channel": "inapp", "category": "tracker_event", "enabled": True,
        "source": "default", "locked": False}
    assert _cell(body, None, "email", "tracker_event")["enabled"] is False  # tracker emails are opt-in
    assert _cell(body, org_id, "sms", "billing") | {"organization_id": 0} == {
        "organization_id": 0, "channel": "sms", "category": "billing", "enabled": True, "source": "required",
        "locked": True}
    billing = next(c for c in body["categories"] if c["name"] == "billing")
    assert billing == {"name": "billing", "label": "Billing and receipts", "transactional": True,
                       "promotional": False}
    assert body["quiet_hours"] == {"start": None, "end": None, "time_zone": org_with_members.member.time_zone}
    assert {c["channel"]: (c["limit"], c["source"]) for c in body["daily_caps"]}["email"] == (10, "default")
    assert body["daily_cap_max"] == 100


def test_precedence_org_override_then_global_then_org_default_then_built_in(auth_client, org_with_members):
    o = org_with_members
    member = auth_client(o.member)
    cell = lambda body: _cell(body, o.org.id, "inapp", "marketing")  # noqa: E731

    assert cell(member.get(URL).json())[("enabled")] is True  # built in

    response = auth_client(o.admin).put(_org_url(o.org), {"defaults": [
        {"channel": "inapp", "category": "marketing", "enabled": False}]}, format="json")
    assert response.status_code == 200, response.content
    assert cell(member.get(URL).json()) | {"locked": None} == {
        "organization_id": o.org.id, "channel": "inapp", "category": "marketing", "enabled": False,
        "source": "organization_default", "locked": None}

    body = _put(member, preferences=[{"channel": "inapp", "category": "marketing", "enabled": True}]).json()
    assert (cell(body)["enabled"], cell(body)["source"]) == (True, "global")
    assert _cell(body, None, "inapp", "marketing")["source"] == "global"

    body = _put(member, preferences=[{"organization_id": o.org.id, "channel": "inapp", "category": "marketing",
                                      "enabled": False}]).json()
    assert (cell(body)["enabled"], cell(body)["source"]) == (False, "organization")
    assert _cell(body, None, "inapp", "marketing")["enabled"] is True  # the global choice stays


@pytest.mark.parametrize("category", ["transactional", "security", "billing", "account", "profile_updated"])
def test_a_transactional_category_cannot_be_turned_off_by_a_member_or_an_organization(auth_client, org_with_members,
                                                                                      category):
    o = org_with_members
    body = assert_error(_put(auth_client(o.member), preferences=[
        {"channel": "inapp", "category": "reminders", "enabled": False},
        {"channel": "sms", "category": category, "enabled": False}]), 400, "preference_locked")
    assert body["extra"] == {"channel": "sms", "category": category}
    assert not NotificationPreference.objects.exists()  # nothing half-written

    assert_error(auth_client(o.admin).put(_org_url(o.org), {"defaults": [
        {"channel": "email", "category": category, "enabled": False}]}, format="json"), 400, "preference_locked")
    assert not OrganizationPreference.objects.exists()


def test_quiet_hours_set_and_cleared(auth_client, org_with_members):
    client = auth_client(org_with_members.member)

    body = _put(client, quiet_hours={"start": "22:00", "end": "07:30"}).json()
    assert body["quiet_hours"] | {"time_zone": ""} == {"start": "22:00", "end": "07:30", "time_zone": ""}
    row = MemberNotificationSettings.objects.get(user=org_with_members.member)
    assert (row.quiet_hours_start.isoformat(), row.quiet_hours_end.isoformat()) == ("22:00:00", "07:30:00")

    body = _put(client, quiet_hours={"start": None, "end": None}).json()
    assert (body["quiet_hours"]["start"], body["quiet_hours"]["end"]) == (None, None)


@pytest.mark.parametrize(("quiet_hours", "code"), [
    ({"start": "22:00", "end": "22:00"}, "invalid_quiet_hours"),
    ({"start": "22:00", "end": None}, "invalid_quiet_hours"),
    ({"start": "22:00"}, "validation_error"),
    ({"start": "25:00", "end": "07:00"}, "validation_error"),
    ({"start": "22:00", "end": "07:00", "zone": "UTC"}, "validation_error"),
])
def test_bad_quiet_hours_are_400_and_change_nothing(auth_client, org_with_members, quiet_hours, code):
    client = auth_client(org_with_members.member)
    _put(client, quiet_hours={"start": "21:00", "end": "06:00"})

    assert_error(_put(client, preferences=[{"channel": "inapp", "category": "reminders", "enabled": False}],
                      quiet_hours=quiet_hours), 400, code)

    row = MemberNotificationSettings.objects.get(user=org_with_members.member)
    assert (row.quiet_hours_start.hour, row.quiet_hours_end.hour) == (21, 6)
    assert not NotificationPreference.objects.exists()


def test_daily_caps_per_member_within_the_bound(auth_client, org_with_members):
    client = auth_client(org_with_members.member)

    body = _put(client, daily_caps={"sms": 3, "email": 0}).json()
    caps = {c["channel"]: (c["limit"], c["source"]) for c in body["daily_caps"]}
    assert caps["sms"] == (3, "member") and caps["email"] == (0, "member") and caps["push"][1] == "default"

    body = _put(client, daily_caps={"sms": None}).json()
    assert {c["channel"]: c["source"] for c in body["daily_caps"]}["sms"] == "default"

    assert_error(_put(client, daily_caps={"sms": 101}), 400, "validation_error")
    assert_error(_put(client, daily_caps={"sms": -1}), 400, "validation_error")
    assert_error(_put(client, daily_caps={"slack": 5}), 400, "unknown_channel")
    assert_error(_put(client, daily_caps={"inapp": 5}), 400, "unknown_channel")
    assert MemberNotificationSettings.objects.get(user=org_with_members.member).daily_caps == {"email": 0}


@pytest.mark.parametrize("payload", [
    {"preferences": [{"channel": "slack", "category": "reminders", "enabled": False}]},
    {"preferences": [{"channel": "inapp", "category": "nope", "enabled": False}]},
    {"daily_caps": {"sms": "many"}},
    {"quiet_hours": "22-07"},
])
def test_bad_input_is_400_in_the_error_format(auth_client, org_with_members, payload):
    assert_error(auth_client(org_with_members.member).put(URL, payload, format="json"), 400, "validation_error")


def test_an_empty_put_changes_nothing(auth_client, org_with_members):
    client = auth_client(org_with_members.member)
    response = _put(client)
    assert response.status_code == 200 and response.json() == client.get(URL).json()


def test_another_organization_s_preferences_are_404(auth_client, org_with_members, other_org):
    client = auth_client(org_with_members.admin)

    assert_error(client.get(_org_url(other_org.org)), 404, "organization_not_found")
    assert_error(client.put(_org_url(other_org.org), {"defaults": [
        {"channel": "inapp", "category": "marketing", "enabled": False}]}, format="json"), 404,
        "organization_not_found")
    assert_error(_put(client, preferences=[{"organization_id": other_org.org.id, "channel": "inapp",
                                            "category": "marketing", "enabled": False}]), 404,
                 "organization_not_found")
    assert not OrganizationPreference.objects.exists() and not NotificationPreference.objects.exists()


def test_organization_defaults_members_read_admins_write(auth_client, api_key_client, org_with_members):
    o = org_with_members
    body = auth_client(o.member).get(_org_url(o.org)).json()
    assert body["organization_id"] == o.org.id
    [cell] = [d for d in body["defaults"] if (d["channel"], d["category"]) == ("email", "tracker_event")]
    assert cell == {"channel": "email", "category": "tracker_event", "enabled": False, "source": "default",
                    "locked": False}

    assert_error(auth_client(o.member).put(_org_url(o.org), {"defaults": [
        {"channel": "inapp", "category": "marketing", "enabled": False}]}, format="json"), 403, "admin_required")
    key = ApiKeyFactory(organization=o.org)
    assert_error(api_key_client(key.plaintext).get(_org_url(o.org)), 403, "user_required")

    body = auth_client(o.owner).put(_org_url(o.org), {"defaults": [
        {"channel": "push", "category": "marketing", "enabled": False}]}, format="json").json()
    [cell] = [d for d in body["defaults"] if (d["channel"], d["category"]) == ("push", "marketing")]
    assert (cell["enabled"], cell["source"]) == (False, "organization")

    body = auth_client(o.owner).put(_org_url(o.org), {"defaults": [
        {"channel": "push", "category": "marketing", "enabled": None}]}, format="json").json()
    [cell] = [d for d in body["defaults"] if (d["channel"], d["category"]) == ("push", "marketing")]
    assert (cell["enabled"], cell["source"]) == (True, "default")
    assert not OrganizationPreference.objects.exists()


def test_an_organization_default_turning_email_on_gives_members_an_email_stream(auth_client, org_with_members):
    o = org_with_members

    auth_client(o.admin).put(_org_url(o.org), {"defaults": [
        {"channel": "email", "category": "tracker_event", "enabled": True}]}, format="json")
    streams = set(DeliveryStream.objects.filter(organization=o.org, channel="email", active=True)
                  .values_list("destination", flat=True))
    assert streams == {str(o.owner.id), str(o.admin.id), str(o.member.id)}
    assert _cell(auth_client(o.member).get(URL).json(), o.org.id, "email", "tracker_event")["source"] == (
        "organization_default")

    # A member's own "off" wins over the organization's default: their stream stops.
    _put(auth_client(o.member), preferences=[{"organization_id": o.org.id, "channel": "email",
                                              "category": "tracker_event", "enabled": False}])
    assert not DeliveryStream.objects.get(organization=o.org, channel="email", destination=str(o.member.id)).active

    auth_client(o.admin).put(_org_url(o.org), {"defaults": [
        {"channel": "email", "category": "tracker_event", "enabled": None}]}, format="json")
    assert not DeliveryStream.objects.filter(organization=o.org, channel="email", active=True).exists()


def test_query_counts_do_not_grow_with_organizations(auth_client, org_with_members, django_assert_max_num_queries):
    o = org_with_members
    client = auth_client(o.member)
    client.get(URL)  # the token's last_used_at is written on first use
    few, _ = queries_for(django_assert_max_num_queries, 6, lambda: client.get(URL))
    org_few, _ = queries_for(django_assert_max_num_queries, 6, lambda: client.get(_org_url(o.org)))
    for _ in range(4):
        Membership.objects.create(organization=OrganizationFactory(), user=o.member)
    _put(client, preferences=[{"channel": "inapp", "category": "reminders", "enabled": False}],
         quiet_hours={"start": "22:00", "end": "07:00"}, daily_caps={"sms": 2})

    many, response = queries_for(django_assert_max_num_queries, 6, lambda: client.get(URL))
    org_many, _ = queries_for(django_assert_max_num_queries, 6, lambda: client.get(_org_url(o.org)))

    assert (many, org_many) == (few, org_few)
    body = response.json()
    assert len(body["matrix"]) == len(body["channels"]) * len(body["categories"]) * (1 + 5)
