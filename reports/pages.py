"""Browser pages of the reports app: report jobs with live progress and downloads, and the stats
charts. Both draw from the same REST endpoints the API documents (the page script calls them)."""
import datetime as dt

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import ensure_csrf_cookie

from organizations.selectors import organization_get_for_user
from reports import selectors
from reports.models import ReportJob

JOBS_ON_PAGE = 50


@login_required
@ensure_csrf_cookie
def reports_page(request, org_id: int):
    organization = organization_get_for_user(user=request.user, id=org_id)
    jobs = list(selectors.report_list(organization=organization, user=request.user)[:JOBS_ON_PAGE])
    today = timezone.localdate()
    return render(request, "reports/reports.html", {
        "organization": organization, "jobs": jobs, "kinds": ReportJob.Kind.choices,
        "formats": ReportJob.Format.choices, "default_from": (today.replace(day=1)).isoformat(),
        "default_to": today.isoformat(),
    })


@login_required
@ensure_csrf_cookie
def stats_page(request, org_id: int):
    organization = organization_get_for_user(user=request.user, id=org_id)
    today = timezone.localdate()
    return render(request, "reports/stats.html", {
        "organization": organization, "default_from": (today - dt.timedelta(days=29)).isoformat(),
        "default_to": today.isoformat(),
    })


urlpatterns = [
    path("orgs/<int:org_id>/reports/", reports_page, name="reports"),
    path("orgs/<int:org_id>/stats/", stats_page, name="stats"),
]
