"""What an organization API key may call: each route and method needs one scope (docs/security.md).

Checked for every request authenticated by `Authorization: Bearer <key>` (a default DRF permission);
people (session, user token) are not concerned. A view may name its own scopes with
`api_key_scopes = {"POST": "..."}`; otherwise the table below decides. A read not listed needs
`orgs:read`; a write not listed is refused to keys (403 user_required): a new write endpoint opens
to keys only by naming its scope.
"""
from rest_framework.permissions import SAFE_METHODS, BasePermission

from config.errors import Forbidden
from organizations.errors import OrganizationsError
from organizations.models import ApiKeyScope
from organizations.selectors import ApiKeyPrincipal

S = ApiKeyScope
API_KEY_SCOPES_BY_ROUTE: dict[tuple[str, str], str] = {
    ("org-members", "POST"): S.MEMBERS_WRITE,
    ("org-member-postal-codes", "POST"): S.MEMBERS_WRITE,
    ("org-invitations", "GET"): S.MEMBERS_WRITE,
    ("org-invitation-detail", "DELETE"): S.MEMBERS_WRITE,
    ("org-slack", "PUT"): S.INTEGRATIONS_WRITE,
    ("org-webhooks", "GET"): S.INTEGRATIONS_WRITE,
    ("org-webhooks", "POST"): S.INTEGRATIONS_WRITE,
    ("webhook-detail", "DELETE"): S.INTEGRATIONS_WRITE,
    ("org-api-keys", "GET"): S.API_KEYS_WRITE,
    ("org-api-keys", "POST"): S.API_KEYS_WRITE,
    ("org-api-key-revoke", "POST"): S.API_KEYS_WRITE,
    ("org-trackers", "POST"): S.TRACKERS_WRITE,
    ("tracker-start", "POST"): S.TRACKERS_WRITE,
    ("tracker-stop", "POST"): S.TRACKERS_WRITE,
    ("org-events", "GET"): S.EVENTS_READ,
    ("send", "POST"): S.NOTIFICATIONS_SEND,
    # A report is a read of the organization's data, run in the background.
    ("org-reports", "POST"): S.ORGS_READ,
    ("report-cancel", "POST"): S.ORGS_READ,
}


def required_scope(*, view, route: str | None, method: str) -> str | None:
    """The scope a key needs for this call; None: keys may not make it at all."""
    method = "GET" if method in ("HEAD", "OPTIONS") else method
    declared = getattr(view, "api_key_scopes", None) or {}
    if method in declared:
        return declared[method]
    if (route, method) in API_KEY_SCOPES_BY_ROUTE:
        return API_KEY_SCOPES_BY_ROUTE[(route, method)]
    return S.ORGS_READ if method in SAFE_METHODS else None


class ApiKeyScopes(BasePermission):
    def has_permission(self, request, view) -> bool:
        principal = request.user
        if not isinstance(principal, ApiKeyPrincipal):
            return True
        route = request.resolver_match.url_name if request.resolver_match else None
        scope = required_scope(view=view, route=route, method=request.method)
        if scope is None:
            raise Forbidden("This endpoint needs a user, not an organization API key.",
                            code=OrganizationsError.USER_REQUIRED)
        if scope not in principal.api_key.scopes:
            raise Forbidden(f"This API key lacks the {scope} scope.", code=OrganizationsError.SCOPE_REQUIRED,
                            extra={"scope": str(scope)})
        return True
