"""Browser pages of the organizations app: switching the organization the navigation shows."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect
from django.urls import NoReverseMatch, path, reverse
from django.views.decorators.http import require_POST

from organizations.selectors import organization_get_for_user


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
        return redirect("live")


urlpatterns = [path("switch-org", org_switch, name="org-switch")]
