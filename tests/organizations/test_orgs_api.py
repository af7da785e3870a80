"""Organizations, memberships and Slack settings: /api/v1/orgs/…"""
import pytest
from django.db import connection

from notifications.models import Channel, DeliveryStream
from organizations.models import Membership, Organization, SlackIntegration
from organizations.services import slack_token
from tests.conftest import assert_error, queries_for
from tests.organizations.factories import MembershipFactory, OrganizationFactory, UserFactory
from tests.trackers.factories import TrackerEventFactory
from trackers.models import Tracker

pytestmark = pytest.mark.django_db

ORGS = "/api/v1/orgs/"
SLACK_TOKEN = "xoxb-1234567890-abcdefGHIJKL"


def org_url(org_id, suffix=""):
    return f"/api/v1/orgs/{org_id}/{suffix}"


# --- list / create --------------------------------------------------------------------------

def test_org_list_shows_only_my_orgs(auth_client, org_with_members, other_org):
    response = auth_client(org_with_members.member).get(ORGS)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 1
    [org] = body["results"]
    assert org["id"] == org_with_members.org.id
    assert set(org) == {"id", "name", "slug", "time_zone", "locale", "last_event_seq", "created_at"}


def test_org_list_unauthenticated_is_401(api_client):
    assert_error(api_client.get(ORGS), 401, "not_authenticated")


def test_org_list_query_count_does_not_grow(auth_client, user, django_assert_max_num_queries):
    client = auth_client(user)
    MembershipFactory(user=user)
    client.get(ORGS)  # first use of the token records last_used_at; measure steady state
    few, _ = queries_for(django_assert_max_num_queries, 3, lambda: client.get(ORGS))

    MembershipFactory.create_batch(12, user=user)
    many, response = queries_for(django_assert_max_num_queries, 3, lambda: client.get(ORGS))

    assert response.json()["count"] == 13
    assert many == few


