"""Browser pages of the organizations app: switching the organization the navigation shows, the
member's profile and password, accepting an invitation, and for owners and admins the members and
roles, invitations, Slack settings and API keys of an organization.

Every write goes through the services the REST API calls, with the API's Input serializers, so a
page refuses what the API refuses, with the same message and code. Admin pages answer 403
admin_required to members and 404 to everyone else, as the API does."""
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, path, reverse
from django.views.decorators.http import require_POST

from config.api import validated_input
from config.errors import ApplicationError, NotFound
from organizations import selectors, services
from organizations.apis import (ApiKeyListCreateApi, MeApi, MembershipDetailApi, MembershipListCreateApi,
                                PasswordApi, SlackSettingsApi)
from organizations.models import DEFAULT_API_KEY_SCOPES, ApiKeyScope, Membership, locale_choices, time_zone_choices
from organizations.selectors import organization_get_for_user


def _ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


@login_required
@require_POST
def org_switch(request):
    """Make `org_id` the current organization and show the same page for it (the live page if the
    page names no organization)."""
    try:
        org_id = int(request.POST.get("org_id", ""))
    except ValueError:
        return redirect("live")
    organization = organization_get_for_user(user=request.user, id=org_id)
    request.session["current_org_id"] = organization.id
    try:
        return redirect(reverse(request.POST.get("next") or "live", args=[organization.id]))
    except NoReverseMatch:
        try:
            return redirect(reverse(request.POST.get("next") or "live"))
        except NoReverseMatch:
            return redirect("live")


# --- profile ---------------------------------------------------------------------------------------

PROFILE_FORM_FIELDS = ("first_name", "last_name", "email", "time_zone", "locale")


@login_required
def profile_page(request):
    user = request.user
    values = {f: getattr(user, f) for f in PROFILE_FORM_FIELDS}
    errors: dict = {}
    if request.method == "POST":
        values = {f: (request.POST.get(f) or "").strip() for f in PROFILE_FORM_FIELDS}
        submitted = dict(values)
        if not submitted["email"] and not user.email:
            del submitted["email"]  # an account without an email keeps none (the API's field may not be blank)
        try:
            data = validated_input(MeApi.Input, submitted)
            services.user_update(user=user, data=dict(data))
        except ApplicationError as exc:
            messages.error(request, exc.display())
            errors = exc.extra.get("fields") or {}
            user.refresh_from_db()
        else:
            messages.success(request, "Profile saved.")
            return redirect("profile")
    return render(request, "organizations/profile.html", {
        "values": values, "errors": errors, "time_zones": time_zone_choices(), "locales": locale_choices()})


@login_required
@require_POST
def password_page(request):
    user = request.user
    try:
        data = validated_input(PasswordApi.Input, {"current_password": request.POST.get("current_password", ""),
                                                   "new_password": request.POST.get("new_password", "")})
        if request.POST.get("new_password") != request.POST.get("new_password_again"):
            raise ApplicationError("Invalid input.", code="validation_error",
                                   extra={"fields": {"new_password_again": ["The two new passwords differ."]}})
        services.user_login(request=request, username=user.get_username(), password=data["current_password"],
                            ip=_ip(request))
        services.user_password_change(user=user, password=data["new_password"], ip=_ip(request), via="web")
    except ApplicationError as exc:
        messages.error(request, exc.display())
    else:
        update_session_auth_hash(request, user)  # this browser stays signed in; every token is revoked
        messages.success(request, "Password changed. Your API tokens were revoked; other sessions sign in again.")
    return redirect(f"{reverse('profile')}#password")


# --- invitations (the invitee) ---------------------------------------------------------------------

@login_required
def invitation_page(request, token: str):
    """The link an admin sends: signed in with the invited email, the invitee joins with one click."""
    if request.method == "POST":
        membership = services.invitation_accept(user=request.user, token=token, ip=_ip(request))
        request.session["current_org_id"] = membership.organization_id
        messages.success(request, f"You joined {membership.organization.name} as {membership.role}.")
        return redirect("live")
    return render(request, "organizations/invitation.html", {"token": token})


# --- members and roles (admins) --------------------------------------------------------------------

def _admin_org(request, org_id: int):
    return organization_get_for_user(user=request.user, id=org_id, admin=True)


@login_required
def members_page(request, org_id: int):
    organization = _admin_org(request, org_id)
    invited = None
    invite = {"email": "", "role": Membership.Role.MEMBER}
    if request.method == "POST":
        invite = {"email": (request.POST.get("email") or "").strip(), "role": request.POST.get("role") or "member"}
        try:
            data = validated_input(MembershipListCreateApi.Input, invite)
            invitation, token = services.invitation_create(organization=organization, invited_by=request.user,
                                                           ip=_ip(request), **data)
            invited = {"invitation": invitation,
                       "url": f"{settings.HERALD_BASE_URL}{reverse('invitation', args=[token])}"}
            invite = {"email": "", "role": Membership.Role.MEMBER}
        except ApplicationError as exc:
            messages.error(request, exc.display())
    members = list(selectors.membership_list(organization=organization))
    invitations = list(selectors.invitation_pending_list(organization=organization))
    response = render(request, "organizations/members.html", {
        "organization": organization, "members": members, "invitations": invitations, "invite": invite,
        "invited": invited, "roles": [c for c in Membership.Role.choices if c[0] != Membership.Role.OWNER]})
    if invited:
        response["Cache-Control"] = "no-store"  # the invitation link is shown once
    return response


