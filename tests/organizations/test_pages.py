"""Server-rendered account and admin pages: profile (with locale) and password, accepting an
invitation, and for owners and admins the members and roles, invitations, Slack and API keys.
Each writes through the API's services with the API's validation (same codes), members get 403 and
other organizations 404, and the lists' query counts do not grow with their rows."""
import pytest
from django.test import Client

from organizations.models import ApiKey, Invitation, Membership, SecurityEvent, SlackIntegration, User, UserToken
from organizations.services import api_key_create, invitation_create, slack_integration_set, user_token_create
from tests.conftest import assert_error, queries_for
from tests.organizations.factories import DEFAULT_PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser_for():
    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client
    return make


# --- profile and password --------------------------------------------------------------------------

def test_profile_page_saves_name_email_time_zone_and_locale(browser_for, org_with_members):
    member = org_with_members.member
    client = browser_for(member)
    html = client.get("/me/profile/").content.decode()
    assert '<label for="profile-locale">' in html and '<option value="de">' in html

    response = client.post("/me/profile/", {"first_name": "Carol", "last_name": "Jones", "email": "carol@example.org",
                                            "time_zone": "Europe/Berlin", "locale": "de"})

    assert response.status_code == 302
    member.refresh_from_db()
    assert (member.first_name, member.email, member.time_zone, member.locale) == (
        "Carol", "carol@example.org", "Europe/Berlin", "de")
    assert "Profile saved." in client.get("/me/profile/").content.decode()


def test_profile_page_shows_the_apis_errors(browser_for, org_with_members):
    member = org_with_members.member
    client = browser_for(member)
    taken = client.post("/me/profile/", {"email": org_with_members.owner.email.upper(), "time_zone": "UTC",
                                         "locale": "en"}).content.decode()
    bad = client.post("/me/profile/", {"email": "x@example.com", "time_zone": "Mars/Olympus",
                                       "locale": "xx"}).content.decode()
    assert "[email_taken]" in taken
    assert "[validation_error]" in bad and 'id="err-time_zone"' in bad and 'id="err-locale"' in bad
    member.refresh_from_db()
    assert member.email != "x@example.com" and member.time_zone == "UTC"


def test_me_api_reads_and_sets_locale(auth_client, org_with_members):
    api = auth_client(org_with_members.member)
    assert api.get("/api/v1/me").json()["locale"] == "en"
    assert api.patch("/api/v1/me", {"locale": "fr"}, format="json").json()["locale"] == "fr"
    assert_error(api.patch("/api/v1/me", {"locale": "klingon"}, format="json"), 400, "validation_error")


def test_password_page_changes_password_keeps_this_session_and_revokes_tokens(browser_for, org_with_members):
    member = org_with_members.member
    user_token_create(user=member)
    client = browser_for(member)

    wrong = client.post("/me/password/", {"current_password": "nope", "new_password": "n3w-Passw0rd!x",
                                          "new_password_again": "n3w-Passw0rd!x"}, follow=True)
    assert "[invalid_credentials]" in wrong.content.decode()
    response = client.post("/me/password/", {"current_password": DEFAULT_PASSWORD, "new_password": "n3w-Passw0rd!x",
                                             "new_password_again": "n3w-Passw0rd!x"}, follow=True)

    assert "Password changed." in response.content.decode()
    member.refresh_from_db()
    assert member.check_password("n3w-Passw0rd!x")
    assert not UserToken.objects.filter(user=member, revoked_at__isnull=True).exists()
    assert client.get("/me/profile/").status_code == 200  # still signed in
    mismatch = client.post("/me/password/", {"current_password": "n3w-Passw0rd!x", "new_password": "a-Long-pass-1",
                                             "new_password_again": "other"}, follow=True).content.decode()
    assert "The two new passwords differ." in mismatch


# --- members and roles -----------------------------------------------------------------------------

MEMBERS = "/orgs/{}/admin/members/"


def _membership(org, user) -> Membership:
    return Membership.objects.get(organization=org, user=user)


def test_members_page_lists_changes_roles_and_removes(browser_for, org_with_members):
    org = org_with_members.org
    client = browser_for(org_with_members.admin)
    html = client.get(MEMBERS.format(org.id)).content.decode()
    assert org_with_members.member.email in html and 'aria-current="page">Members' in html
    target = _membership(org, org_with_members.member)

    response = client.post(f"{MEMBERS.format(org.id)}{target.id}/role", {"role": "admin"}, follow=True)

    assert f"{org_with_members.member.username} is now admin." in response.content.decode()
    target.refresh_from_db()
    assert target.role == "admin"
    assert SecurityEvent.objects.filter(kind="role_changed", organization=org).count() == 1

    client.post(f"{MEMBERS.format(org.id)}{target.id}/remove")
    assert not Membership.objects.filter(pk=target.pk).exists()
    assert SecurityEvent.objects.filter(kind="membership_removed", organization=org).count() == 1