def test_org_create_makes_creator_owner_and_main_tracker(auth_client, user):
    response = auth_client(user).post(ORGS, {"name": "Blue Sky Labs", "time_zone": "Asia/Tokyo"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Blue Sky Labs"
    assert body["slug"] == "blue-sky-labs"
    assert body["time_zone"] == "Asia/Tokyo"
    assert body["last_event_seq"] == 0
    org = Organization.objects.get(pk=body["id"])
    assert list(Membership.objects.filter(organization=org).values_list("user_id", "role")) == [(user.id, "owner")]
    assert list(Tracker.objects.filter(organization=org).values_list("name", "is_running")) == [
        ("Main tracker", False)]


def test_org_create_slug_collisions_get_suffix(auth_client, user):
    client = auth_client(user)
    first = client.post(ORGS, {"name": "Acme"}, format="json").json()
    second = client.post(ORGS, {"name": "Acme"}, format="json").json()

    assert first["slug"] == "acme"
    assert second["slug"] == "acme-2"


def test_org_create_explicit_duplicate_slug_is_409(auth_client, user):
    OrganizationFactory(slug="taken")

    assert_error(auth_client(user).post(ORGS, {"name": "X", "slug": "taken"}, format="json"), 409, "slug_taken")


@pytest.mark.parametrize("payload,field", [
    ({"name": "X", "time_zone": "Nowhere/Land"}, "time_zone"),
    ({"name": ""}, "name"),
    ({"name": "x" * 121}, "name"),
    ({"name": "X", "slug": "not a slug"}, "slug"),
    ({"name": "X", "owner": 1}, "owner"),
    ({}, "name"),
])
def test_org_create_bad_input_is_400(auth_client, user, payload, field):
    body = assert_error(auth_client(user).post(ORGS, payload, format="json"), 400, "validation_error")

    assert field in body["extra"]["fields"]
    assert not Organization.objects.exists()


def test_org_create_unicode_only_name_gets_a_slug(auth_client, user):
    response = auth_client(user).post(ORGS, {"name": "日本"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["slug"]


# --- detail ---------------------------------------------------------------------------------

def test_org_detail(auth_client, org_with_members):
    response = auth_client(org_with_members.member).get(org_url(org_with_members.org.id))

    assert response.status_code == 200
    assert response.json()["id"] == org_with_members.org.id
    assert response.json()["name"] == "Acme"


def test_org_detail_of_another_org_is_404(auth_client, org_with_members, other_org):
    body = assert_error(auth_client(org_with_members.owner).get(org_url(other_org.org.id)), 404,
                        "organization_not_found")
    assert body["extra"] == {}


def test_org_detail_nonexistent_is_404(auth_client, user):
    assert_error(auth_client(user).get(org_url(987654321)), 404, "organization_not_found")


def test_org_detail_shows_last_event_seq(auth_client, org_with_members):
    tracker = Tracker.objects.get(organization=org_with_members.org)
    TrackerEventFactory.create_batch(3, tracker=tracker)

    assert auth_client(org_with_members.member).get(org_url(org_with_members.org.id)).json()["last_event_seq"] == 3


# --- members --------------------------------------------------------------------------------

def test_members_list(auth_client, org_with_members):
    response = auth_client(org_with_members.member).get(org_url(org_with_members.org.id, "members/"))

    assert response.status_code == 200
    results = response.json()["results"]
    assert [(m["user_id"], m["role"]) for m in results] == [
        (org_with_members.owner.id, "owner"), (org_with_members.admin.id, "admin"),
        (org_with_members.member.id, "member")]
    assert set(results[0]) == {"id", "user_id", "username", "email", "role", "postal_code", "created_at"}
    # A plain member does not see the others' email addresses (issue 11 #9).
    assert {m["email"] for m in results} == {None}


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_members_list_shows_emails_to_admins(auth_client, org_with_members, role):
    response = auth_client(getattr(org_with_members, role)).get(org_url(org_with_members.org.id, "members/"))
    assert [m["email"] for m in response.json()["results"]] == [
        org_with_members.owner.email, org_with_members.admin.email, org_with_members.member.email]


def test_members_list_of_another_org_is_404(auth_client, org_with_members, other_org):
    assert_error(auth_client(org_with_members.owner).get(org_url(other_org.org.id, "members/")), 404,
                 "organization_not_found")


def test_members_list_query_count_does_not_grow(auth_client, org_with_members, django_assert_max_num_queries):
    client = auth_client(org_with_members.member)
    url = org_url(org_with_members.org.id, "members/")
    client.get(url)
    few, _ = queries_for(django_assert_max_num_queries, 5, lambda: client.get(url))

    MembershipFactory.create_batch(15, organization=org_with_members.org)
    many, response = queries_for(django_assert_max_num_queries, 5, lambda: client.get(url))

    assert response.json()["count"] == 18
    assert many == few


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_members_add_by_admin_is_an_invitation(auth_client, org_with_members, role):
    newcomer = UserFactory(email="newcomer@example.com")
    actor = getattr(org_with_members, role)

    response = auth_client(actor).post(org_url(org_with_members.org.id, "members/"),
                                       {"email": "NewComer@example.com", "role": "admin"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"invitation", "token", "accept_url"}
    assert (body["invitation"]["email"], body["invitation"]["role"], body["invitation"]["status"]) == (
        "NewComer@example.com", "admin", "pending")
    assert body["token"].startswith("hin_") and body["accept_url"].endswith(f"/invitations/{body['token']}/accept")
    # Nobody joins without consent: no membership until the invitee accepts.
    assert not Membership.objects.filter(organization=org_with_members.org, user=newcomer).exists()


def test_members_add_defaults_to_member_role(auth_client, org_with_members):
    UserFactory(email="newcomer@example.com")

    response = auth_client(org_with_members.owner).post(org_url(org_with_members.org.id, "members/"),
                                                        {"email": "newcomer@example.com"}, format="json")
    assert response.status_code == 201
    assert response.json()["invitation"]["role"] == "member"


def test_members_add_by_plain_member_is_403(auth_client, org_with_members):
    UserFactory(email="newcomer@example.com")

    response = auth_client(org_with_members.member).post(org_url(org_with_members.org.id, "members/"),
                                                         {"email": "newcomer@example.com"}, format="json")
    assert_error(response, 403, "admin_required")
    assert Membership.objects.filter(organization=org_with_members.org).count() == 3


def test_members_add_to_another_org_is_404(auth_client, org_with_members, other_org):
    UserFactory(email="newcomer@example.com")

    response = auth_client(org_with_members.owner).post(org_url(other_org.org.id, "members/"),
                                                        {"email": "newcomer@example.com"}, format="json")
    assert_error(response, 404, "organization_not_found")


def test_members_add_duplicate_is_409(auth_client, org_with_members):
    response = auth_client(org_with_members.owner).post(org_url(org_with_members.org.id, "members/"),
                                                        {"email": org_with_members.member.email}, format="json")
    assert_error(response, 409, "membership_exists")


@pytest.mark.parametrize("email", ["ghost@example.com", "gone@example.com", "newcomer@example.com"])
def test_members_add_answers_the_same_whether_or_not_the_account_exists(auth_client, org_with_members, email):
    """No account enumeration (issue 11 #9): unknown, inactive and existing addresses get one answer."""
    UserFactory(email="gone@example.com", is_active=False)
    UserFactory(email="newcomer@example.com")
    response = auth_client(org_with_members.owner).post(org_url(org_with_members.org.id, "members/"),
                                                        {"email": email}, format="json")
    assert response.status_code == 201
    assert set(response.json()["invitation"]) == {"id", "email", "role", "status", "created_at", "expires_at"}


def test_members_add_as_owner_is_400(auth_client, org_with_members):
    UserFactory(email="newcomer@example.com")
    response = auth_client(org_with_members.owner).post(org_url(org_with_members.org.id, "members/"),
                                                        {"email": "newcomer@example.com", "role": "owner"},
                                                        format="json")
    assert_error(response, 400, "invalid_role")


@pytest.mark.parametrize("payload,field", [
    ({"email": "x@example.com", "role": "god"}, "role"),
    ({"email": "not-an-email"}, "email"),
    ({"email": "x@example.com", "user_id": 1}, "user_id"),
])
def test_members_add_bad_input_is_400(auth_client, org_with_members, payload, field):
    body = assert_error(auth_client(org_with_members.owner).post(org_url(org_with_members.org.id, "members/"),
                                                                 payload, format="json"), 400, "validation_error")
    assert field in body["extra"]["fields"]


# --- Slack settings -------------------------------------------------------------------------

def slack_url(org_id):
    return f"/api/v1/orgs/{org_id}/slack"


def test_slack_put_stores_encrypted_token_and_never_returns_it(auth_client, org_with_members):
    org = org_with_members.org
    TrackerEventFactory.create_batch(2, tracker=Tracker.objects.get(organization=org))

    response = auth_client(org_with_members.admin).put(slack_url(org.id), {"channel": "#ops", "token": SLACK_TOKEN},
                                                       format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"channel", "enabled", "token_set", "updated_at"}
    assert body["channel"] == "#ops" and body["enabled"] is True and body["token_set"] is True
    assert SLACK_TOKEN not in response.content.decode()
    assert SLACK_TOKEN.split("-", 1)[1] not in response.content.decode()

    with connection.cursor() as cursor:
        cursor.execute("SELECT token_encrypted FROM organizations_slackintegration WHERE organization_id = %s",
                       [org.id])
        [(stored,)] = cursor.fetchall()
    assert stored and SLACK_TOKEN not in stored
    assert SLACK_TOKEN.split("-", 1)[1] not in stored
    assert slack_token(integration=SlackIntegration.objects.get(organization=org)) == SLACK_TOKEN
    # Slack delivery starts with the next event, not by replaying history.
    stream = DeliveryStream.objects.get(organization=org, channel=Channel.SLACK)
    assert stream.delivered_seq == 2


def test_slack_put_again_replaces_settings(auth_client, org_with_members):
    client = auth_client(org_with_members.owner)
    url = slack_url(org_with_members.org.id)
    client.put(url, {"channel": "#ops", "token": SLACK_TOKEN}, format="json")

    response = client.put(url, {"channel": "alerts", "token": "xoxb-new-token"}, format="json")

    assert response.status_code == 200
    integration = SlackIntegration.objects.get(organization=org_with_members.org)
    assert integration.channel == "alerts"
    assert slack_token(integration=integration) == "xoxb-new-token"
    assert DeliveryStream.objects.filter(organization=org_with_members.org, channel=Channel.SLACK).count() == 1


@pytest.mark.parametrize("payload,field", [
    ({"channel": "#ops", "token": "not-a-slack-token"}, "token"),
    ({"channel": "#ops", "token": "xoxb-"}, "token"),
    ({"channel": "#ops", "token": "xoxb-abc def"}, "token"),
    ({"channel": "has space", "token": SLACK_TOKEN}, "channel"),
    ({"channel": "#ops"}, "token"),
    ({"channel": "#ops", "token": SLACK_TOKEN, "enabled": False}, "enabled"),
])
def test_slack_put_bad_input_is_400(auth_client, org_with_members, payload, field):
    body = assert_error(auth_client(org_with_members.owner).put(slack_url(org_with_members.org.id), payload,
                                                                format="json"), 400, "validation_error")

    assert field in body["extra"]["fields"]
    # Nothing in the error echoes the submitted token.
    if len(payload.get("token", "")) > 8:
        assert payload["token"] not in str(body)
    assert not SlackIntegration.objects.exists()


def test_slack_put_by_member_is_403(auth_client, org_with_members):
    response = auth_client(org_with_members.member).put(slack_url(org_with_members.org.id),
                                                        {"channel": "#ops", "token": SLACK_TOKEN}, format="json")
    assert_error(response, 403, "admin_required")
    assert not SlackIntegration.objects.exists()


def test_slack_put_for_another_org_is_404(auth_client, org_with_members, other_org):
    response = auth_client(org_with_members.owner).put(slack_url(other_org.org.id),
                                                       {"channel": "#ops", "token": SLACK_TOKEN}, format="json")
    assert_error(response, 404, "organization_not_found")
    assert not SlackIntegration.objects.exists()


def test_slack_get_is_405(auth_client, org_with_members):
    assert_error(auth_client(org_with_members.owner).get(slack_url(org_with_members.org.id)), 405,
                 "method_not_allowed")

