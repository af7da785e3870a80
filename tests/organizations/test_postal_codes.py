"""POST /orgs/{id}/members/postal-codes: one set-based UPDATE of members' postal codes by email
(case-insensitive, this organization's members only), all or nothing on invalid rows."""
import pytest

from organizations.models import Membership
from organizations.services import api_key_create, postal_code_normalize
from tests.conftest import assert_error
from tests.organizations.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def url(org):
    return f"/api/v1/orgs/{org.id}/members/postal-codes"


def post(client, org, updates):
    return client.post(url(org), {"updates": updates}, format="json")


def codes(org) -> dict[str, str]:
    return dict(Membership.objects.filter(organization=org).values_list("user__email", "postal_code"))


def test_updates_by_email_case_insensitively_and_reports_unmatched(auth_client, org_with_members, other_org):
    org = org_with_members.org
    outsider = other_org.member  # a member of another organization: never matched here
    response = post(auth_client(org_with_members.admin), org, [
        {"email": org_with_members.member.email.upper(), "postal_code": " sw1a  1aa "},
        {"email": org_with_members.owner.email, "postal_code": "10115"},
        {"email": "Nobody@Example.com", "postal_code": "75001"},
        {"email": outsider.email, "postal_code": "H0H 0H0"},
    ])
    assert response.status_code == 200, response.content
    assert response.json() == {"matched": 2, "unmatched": ["Nobody@Example.com", outsider.email]}
    assert codes(org)[org_with_members.member.email] == "SW1A 1AA"  # normalized
    assert codes(org)[org_with_members.owner.email] == "10115"
    assert codes(org)[org_with_members.admin.email] == ""
    assert set(codes(other_org.org).values()) == {""}


def test_postal_code_rule():
    assert postal_code_normalize("ab-12") == "AB-12"
    assert postal_code_normalize("  k1a   0b1 ") == "K1A 0B1"
    for bad in ("", "12", "12345678901", "-1234", "1234-", "12_34", "12345\u00e9", "1 2"[:2]):
        assert postal_code_normalize(bad) is None, bad


def test_all_or_nothing_with_bad_rows_listed_by_index(auth_client, org_with_members):
    org = org_with_members.org
    response = post(auth_client(org_with_members.owner), org, [
        {"email": org_with_members.member.email, "postal_code": "12345"},
        {"email": "not-an-email", "postal_code": "12345"},
        {"email": org_with_members.admin.email, "postal_code": "!!"},
        {"email": org_with_members.member.email.upper(), "postal_code": "54321"},
        {"email": "x@example.com"},
        "just a string",
    ])
    body = assert_error(response, 400, "bulk_rows_invalid")
    assert body["extra"]["bad_rows"] == 5
    assert [(r["index"], r["field"], r["code"]) for r in body["extra"]["rows"]] == [
        (1, "email", "email_invalid"), (2, "postal_code", "postal_code_invalid"),
        (3, "email", "email_duplicated"), (4, None, "row_malformed"), (5, None, "row_malformed")]
    assert set(codes(org).values()) == {""}  # nothing written, not even the good first row


def test_100001_rows_is_400_before_anything_else(auth_client, org_with_members):
    rows = [{"email": f"u{i}@example.com", "postal_code": "12345"} for i in range(100_001)]
    body = assert_error(post(auth_client(org_with_members.owner), org_with_members.org, rows), 400,
                        "bulk_too_many_rows")
    assert body["extra"]["max_rows"] == 100_000


def test_100000_rows_in_one_statement(auth_client, org_with_members, django_assert_max_num_queries):
    org = org_with_members.org
    users = UserFactory.create_batch(50)
    for u in users:
        MembershipFactory(organization=org, user=u)
    rows = [{"email": f"nobody{i}@example.com", "postal_code": f"{i % 99999:05d}"} for i in range(100_000 - 50)]
    rows += [{"email": u.email, "postal_code": "EC1A 1BB"} for u in users]
    client = auth_client(org_with_members.owner)
    client.get(f"/api/v1/orgs/{org.id}/")  # the token's first use writes last_used_at
    # token, organization, role, the UPDATE, the activity log INSERT (each in a savepoint under the test client)
    with django_assert_max_num_queries(9) as captured:
        response = post(client, org, rows)
    assert response.status_code == 200, response.content[:300]
    assert response.json()["matched"] == 50 and len(response.json()["unmatched"]) == 100_000 - 50
    assert sum("UPDATE \"organizations_membership\"" in q["sql"] or "UPDATE organizations_membership" in q["sql"]
               for q in captured.captured_queries) == 1
    assert Membership.objects.filter(organization=org, postal_code="EC1A 1BB").count() == 50


@pytest.mark.parametrize("body", [{}, {"updates": []}, {"updates": "x"}, {"updates": [], "more": 1}, []])
def test_malformed_bodies_are_400(auth_client, org_with_members, body):
    response = auth_client(org_with_members.owner).post(url(org_with_members.org), body, format="json")
    assert_error(response, 400, "validation_error")


def test_admins_only_and_another_organization_is_404(auth_client, org_with_members, other_org):
    rows = [{"email": org_with_members.member.email, "postal_code": "12345"}]
    assert_error(post(auth_client(org_with_members.member), org_with_members.org, rows), 403, "admin_required")
    assert_error(post(auth_client(other_org.owner), org_with_members.org, rows), 404, "organization_not_found")
    assert set(codes(org_with_members.org).values()) == {""}


def test_api_keys_need_members_write(api_key_client, org_with_members):
    org = org_with_members.org
    rows = [{"email": org_with_members.member.email, "postal_code": "12345"}]
    _, plain = api_key_create(organization=org, name="plain", created_by=org_with_members.owner)
    assert_error(post(api_key_client(plain), org, rows), 403, "scope_required")
    _, members = api_key_create(organization=org, name="members", created_by=org_with_members.owner,
                                scopes=["orgs:read", "members:write"])
    assert post(api_key_client(members), org, rows).json() == {"matched": 1, "unmatched": []}


def test_a_body_of_several_megabytes_is_accepted_on_this_route_only(auth_client, org_with_members):
    rows = [{"email": f"someone.with.a.long.address.{i}@example.com", "postal_code": "12345"} for i in range(30_000)]
    client = auth_client(org_with_members.owner)
    response = post(client, org_with_members.org, rows)  # ~2 MB: over the default 1 MiB limit
    assert response.status_code == 200, response.content[:300]
    big = client.post(f"/api/v1/orgs/{org_with_members.org.id}/trackers/", {"name": "x" * 2_000_000}, format="json")
    assert_error(big, 413, "request_too_large")