@login_required
@require_POST
def member_role_page(request, org_id: int, membership_id: int):
    organization = _admin_org(request, org_id)
    try:
        data = validated_input(MembershipDetailApi.Input, {"role": request.POST.get("role", "")})
        membership = services.membership_role_change(organization=organization, membership_id=membership_id,
                                                     role=data["role"], by=request.user, ip=_ip(request))
    except NotFound:
        raise
    except ApplicationError as exc:
        messages.error(request, exc.display())
    else:
        messages.success(request, f"{membership.user.username} is now {membership.role}.")
        if selectors.role_in_organization(user=request.user, organization_id=organization.id) not in \
                Membership.ADMIN_ROLES:
            return redirect("live")  # an admin who made themselves a member
    return redirect("members", organization.id)


@login_required
@require_POST
def member_remove_page(request, org_id: int, membership_id: int):
    organization = _admin_org(request, org_id)
    try:
        services.membership_remove(organization=organization, membership_id=membership_id, by=request.user,
                                   ip=_ip(request))
    except NotFound:
        raise
    except ApplicationError as exc:
        messages.error(request, exc.display())
    else:
        messages.success(request, "Member removed.")
    if not selectors.role_in_organization(user=request.user, organization_id=organization.id):
        return redirect("live")  # an admin who removed themselves
    return redirect("members", organization.id)


@login_required
@require_POST
def invitation_withdraw_page(request, org_id: int, invitation_id: int):
    organization = _admin_org(request, org_id)
    services.invitation_revoke(organization=organization, invitation_id=invitation_id, by=request.user,
                               ip=_ip(request))
    messages.success(request, "Invitation withdrawn.")
    return redirect("members", organization.id)


# --- Slack (admins) --------------------------------------------------------------------------------

@login_required
def slack_page(request, org_id: int):
    organization = _admin_org(request, org_id)
    channel = ""
    if request.method == "POST":
        channel = (request.POST.get("channel") or "").strip()
        try:
            data = validated_input(SlackSettingsApi.Input, {"channel": channel,
                                                            "token": (request.POST.get("token") or "").strip()})
            services.slack_integration_set(organization=organization, **data)
        except ApplicationError as exc:
            messages.error(request, exc.display())
        else:
            messages.success(request, f"Slack connected: tracker events go to {data['channel']}.")
            return redirect("slack", organization.id)
    integration = selectors.slack_integration_get(organization=organization)
    return render(request, "organizations/slack.html", {
        "organization": organization, "integration": integration,
        "channel": channel or (integration.channel if integration else "")})


# --- API keys (admins) -----------------------------------------------------------------------------

API_KEYS_ON_PAGE = 200


@login_required
def api_keys_page(request, org_id: int):
    organization = _admin_org(request, org_id)
    created = None
    form = {"name": "", "scopes": [str(s) for s in DEFAULT_API_KEY_SCOPES]}
    if request.method == "POST":
        form = {"name": (request.POST.get("name") or "").strip(), "scopes": request.POST.getlist("scopes")}
        try:
            data = validated_input(ApiKeyListCreateApi.Input, form)
            api_key, full = services.api_key_create(organization=organization, name=data["name"],
                                                    created_by=request.user, scopes=data["scopes"], ip=_ip(request))
            created = {"api_key": api_key, "key": full}  # shown once, in this answer only
            form = {"name": "", "scopes": [str(s) for s in DEFAULT_API_KEY_SCOPES]}
        except ApplicationError as exc:
            messages.error(request, exc.display())
    keys = list(selectors.api_key_list(organization=organization)[:API_KEYS_ON_PAGE])
    response = render(request, "organizations/api_keys.html", {
        "organization": organization, "keys": keys, "created": created, "form": form,
        "scopes": ApiKeyScope.choices})
    if created:
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def api_key_revoke_page(request, org_id: int, key_id: int):
    organization = _admin_org(request, org_id)
    api_key = selectors.api_key_list(organization=organization).filter(id=key_id).first()
    if api_key is None:
        raise NotFound("API key not found.", code="api_key_not_found")
    services.api_key_revoke(api_key=api_key, by=request.user, ip=_ip(request))
    messages.success(request, f"Key {api_key.name} ({api_key.prefix}…) revoked.")
    return redirect("api-keys", organization.id)


urlpatterns = [
    path("switch-org", org_switch, name="org-switch"),
    path("me/profile/", profile_page, name="profile"),
    path("me/password/", password_page, name="password"),
    path("invitations/<str:token>/", invitation_page, name="invitation"),
    path("orgs/<int:org_id>/admin/members/", members_page, name="members"),
    path("orgs/<int:org_id>/admin/members/<int:membership_id>/role", member_role_page, name="member-role"),
    path("orgs/<int:org_id>/admin/members/<int:membership_id>/remove", member_remove_page, name="member-remove"),
    path("orgs/<int:org_id>/admin/invitations/<int:invitation_id>/withdraw", invitation_withdraw_page,
         name="invitation-withdraw"),
    path("orgs/<int:org_id>/admin/slack/", slack_page, name="slack"),
    path("orgs/<int:org_id>/admin/api-keys/", api_keys_page, name="api-keys"),
    path("orgs/<int:org_id>/admin/api-keys/<int:key_id>/revoke", api_key_revoke_page, name="api-key-revoke"),
]
