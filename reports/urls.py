from django.urls import path

from reports import apis
from reports.search import apis as search_apis

urlpatterns = [
    path("orgs/<int:org_id>/reports/", apis.ReportListCreateApi.as_view(), name="org-reports"),
    path("orgs/<int:org_id>/stats", apis.StatsApi.as_view(), name="org-stats"),
    path("orgs/<int:org_id>/search", search_apis.SearchApi.as_view(), name="org-search"),
    path("orgs/<int:org_id>/search/top", search_apis.SearchTopApi.as_view(), name="org-search-top"),
    path("reports/<int:report_id>", apis.ReportDetailApi.as_view(), name="report-detail"),
    path("reports/<int:report_id>/download", apis.ReportDownloadApi.as_view(), name="report-download"),
    path("reports/<int:report_id>/cancel", apis.ReportCancelApi.as_view(), name="report-cancel"),
]
