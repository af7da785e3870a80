"""GET|PUT /api/v1/me/preferences: defaults (tracker emails off, profile confirmations locked on),
per-organization and global settings creating and removing the member's email streams, the error
shape, another organization -> 404, and a query count that does not grow with organizations."""
import pytest

from notifications.models import DeliveryStream, NotificationPreference
from organizations.models import Membership
from tests.conftest import assert_error, queries_for
from tests.organizations.factories import ApiKeyFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/me/preferences"


def _by_key(body: dict) -> dict:
    return {(p["organization_id"], p["category"]): p for p in body["preferences"]}


def _email_streams(user) -> set[int]:
    return set(DeliveryStream.objects.filter(channel="email", destination=str(user.id), active=True)
               .values_list("organization_id", flat=True))


def test_defaults_tracker_emails_off_profile_confirmations_locked_on(auth_client, org_with_members):
    response = auth_client(org_with_members.member).get(URL)

    assert response.status_code == 200
    prefs = _by_key(response.json())
    org_id = org_with_members.org.id
    assert set(prefs) == {(None, "tracker_event"), (org_id, "tracker_event"),
                          (None, "profile_updated"), (org_id, "profile_updated")}
    assert prefs[(None, "tracker_event")] == {"organization_id": None, "channel": "email", "category": "tracker_event",
                                              "enabled": False, "source": "default", "locked": False}
    assert prefs[(org_id, "tracker_event")]["enabled"] is False
    assert prefs[(org_id, "profile_updated")] | {"organization_id": None} == {
        "organization_id": None, "channel": "email", "category": "profile_updated", "enabled": True,
        "source": "required", "locked": True}
    assert _email_streams(org_with_members.member) == set()


def test_query_count_does_not_grow_with_organizations(auth_client, org_with_members, django_assert_max_num_queries):
    client = auth_client(org_with_members.member)
    client.get(URL)  # the token's last_used_at is written on first use
    few, _ = queries_for(django_assert_max_num_queries, 4, lambda: client.get(URL))
    for _ in range(4):
        Membership.objects.create(organization=OrganizationFactory(), user=org_with_members.member)

    many, response = queries_for(django_assert_max_num_queries, 4, lambda: client.get(URL))

    assert many == few
    assert len(response.json()["preferences"]) == 2 * (1 + 5)


def test_enable_for_one_organization_creates_the_member_s_email_stream(auth_client, org_with_members):
    member, org = org_with_members.member, org_with_members.org

    response = auth_client(member).put(URL, {"preferences": [
        {"organization_id": org.id, "category": "tracker_event", "enabled": True}]}, format="json")

    assert response.status_code == 200, response.content
    prefs = _by_key(response.json())
    assert prefs[(org.id, "tracker_event")]["enabled"] is True
    assert prefs[(org.id, "tracker_event")]["source"] == "organization"
    assert prefs[(None, "tracker_event")]["enabled"] is False
    stream = DeliveryStream.objects.get(organization=org, channel="email", destination=str(member.id))
    assert stream.delivered_seq == org.last_event_seq  # starts now: no replay of the history
    assert _email_streams(org_with_members.owner) == set()


def test_global_setting_and_organization_override(auth_client, org_with_members, other_org):
    member = org_with_members.member
    Membership.objects.create(organization=other_org.org, user=member)
    client = auth_client(member)

    client.put(URL, {"preferences": [{"category": "tracker_event", "enabled": True}]}, format="json")
    assert _email_streams(member) == {org_with_members.org.id, other_org.org.id}

    response = client.put(URL, {"preferences": [
        {"organization_id": other_org.org.id, "channel": "email", "category": "tracker_event", "enabled": False}]},
        format="json")

    assert response.status_code == 200
    prefs = _by_key(response.json())
    assert prefs[(other_org.org.id, "tracker_event")]["enabled"] is False
    assert prefs[(org_with_members.org.id, "tracker_event")] | {"organization_id": 0} == {
        "organization_id": 0, "channel": "email", "category": "tracker_event", "enabled": True, "source": "global",
        "locked": False}
    assert _email_streams(member) == {org_with_members.org.id}


def test_another_organization_is_404_and_nothing_is_applied(auth_client, org_with_members, other_org):
    member = org_with_members.member

    response = auth_client(member).put(URL, {"preferences": [
        {"organization_id": org_with_members.org.id, "category": "tracker_event", "enabled": True},
        {"organization_id": other_org.org.id, "category": "tracker_event", "enabled": True}]}, format="json")

    assert_error(response, 404, "organization_not_found")
    assert not NotificationPreference.objects.filter(user=member).exists()
    assert _email_streams(member) == set()


def test_profile_confirmations_cannot_be_turned_off(auth_client, org_with_members):
    response = auth_client(org_with_members.member).put(URL, {"preferences": [
        {"category": "profile_updated", "enabled": False}]}, format="json")

    body = assert_error(response, 400, "preference_locked")
    assert body["extra"] == {"channel": "email", "category": "profile_updated"}


@pytest.mark.parametrize("payload", [
    {"preferences": [{"category": "tracker_event", "enabled": True, "colour": "red"}]},
    {"preferences": [{"category": "tracker_event", "channel": "slack", "enabled": True}]},
    {"preferences": [{"category": "nope", "enabled": True}]},
    {"preferences": [{"category": "tracker_event"}]},
    {"preferences": []},
    {"prefs": []},
    [],
])
def test_bad_input_is_400_in_the_error_format(auth_client, org_with_members, payload):
    response = auth_client(org_with_members.member).put(URL, payload, format="json")

    assert_error(response, 400, "validation_error")
    assert not NotificationPreference.objects.exists()


def test_needs_a_user(api_client, api_key_client, org_with_members):
    assert_error(api_client.get(URL), 401, "not_authenticated")
    key = ApiKeyFactory(organization=org_with_members.org)
    assert_error(api_key_client(key.plaintext).get(URL), 403, "user_required")
