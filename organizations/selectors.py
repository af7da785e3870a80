"""Reads of tenant data. Access helpers answer 404 (never 403) for another organization's objects.

A principal is either a User (session or user token) or an ApiKeyPrincipal (org API key), which
sees exactly one organization with the admin role.
"""
from dataclasses import dataclass

from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.functions import Now

from config.errors import Forbidden, NotFound
from organizations.models import (ApiKey, ApiKeyScope, Invitation, Membership, Organization, SlackIntegration, User,
                                  UserToken)


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """What `Authorization: Bearer <org key>` authenticates as."""

    api_key: ApiKey
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    pk: None = None
    id: None = None

    @property
    def organization_id(self) -> int:
        return self.api_key.organization_id

    def __str__(self) -> str:
        return f"api-key:{self.api_key.prefix}"


def organization_list_for_user(*, user) -> QuerySet[Organization]:
    if isinstance(user, ApiKeyPrincipal):
        return Organization.objects.filter(id=user.organization_id).order_by("id")
    return Organization.objects.filter(memberships__user=user).order_by("id")


def role_in_organization(*, user, organization_id: int) -> str | None:
    if isinstance(user, ApiKeyPrincipal):
        return Membership.Role.ADMIN if user.organization_id == organization_id else None
    if not getattr(user, "pk", None):
        return None
    with connection.cursor() as cursor:  # every org-scoped request asks: hand-written (config.rawrows)
        cursor.execute("SELECT role FROM organizations_membership WHERE user_id = %s AND organization_id = %s",
                       [user.pk, organization_id])
        row = cursor.fetchone()
    return row[0] if row else None


def organization_get_for_user(*, user, id: int, admin: bool = False) -> Organization:
    """The organization if `user` belongs to it (404 otherwise); `admin=True` also needs owner/admin (403)."""
    organization = organization_list_for_user(user=user).filter(id=id).first()
    if organization is None:
        raise NotFound("Organization not found.", code="organization_not_found")
    if admin and role_in_organization(user=user, organization_id=organization.id) not in Membership.ADMIN_ROLES:
        raise Forbidden("Only owners and admins can do this.", code="admin_required")
    return organization


def membership_list(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.filter(organization=organization).select_related("user").order_by("id")


def member_user_ids(*, organization_id: int) -> list[int]:
    return list(Membership.objects.filter(organization_id=organization_id).values_list("user_id", flat=True))


def can_see_member_emails(*, principal, organization_id: int) -> bool:
    """Owners and admins (and keys with members:write) see members' emails; plain members do not."""
    if isinstance(principal, ApiKeyPrincipal):
        return ApiKeyScope.MEMBERS_WRITE in principal.api_key.scopes
    return role_in_organization(user=principal, organization_id=organization_id) in Membership.ADMIN_ROLES


def invitation_pending_list(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(organization=organization, status=Invitation.Status.PENDING).order_by("-id")


def user_token_list(*, user: User) -> QuerySet[UserToken]:
    """Live tokens of the user, newest first (a token past its sliding expiry is not listed)."""
    return (UserToken.objects.filter(user=user, revoked_at__isnull=True)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=Now())).order_by("-id"))


def user_get_by_email(*, email: str) -> User | None:
    return User.objects.filter(email__iexact=email, is_active=True).first()


def api_key_list(*, organization: Organization) -> QuerySet[ApiKey]:
    """Every key of the organization, revoked ones included, newest first."""
    return ApiKey.objects.filter(organization=organization).order_by("-id")


def slack_integration_get(*, organization: Organization) -> SlackIntegration | None:
    return SlackIntegration.objects.filter(organization=organization).first()
