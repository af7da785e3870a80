"""Browser pages of the reports app: report jobs with live progress and downloads, the stats
charts (both draw from the REST endpoints the API documents), and search with the top-10 (server
rendered from the same selectors and services as GET /orgs/{id}/search and /search/top)."""
import datetime as dt
import json

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import ensure_csrf_cookie

from config.errors import ApplicationError
from organizations.selectors import organization_get_for_user
from reports import selectors
from reports.models import ReportJob
from reports.search import selectors as search_selectors
from reports.search import services as search_services
from reports.search import top as search_top
from reports.search.models import QUERY_MAX_LENGTH

JOBS_ON_PAGE = 50
SEARCH_RESULTS_ON_PAGE = 20


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


@login_required
def search_page(request, org_id: int):
    """GET ?q=...&page=N: ranked results, 20 a page, every search logged as the API logs it; the
    organization's top-10 queries of the last hour beside them (the cached answer of /search/top)."""
    organization = organization_get_for_user(user=request.user, id=org_id)
    raw = request.GET.get("q")
    context = {"organization": organization, "q": raw or "", "max_length": QUERY_MAX_LENGTH, "hits": [],
               "error": None, "total": None, "page": None}
    if raw is not None:
        try:
            query = search_services.search_query_normalize(raw=raw)
        except ApplicationError as exc:
            context["error"] = exc
        else:
            number = request.GET.get("page", "1")
            number = int(number) if number.isdigit() and int(number) > 0 else 1
            total, hits = search_selectors.search_page(organization_id=organization.id, query=query,
                                                       offset=(number - 1) * SEARCH_RESULTS_ON_PAGE,
                                                       limit=SEARCH_RESULTS_ON_PAGE)
            if total is None:  # past the end: the last page
                total, hits = 0, []
            search_services.search_log_record(organization_id=organization.id, principal=request.user, query=query)
            context.update(hits=hits, total=total,
                           page=Paginator(range(total), SEARCH_RESULTS_ON_PAGE).get_page(number) if total else None)
    context["top"] = json.loads(search_top.search_top_body(organization_id=organization.id))
    return render(request, "reports/search.html", context, status=400 if context["error"] else 200)


urlpatterns = [
    path("orgs/<int:org_id>/search/", search_page, name="search"),
    path("orgs/<int:org_id>/reports/", reports_page, name="reports"),
    path("orgs/<int:org_id>/stats/", stats_page, name="stats"),
]
