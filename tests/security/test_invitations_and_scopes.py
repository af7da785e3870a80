"""No privilege escalation through API keys (issue 11 #1): explicit scopes, a key never mints a
stronger key, and a person joins an organization only by accepting an invitation (expiring,
single use, addressed to their email). Pending invitations are listed; everything is audited."""
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from organizations.models import ApiKey, Invitation, Membership, SecurityEvent, User
from tests.conftest import assert_error
from tests.organizations.factories import ApiKeyFactory, UserFactory

pytestmark = pytest.mark.django_db


def members_url(org_id):
    return f"/api/v1/orgs/{org_id}/members/"


def accept_url(token):
    return f"/api/v1/invitations/{token}/accept"


def invite(client, org_id, email, role="member"):
    return client.post(members_url(org_id), {"email": email, "role": role}, format="json")


# --- the escalation of the report ------------------------------------------------------------

def test_default_api_key_cannot_add_members_or_mint_keys(api_key_client, org_with_members):
    outsider = UserFactory(email="outsider@example.com")
    key = ApiKeyFactory(organization=org_with_members.org)
    client = api_key_client(key.plaintext)

    body = assert_error(invite(client, org_with_members.org.id, outsider.email, "admin"), 403, "scope_required")
    assert body["extra"] == {"scope": "members:write"}
    assert_error(client.post(f"/api/v1/orgs/{org_with_members.org.id}/api-keys/", {"name": "x"}, format="json"),
                 403, "scope_required")
    assert not Membership.objects.filter(user=outsider).exists()
    assert not Invitation.objects.exists()
    assert ApiKey.objects.count() == 1


def test_key_with_members_write_invites_members_but_never_admins(api_key_client, org_with_members):
    key = ApiKeyFactory(organization=org_with_members.org, scopes=["orgs:read", "members:write"])
    client = api_key_client(key.plaintext)

    assert_error(invite(client, org_with_members.org.id, "x@example.com", "admin"), 403, "invalid_role")
    response = invite(client, org_with_members.org.id, "x@example.com")
    assert response.status_code == 201
    invitation = Invitation.objects.get()
    assert (invitation.role, invitation.invited_by_api_key, invitation.invited_by) == ("member", key, None)


def test_key_cannot_grant_scopes_it_lacks(api_key_client, org_with_members):
    key = ApiKeyFactory(organization=org_with_members.org, scopes=["orgs:read", "api_keys:write"])
    client = api_key_client(key.plaintext)
    url = f"/api/v1/orgs/{org_with_members.org.id}/api-keys/"

    body = assert_error(client.post(url, {"name": "child", "scopes": ["members:write"]}, format="json"), 403,
                        "scope_required")
    assert body["extra"] == {"scopes": ["members:write"]}
    response = client.post(url, {"name": "child", "scopes": ["orgs:read"]}, format="json")
    assert response.status_code == 201 and response.json()["api_key"]["scopes"] == ["orgs:read"]


def test_admin_chooses_scopes_and_unknown_scope_is_400(auth_client, org_with_members):
    client = auth_client(org_with_members.admin)
    url = f"/api/v1/orgs/{org_with_members.org.id}/api-keys/"
    assert_error(client.post(url, {"name": "k", "scopes": ["root"]}, format="json"), 400, "validation_error")
    response = client.post(url, {"name": "k", "scopes": ["members:write", "orgs:read"]}, format="json")
    assert response.json()["api_key"]["scopes"] == ["members:write", "orgs:read"]


def test_key_without_trackers_write_cannot_start_a_tracker(api_key_client, org_with_members):
    from trackers.models import Tracker

    tracker = Tracker.objects.get(organization=org_with_members.org)
    reader = api_key_client(ApiKeyFactory(organization=org_with_members.org, scopes=["orgs:read"]).plaintext)
    assert reader.get(f"/api/v1/orgs/{org_with_members.org.id}/trackers/").status_code == 200
    assert_error(reader.post(f"/api/v1/trackers/{tracker.id}/start"), 403, "scope_required")
    assert_error(reader.get(f"/api/v1/orgs/{org_with_members.org.id}/events/"), 403, "scope_required")
    writer = api_key_client(ApiKeyFactory(organization=org_with_members.org).plaintext)
    assert writer.post(f"/api/v1/trackers/{tracker.id}/start").status_code == 200


def test_key_without_orgs_read_cannot_read(api_key_client, org_with_members):
    client = api_key_client(ApiKeyFactory(organization=org_with_members.org, scopes=["trackers:write"]).plaintext)
    assert_error(client.get(members_url(org_with_members.org.id)), 403, "scope_required")


