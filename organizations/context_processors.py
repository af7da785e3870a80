"""The layout's navigation: the member's organizations, the one being viewed and their role in it."""
from organizations.models import Membership


def navigation(request) -> dict:
    """`nav_orgs` (each with `.role`), `current_org` (from the URL's org_id, else the session's last
    one, else the first) and `is_org_admin`. One query, and none for anonymous visitors."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not getattr(user, "pk", None):
        return {}
    memberships = list(Membership.objects.filter(user=user).select_related("organization").order_by("organization_id"))
    orgs = []
    for membership in memberships:
        org = membership.organization
        org.role = membership.role
        orgs.append(org)
    match = getattr(request, "resolver_match", None)
    wanted = (match.kwargs.get("org_id") if match else None) or request.session.get("current_org_id")
    current = next((o for o in orgs if o.id == wanted), orgs[0] if orgs else None)
    if current is not None and request.session.get("current_org_id") != current.id:
        request.session["current_org_id"] = current.id
    return {
        "nav_orgs": orgs,
        "current_org": current,
        "is_org_admin": current is not None and current.role in Membership.ADMIN_ROLES,
    }
