"""Organization API keys: create (shown once), list, revoke, and `Authorization: Bearer <key>`."""
import pytest

from organizations.models import ApiKey
from organizations.secrets import hash_secret
from tests.conftest import assert_error
from tests.organizations.factories import ApiKeyFactory, MembershipFactory
from notifications.models import LogEntry
from trackers.models import Tracker

pytestmark = pytest.mark.django_db

ORGS = "/api/v1/orgs/"


def keys_url(org_id):
    return f"/api/v1/orgs/{org_id}/api-keys/"


def test_create_shows_key_once_and_stores_only_hash(auth_client, org_with_members):
    client = auth_client(org_with_members.admin)

    response = client.post(keys_url(org_with_members.org.id), {"name": "CI"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    key = body["key"]
    assert key.startswith("hak_")
    assert set(body["api_key"]) == {"id", "name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"}
    assert body["api_key"]["scopes"] == sorted(["orgs:read", "trackers:write", "events:read", "notifications:send"])
    stored = ApiKey.objects.get(pk=body["api_key"]["id"])
    assert stored.created_by == org_with_members.admin
    assert stored.key_hash == hash_secret(key)
    assert key.split("_", 2)[2] not in (stored.prefix + stored.key_hash)

    listing = client.get(keys_url(org_with_members.org.id))
    assert listing.status_code == 200
    assert [k["id"] for k in listing.json()["results"]] == [stored.id]
    assert all("key" not in k and "key_hash" not in k for k in listing.json()["results"])
    assert key not in listing.content.decode()
    assert key.split("_", 2)[2] not in listing.content.decode()


def test_list_is_newest_first_and_tenant_scoped(auth_client, org_with_members, other_org):
    first = ApiKeyFactory(organization=org_with_members.org)
    second = ApiKeyFactory(organization=org_with_members.org)
    ApiKeyFactory(organization=other_org.org)

    response = auth_client(org_with_members.owner).get(keys_url(org_with_members.org.id))

    assert [k["id"] for k in response.json()["results"]] == [second.id, first.id]
    assert response.json()["count"] == 2


@pytest.mark.parametrize("method", ["get", "post"])
def test_member_cannot_manage_keys(auth_client, org_with_members, method):
    client = auth_client(org_with_members.member)
    response = getattr(client, method)(keys_url(org_with_members.org.id), {"name": "x"}, format="json")

    assert_error(response, 403, "admin_required")
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("method", ["get", "post"])
def test_keys_of_another_org_are_404(auth_client, org_with_members, other_org, method):
    client = auth_client(org_with_members.owner)
    response = getattr(client, method)(keys_url(other_org.org.id), {"name": "x"}, format="json")

    assert_error(response, 404, "organization_not_found")


def test_create_bad_input_is_400(auth_client, org_with_members):
    client = auth_client(org_with_members.owner)
    body = assert_error(client.post(keys_url(org_with_members.org.id), {"name": "x" * 101}, format="json"),
                        400, "validation_error")
    assert "name" in body["extra"]["fields"]
    body = assert_error(client.post(keys_url(org_with_members.org.id), {"name": "x", "owner": 1}, format="json"),
                        400, "validation_error")
    assert body["extra"]["fields"] == {"owner": ["Unknown field."]}
    body = assert_error(client.post(keys_url(org_with_members.org.id), {"name": "x", "scopes": []}, format="json"),
                        400, "validation_error")
    assert set(body["extra"]["fields"]) == {"scopes"}  # a key that can do nothing is a mistake


def test_bearer_key_sees_only_its_org(api_key_client, org_with_members, other_org):
    # The key's creator belongs to two orgs; the key still sees only its own.
    MembershipFactory(organization=other_org.org, user=org_with_members.owner)
    key = ApiKeyFactory(organization=org_with_members.org, created_by=org_with_members.owner)
    client = api_key_client(key.plaintext)

    response = client.get(ORGS)

    assert response.status_code == 200, response.content
    assert [o["id"] for o in response.json()["results"]] == [org_with_members.org.id]
    assert client.get(f"{ORGS}{org_with_members.org.id}/").status_code == 200
    assert_error(client.get(f"{ORGS}{other_org.org.id}/"), 404, "organization_not_found")
    assert_error(client.get(f"{ORGS}{other_org.org.id}/members/"), 404, "organization_not_found")
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_bearer_key_can_start_a_tracker_of_its_org_only(api_key_client, org_with_members, other_org):
    key = ApiKeyFactory(organization=org_with_members.org)
    client = api_key_client(key.plaintext)
    own = Tracker.objects.get(organization=org_with_members.org)
    foreign = Tracker.objects.get(organization=other_org.org)

    response = client.post(f"/api/v1/trackers/{own.id}/start")

    assert response.status_code == 200, response.content
    event = LogEntry.objects.get()
    assert event.actor is None and event.actor_name == f"api-key:{key.prefix}"
    assert response.json()["event"]["actor"] == f"api-key:{key.prefix}"
    assert_error(client.post(f"/api/v1/trackers/{foreign.id}/start"), 404, "tracker_not_found")


@pytest.mark.parametrize("key", [
    "garbage",
    "hak_deadbeef_not-the-secret",
    "hut_deadbeef_user-token-shaped",
    "hak_short_x",
    "hak_abcd\x00efg_secret",  # NUL in the prefix must not reach Postgres (500)
])
def test_bad_key_is_401_invalid_api_key(api_key_client, key):
    response = api_key_client(key).get(ORGS)

    body = assert_error(response, 401, "invalid_api_key")
    assert body["extra"] == {}


def test_right_prefix_wrong_secret_is_401(api_key_client, org_with_members):
    key = ApiKeyFactory(organization=org_with_members.org)
    forged = key.plaintext[:-6] + "AAAAAA"

    assert_error(api_key_client(forged).get(ORGS), 401, "invalid_api_key")


def test_revoked_key_is_401_revoked_api_key(auth_client, api_key_client, org_with_members):
    key = ApiKeyFactory(organization=org_with_members.org)
    client = api_key_client(key.plaintext)
    assert client.get(ORGS).status_code == 200

    revoke = auth_client(org_with_members.owner).post(f"{keys_url(org_with_members.org.id)}{key.id}/revoke")
    assert revoke.status_code == 200, revoke.content
    assert revoke.json()["revoked_at"] is not None

    assert_error(client.get(ORGS), 401, "revoked_api_key")


def test_revoke_is_idempotent(auth_client, org_with_members):
    key = ApiKeyFactory(organization=org_with_members.org, revoked=True)
    revoked_at = ApiKey.objects.get(pk=key.pk).revoked_at
    url = f"{keys_url(org_with_members.org.id)}{key.id}/revoke"

    response = auth_client(org_with_members.owner).post(url)

    assert response.status_code == 200
    assert ApiKey.objects.get(pk=key.pk).revoked_at == revoked_at


def test_revoke_key_of_another_org_is_404(auth_client, org_with_members, other_org):
    foreign = ApiKeyFactory(organization=other_org.org)
    client = auth_client(org_with_members.owner)

    # Through my org's URL: the key is not there.
    assert_error(client.post(f"{keys_url(org_with_members.org.id)}{foreign.id}/revoke"), 404, "api_key_not_found")
    # Through the other org's URL: the org is not mine.
    assert_error(client.post(f"{keys_url(other_org.org.id)}{foreign.id}/revoke"), 404, "organization_not_found")
    assert ApiKey.objects.get(pk=foreign.pk).revoked_at is None


def test_revoke_by_member_is_403(auth_client, org_with_members):
    key = ApiKeyFactory(organization=org_with_members.org)
    assert_error(auth_client(org_with_members.member).post(f"{keys_url(org_with_members.org.id)}{key.id}/revoke"),
                 403, "admin_required")


@pytest.mark.parametrize("method,path", [
    ("get", "/api/v1/me"),
    ("patch", "/api/v1/me"),
    ("post", ORGS),
    ("get", "/api/v1/notifications/"),
    ("get", "/api/v1/notifications/unread-count"),
    ("post", "/api/v1/notifications/read-all"),
])
def test_api_key_on_user_endpoints_is_403_user_required(api_key_client, org_with_members, method, path):
    key = ApiKeyFactory(organization=org_with_members.org)

    response = getattr(api_key_client(key.plaintext), method)(path, {"name": "x"}, format="json")

    assert_error(response, 403, "user_required")


def test_api_key_cannot_manage_api_keys(api_key_client, org_with_members):
    """A key made with the default scopes (no api_keys:write)."""
    key = ApiKeyFactory(organization=org_with_members.org)
    client = api_key_client(key.plaintext)

    assert_error(client.get(keys_url(org_with_members.org.id)), 403, "scope_required")
    assert_error(client.post(keys_url(org_with_members.org.id), {"name": "child"}, format="json"), 403,
                 "scope_required")
    assert_error(client.post(f"{keys_url(org_with_members.org.id)}{key.id}/revoke"), 403, "scope_required")
    assert ApiKey.objects.count() == 1


@pytest.mark.filterwarnings("error::django.core.paginator.UnorderedObjectListWarning")
def test_bearer_org_list_is_deterministically_ordered(api_key_client, org_with_members):
    """Pagination over an unordered queryset can repeat or skip rows between pages."""
    key = ApiKeyFactory(organization=org_with_members.org)

    response = api_key_client(key.plaintext).get(ORGS)

    assert response.status_code == 200