# --- invitations ---------------------------------------------------------------------------

def test_invitee_accepts_and_joins_once(auth_client, org_with_members):
    newcomer = UserFactory(email="newcomer@example.com")
    token = invite(auth_client(org_with_members.admin), org_with_members.org.id, "NewComer@example.com",
                   "admin").json()["token"]

    response = auth_client(newcomer).post(accept_url(token))

    assert response.status_code == 201, response.content
    assert response.json()["role"] == "admin"
    assert Membership.objects.get(organization=org_with_members.org, user=newcomer).role == "admin"
    assert_error(auth_client(newcomer).post(accept_url(token)), 409, "invitation_used")
    kinds = set(SecurityEvent.objects.filter(organization=org_with_members.org).values_list("kind", flat=True))
    assert {"invitation_created", "invitation_accepted", "membership_created"} <= kinds


def test_only_the_invited_address_can_accept(auth_client, org_with_members):
    UserFactory(email="newcomer@example.com")
    thief = UserFactory(email="thief@example.com")
    token = invite(auth_client(org_with_members.admin), org_with_members.org.id, "newcomer@example.com").json()["token"]

    assert_error(auth_client(thief).post(accept_url(token)), 404, "invitation_not_found")
    assert_error(auth_client(thief).post(accept_url("hin_0123456789abcdef_nope")), 404, "invitation_not_found")
    assert not Membership.objects.filter(user=thief).exists()


def test_expired_invitation_is_refused(auth_client, org_with_members):
    newcomer = UserFactory(email="newcomer@example.com")
    token = invite(auth_client(org_with_members.admin), org_with_members.org.id, newcomer.email).json()["token"]
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    assert_error(auth_client(newcomer).post(accept_url(token)), 410, "invitation_expired")
    assert not Membership.objects.filter(user=newcomer).exists()


def test_api_key_cannot_accept(api_key_client, org_with_members, other_org):
    key = ApiKeyFactory(organization=other_org.org)
    assert_error(api_key_client(key.plaintext).post(accept_url("hin_0123456789abcdef_x")), 403, "user_required")


def test_pending_invitations_are_listed_and_can_be_withdrawn(auth_client, org_with_members, other_org,
                                                           django_assert_max_num_queries):
    admin = auth_client(org_with_members.admin)
    for n in range(3):
        invite(admin, org_with_members.org.id, f"p{n}@example.com")
    invite(auth_client(other_org.admin), other_org.org.id, "elsewhere@example.com")
    url = f"/api/v1/orgs/{org_with_members.org.id}/invitations/"

    with django_assert_max_num_queries(6):
        listing = admin.get(url)

    body = listing.json()
    assert body["count"] == 3 and [i["email"] for i in body["results"]] == [
        "p2@example.com", "p1@example.com", "p0@example.com"]
    first = body["results"][0]["id"]
    assert admin.delete(f"{url}{first}".replace("invitations/", "invitations/")).status_code in (204,)
    assert admin.get(url).json()["count"] == 2
    assert_error(auth_client(org_with_members.member).get(url), 403, "admin_required")
    assert_error(admin.get(f"/api/v1/orgs/{other_org.org.id}/invitations/"), 404, "organization_not_found")
    other_invitation = Invitation.objects.get(email="elsewhere@example.com")
    assert_error(admin.delete(f"{url}{other_invitation.id}"), 404, "invitation_not_found")


def test_inviting_again_renews_the_pending_invitation(auth_client, org_with_members):
    admin = auth_client(org_with_members.admin)
    old = invite(admin, org_with_members.org.id, "again@example.com").json()["token"]
    new = invite(admin, org_with_members.org.id, "AGAIN@example.com").json()["token"]
    assert Invitation.objects.filter(status="pending").count() == 1
    newcomer = UserFactory(email="again@example.com")
    assert_error(auth_client(newcomer).post(accept_url(old)), 404, "invitation_not_found")
    assert auth_client(newcomer).post(accept_url(new)).status_code == 201


def test_admin_shows_pending_invitations_and_the_audit_log(client, auth_client, org_with_members):
    invite(auth_client(org_with_members.admin), org_with_members.org.id, "pending@example.com")
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-long-enough-123"))

    invitations = client.get(reverse("admin:organizations_invitation_changelist"), {"status__exact": "pending"})
    audit = client.get(reverse("admin:organizations_securityevent_changelist"))

    assert invitations.status_code == 200 and b"pending@example.com" in invitations.content
    assert audit.status_code == 200 and b"invitation_created" in audit.content.replace(b"Invitation created",
                                                                                       b"invitation_created")
    assert Invitation.objects.get().key_hash not in invitations.content.decode()
