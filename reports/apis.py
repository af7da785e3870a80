"""Report job endpoints, the rate-limited stats endpoint, and their serializers."""
import datetime as dt

from django.core.files.storage import default_storage
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination, StrictSerializer
from config.errors import ApplicationError, Conflict, RateLimited
from organizations.selectors import organization_get_for_user
from reports import selectors, services, throttle
from reports.errors import ReportsError
from reports.models import ReportJob


class ReportOutput(serializers.Serializer):
    id = serializers.IntegerField()
    organization_id = serializers.IntegerField()
    kind = serializers.CharField()
    format = serializers.CharField()
    # "from" is a Python keyword: declared below through get_fields.
    to = serializers.DateField(source="date_to")
    status = serializers.CharField()
    progress = serializers.IntegerField()
    rows = serializers.IntegerField()
    total_rows = serializers.IntegerField(allow_null=True)
    file_size = serializers.IntegerField(allow_null=True)
    requested_by = serializers.SerializerMethodField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    download_url = serializers.SerializerMethodField()

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.DateField(source="date_from")
        return fields

    def get_requested_by(self, job) -> str:
        return job.requested_by.username if job.requested_by_id else f"api-key:{job.api_key.prefix}"

    def get_download_url(self, job) -> str | None:
        if job.status == ReportJob.Status.SUCCEEDED and not job.expired:
            return f"/api/v1/reports/{job.id}/download"
        return None


class ReportListCreateApi(APIView):
    class Input(StrictSerializer):
        kind = serializers.CharField(max_length=32)
        to = serializers.DateField()
        format = serializers.CharField(max_length=8, required=False, default="csv")

        def get_fields(self):
            fields = super().get_fields()
            fields["from"] = serializers.DateField()
            return fields

    @extend_schema(responses=ReportOutput(many=True))
    def get(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.report_list(organization=organization, user=request.user),
                                           request, view=self)
        return paginator.get_paginated_response(ReportOutput(page, many=True).data)

    @extend_schema(request=Input, responses={202: ReportOutput, 200: ReportOutput})
    def post(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        job, created = services.report_job_request(
            organization=organization, requester=request.user, kind=values["kind"], format=values["format"],
            date_from=values["from"], date_to=values["to"])
        return Response(ReportOutput(job).data, status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK)


class ReportDetailApi(APIView):
    @extend_schema(responses=ReportOutput)
    def get(self, request, report_id: int):
        job = selectors.report_get_for_user(user=request.user, id=report_id)
        return Response(ReportOutput(job).data)


class ReportCancelApi(APIView):
    @extend_schema(request=None, responses=ReportOutput)
    def post(self, request, report_id: int):
        job = selectors.report_get_for_user(user=request.user, id=report_id)
        return Response(ReportOutput(services.report_job_cancel(job=job)).data)


class ReportDownloadApi(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request, report_id: int):
        job = selectors.report_get_for_user(user=request.user, id=report_id)
        if job.status != ReportJob.Status.SUCCEEDED:
            raise Conflict(f"The report is {job.status}.", code=ReportsError.REPORT_NOT_READY,
                           extra={"status": job.status, "progress": job.progress})
        if job.expired or not job.file:
            raise ApplicationError("The report file has expired; request it again.",
                                   code=ReportsError.REPORT_EXPIRED, status=410)
        response = FileResponse(default_storage.open(job.file, "rb"), as_attachment=True,
                                filename=job.download_name, content_type=job.content_type)
        if job.file_size is not None:
            response["Content-Length"] = str(job.file_size)
        return response


def _parse_date(request, name: str) -> dt.date | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ApplicationError(f"'{name}' must be an ISO date (YYYY-MM-DD).", code=ReportsError.RANGE_INVALID,
                               extra={"field": name, "value": raw[:40]})


class StatsApi(APIView):
    """Heavy aggregate; rate limited per caller and per organization. Every answer for an
    organization the caller belongs to carries RateLimit-Limit/Remaining/Reset."""

    quota: throttle.Quota | None = None

    @extend_schema(parameters=[OpenApiParameter("from", OpenApiTypes.DATE, required=True),
                               OpenApiParameter("to", OpenApiTypes.DATE, required=True)],
                   responses=OpenApiTypes.OBJECT)
    def get(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id)
        self.quota = throttle.stats_quota_take(user=request.user, organization_id=organization.id)
        if not self.quota.allowed:
            raise RateLimited("Too many stats requests; retry later.", retry_after=self.quota.retry_after,
                              code=ReportsError.STATS_RATE_LIMITED)
        date_from, date_to = _parse_date(request, "from"), _parse_date(request, "to")
        if date_from is None or date_to is None:
            raise ApplicationError("'from' and 'to' are required (YYYY-MM-DD).", code=ReportsError.RANGE_REQUIRED)
        services.date_range_validate(date_from=date_from, date_to=date_to)
        return Response(selectors.organization_stats(organization=organization, date_from=date_from,
                                                     date_to=date_to))

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.quota is not None:
            for name, value in self.quota.headers().items():
                response[name] = value
        return response