def test_owner_cannot_be_demoted_or_removed_and_owner_is_not_a_role(browser_for, org_with_members):
    org = org_with_members.org
    client = browser_for(org_with_members.admin)
    owner = _membership(org, org_with_members.owner)
    member = _membership(org, org_with_members.member)
    demote = client.post(f"{MEMBERS.format(org.id)}{owner.id}/role", {"role": "member"}, follow=True)
    remove = client.post(f"{MEMBERS.format(org.id)}{owner.id}/remove", follow=True)
    promote = client.post(f"{MEMBERS.format(org.id)}{member.id}/role", {"role": "owner"}, follow=True)
    assert "[owner_protected]" in demote.content.decode() and "[owner_protected]" in remove.content.decode()
    assert "[validation_error]" in promote.content.decode()
    owner.refresh_from_db()
    member.refresh_from_db()
    assert owner.role == "owner" and member.role == "member"


def test_members_page_invites_shows_link_once_and_withdraws(browser_for, org_with_members):
    org = org_with_members.org
    client = browser_for(org_with_members.owner)
    response = client.post(MEMBERS.format(org.id), {"email": "newbie@example.com", "role": "admin"})
    html = response.content.decode()
    invitation = Invitation.objects.get(organization=org)
    assert invitation.role == "admin" and response["Cache-Control"] == "no-store"
    assert 'id="invitation-url" readonly value="http' in html and "/invitations/hin_" in html
    assert "/invitations/hin_" not in client.get(MEMBERS.format(org.id)).content.decode()
    again = client.post(MEMBERS.format(org.id), {"email": org_with_members.member.email, "role": "member"})
    assert "[membership_exists]" in again.content.decode()

    client.post(f"/orgs/{org.id}/admin/invitations/{invitation.id}/withdraw")
    invitation.refresh_from_db()
    assert invitation.status == "revoked"


def test_invitee_accepts_through_the_link(browser_for, org_with_members):
    org = org_with_members.org
    newbie = UserFactory(email="newbie@example.com")
    _, token = invitation_create(organization=org, email="newbie@example.com", role="member",
                                 invited_by=org_with_members.owner)
    stranger = browser_for(UserFactory())
    assert stranger.post(f"/invitations/{token}/").status_code == 404  # someone else's invitation
    client = browser_for(newbie)
    assert client.get(f"/invitations/{token}/").status_code == 200
    response = client.post(f"/invitations/{token}/", follow=True)
    assert "You joined Acme as member." in response.content.decode()
    assert _membership(org, newbie).role == "member"
    assert client.post(f"/invitations/{token}/").status_code == 409


def test_member_api_changes_role_and_removes(auth_client, org_with_members, other_org):
    org = org_with_members.org
    api = auth_client(org_with_members.admin)
    target = _membership(org, org_with_members.member)
    owner = _membership(org, org_with_members.owner)
    url = f"/api/v1/orgs/{org.id}/members/{target.id}"
    response = api.patch(url, {"role": "admin"}, format="json")
    assert response.status_code == 200 and response.json()["role"] == "admin"
    assert_error(api.patch(url, {"role": "owner"}, format="json"), 400, "validation_error")
    assert_error(api.patch(f"/api/v1/orgs/{org.id}/members/{owner.id}", {"role": "member"}, format="json"),
                 409, "owner_protected")
    foreign = _membership(other_org.org, other_org.member)
    assert_error(api.patch(f"/api/v1/orgs/{org.id}/members/{foreign.id}", {"role": "admin"}, format="json"),
                 404, "membership_not_found")
    assert_error(api.delete(f"/api/v1/orgs/{other_org.org.id}/members/{foreign.id}"), 404, "organization_not_found")
    plain = MembershipFactory(organization=org, role="member").user
    assert_error(auth_client(plain).delete(url), 403, "admin_required")
    assert api.delete(url).status_code == 204
    assert not Membership.objects.filter(pk=target.pk).exists()
    assert Membership.objects.filter(pk=foreign.pk).exists()


def test_admin_pages_are_403_for_members_and_404_for_other_orgs(browser_for, org_with_members, other_org):
    org, foreign = org_with_members.org, other_org.org
    pages = ["admin/members/", "admin/slack/", "admin/api-keys/", "admin/webhooks/"]
    member, admin = browser_for(org_with_members.member), browser_for(org_with_members.admin)
    for page in pages:
        assert member.get(f"/orgs/{org.id}/{page}").status_code == 403, page
        assert admin.get(f"/orgs/{foreign.id}/{page}").status_code == 404, page
        assert admin.get(f"/orgs/{org.id}/{page}").status_code == 200, page
    assert ">Admin<" not in member.get("/inbox/").content.decode()
    foreign_membership = _membership(foreign, other_org.member)
    foreign_key, _ = api_key_create(organization=foreign, name="theirs", created_by=None)
    assert admin.post(f"/orgs/{org.id}/admin/members/{foreign_membership.id}/role",
                      {"role": "admin"}).status_code == 404
    assert admin.post(f"/orgs/{org.id}/admin/members/{foreign_membership.id}/remove").status_code == 404
    assert admin.post(f"/orgs/{org.id}/admin/api-keys/{foreign_key.id}/revoke").status_code == 404
    assert member.post(f"/orgs/{org.id}/admin/members/{_membership(org, org_with_members.owner).id}/remove"
                       ).status_code == 403
    foreign_membership.refresh_from_db()
    foreign_key.refresh_from_db()
    assert foreign_membership.role == "member" and foreign_key.revoked_at is None


