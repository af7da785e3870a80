"""Browser pages: the live tracker page at /."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import path
from django.views.decorators.csrf import ensure_csrf_cookie

from organizations.selectors import organization_list_for_user


@login_required
@ensure_csrf_cookie
def live_page(request):
    organizations = list(organization_list_for_user(user=request.user))
    return render(request, "trackers/live.html", {"organizations": organizations})


urlpatterns = [path("", live_page, name="live")]