def test_members_page_query_count_does_not_grow(browser_for, org_with_members, django_assert_max_num_queries):
    org = org_with_members.org
    client = browser_for(org_with_members.admin)
    client.get(MEMBERS.format(org.id))
    few, _ = queries_for(django_assert_max_num_queries, 12, lambda: client.get(MEMBERS.format(org.id)))
    for n in range(6):
        MembershipFactory(organization=org)
        invitation_create(organization=org, email=f"pending{n}@example.com", role="member")
    many, _ = queries_for(django_assert_max_num_queries, 12, lambda: client.get(MEMBERS.format(org.id)))
    assert many == few


# --- Slack -----------------------------------------------------------------------------------------

def test_slack_page_connects_and_never_echoes_the_token(browser_for, org_with_members):
    org = org_with_members.org
    client = browser_for(org_with_members.admin)
    assert "Slack is not connected" in client.get(f"/orgs/{org.id}/admin/slack/").content.decode()
    secret = "xoxb-123-secret-token-value"

    bad = client.post(f"/orgs/{org.id}/admin/slack/", {"channel": "#team", "token": "not-a-token"}).content.decode()
    assert "Expected a Slack bot token" in bad and "[validation_error]" in bad and "not-a-token" not in bad
    response = client.post(f"/orgs/{org.id}/admin/slack/", {"channel": "#team", "token": secret}, follow=True)

    html = response.content.decode()
    assert SlackIntegration.objects.get(organization=org).channel == "#team"
    assert 'id="slack-channel">#team<' in html and "stored, encrypted" in html and secret not in html


def test_slack_page_shows_the_connected_channel(browser_for, org_with_members):
    slack_integration_set(organization=org_with_members.org, channel="C123", token="xoxb-1-abc")
    html = browser_for(org_with_members.owner).get(f"/orgs/{org_with_members.org.id}/admin/slack/").content.decode()
    assert 'id="slack-channel">C123<' in html and "xoxb-1-abc" not in html


# --- API keys --------------------------------------------------------------------------------------

def test_api_keys_page_creates_with_scopes_shows_key_once_and_revokes(browser_for, org_with_members):
    org = org_with_members.org
    client = browser_for(org_with_members.admin)
    html = client.get(f"/orgs/{org.id}/admin/api-keys/").content.decode()
    assert 'value="orgs:read" id="scope-1" checked' in html

    response = client.post(f"/orgs/{org.id}/admin/api-keys/", {"name": "CI", "scopes": ["orgs:read",
                                                                                         "members:write"]})
    key = ApiKey.objects.get(organization=org)
    html = response.content.decode()
    assert key.scopes == ["members:write", "orgs:read"] and response["Cache-Control"] == "no-store"
    assert 'id="new-key" readonly value="hak_' in html
    assert "hak_" not in client.get(f"/orgs/{org.id}/admin/api-keys/").content.decode().replace(
        f"{key.prefix}", "")  # only the prefix is shown afterwards
    none = client.post(f"/orgs/{org.id}/admin/api-keys/", {"name": "none"}).content.decode()
    unknown = client.post(f"/orgs/{org.id}/admin/api-keys/", {"name": "x", "scopes": ["root"]}).content.decode()
    assert "[validation_error]" in none and "[validation_error]" in unknown and ApiKey.objects.count() == 1

    client.post(f"/orgs/{org.id}/admin/api-keys/{key.id}/revoke")
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_api_keys_page_query_count_does_not_grow(browser_for, org_with_members, django_assert_max_num_queries):
    org = org_with_members.org
    client = browser_for(org_with_members.admin)
    api_key_create(organization=org, name="one", created_by=None)
    client.get(f"/orgs/{org.id}/admin/api-keys/")
    few, _ = queries_for(django_assert_max_num_queries, 12, lambda: client.get(f"/orgs/{org.id}/admin/api-keys/"))
    for n in range(6):
        api_key_create(organization=org, name=f"k{n}", created_by=org_with_members.owner)
    many, _ = queries_for(django_assert_max_num_queries, 12, lambda: client.get(f"/orgs/{org.id}/admin/api-keys/"))
    assert many == few


def test_switching_organization_on_a_page_without_one_stays_there(browser_for, org_with_members, other_org):
    user = org_with_members.member
    MembershipFactory(organization=other_org.org, user=user)
    response = browser_for(user).post("/switch-org", {"org_id": other_org.org.id, "next": "inbox"})
    assert response.status_code == 302 and response["Location"] == "/inbox/"
    assert User.objects.filter(pk=user.pk).exists()
