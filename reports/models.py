"""Async report jobs and the activity log of API writes.

The activity log is a Postgres table partitioned by day (created in migration 0001 with raw SQL,
Django has no partitioning); this model maps it read-only for the admin and selectors."""
from django.conf import settings
from django.db import models
from django.db.models import Q

from organizations.models import ApiKey, Organization
from reports.search.models import SearchLog, SearchTop  # noqa: F401  (registered with the reports app)


class ReportJob(models.Model):
    class Kind(models.TextChoices):
        TIME_ENTRIES = "time_entries", "Time entries"
        MEMBER_HOURS = "member_hours", "Hours per member and day"

    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        XLSX = "xlsx", "Excel (xlsx)"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE, related_name="report_jobs")
    # Exactly one of the two: a member (session or user token) or an org API key.
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True,
                                     related_name="report_jobs")
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    format = models.CharField(max_length=8, choices=Format.choices)
    date_from = models.DateField()
    date_to = models.DateField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    rows = models.BigIntegerField(default=0)
    total_rows = models.BigIntegerField(null=True, blank=True)
    # Each run (first, or restarted after a lost worker) claims the job by bumping attempts; a
    # worker writes progress only while attempts still equals its claim (a stale one stops).
    attempts = models.PositiveSmallIntegerField(default=0)
    file = models.CharField(max_length=255, blank=True)  # name in the default storage
    file_size = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    expired = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed", "cancelled"]),
                name="report_status_valid"),
            models.CheckConstraint(condition=Q(kind__in=["time_entries", "member_hours"]), name="report_kind_valid"),
            models.CheckConstraint(condition=Q(format__in=["csv", "xlsx"]), name="report_format_valid"),
            models.CheckConstraint(condition=Q(date_from__lte=models.F("date_to")), name="report_range_ordered"),
            models.CheckConstraint(condition=Q(progress__gte=0, progress__lte=100), name="report_progress_0_100"),
            models.CheckConstraint(
                condition=Q(requested_by__isnull=False, api_key__isnull=True)
                | Q(requested_by__isnull=True, api_key__isnull=False),
                name="report_one_requester"),
            # The same request by the same requester while one is queued or running is that job.
            models.UniqueConstraint(
                fields=["organization", "requested_by", "api_key", "kind", "format", "date_from", "date_to"],
                condition=Q(status__in=["queued", "running"]), nulls_distinct=False,
                name="report_one_active_per_request"),
        ]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="report_org_recent"),
            models.Index(fields=["status", "heartbeat_at"], condition=Q(status__in=["queued", "running"]),
                         name="report_active"),
            models.Index(fields=["expires_at"], condition=Q(status="succeeded", expired=False),
                         name="report_expiring"),
        ]

    def __str__(self) -> str:
        return f"report {self.pk} {self.kind}.{self.format} {self.date_from}..{self.date_to} ({self.status})"

    @property
    def content_type(self) -> str:
        return REPORT_CONTENT_TYPES[self.format]

    @property
    def download_name(self) -> str:
        return f"{self.kind}_{self.date_from:%Y%m%d}-{self.date_to:%Y%m%d}.{self.format}"


REPORT_CONTENT_TYPES = {
    ReportJob.Format.CSV: "text/csv; charset=utf-8",
    ReportJob.Format.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


class ActivityLog(models.Model):
    """One API write. Partitioned by day on created_at; old days are dropped whole (no DELETE)."""

    id = models.BigIntegerField(primary_key=True)  # bigserial; the SQL key is (created_at, id)
    created_at = models.DateTimeField()
    organization_id = models.BigIntegerField(null=True, blank=True, db_index=False)
    actor_user_id = models.BigIntegerField(null=True, blank=True)
    actor_api_key_id = models.BigIntegerField(null=True, blank=True)
    actor_name = models.CharField(max_length=150, blank=True)
    method = models.CharField(max_length=8)
    action = models.CharField(max_length=100)  # the URL name, e.g. "tracker-start"
    object_type = models.CharField(max_length=40, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    path = models.CharField(max_length=255)
    status = models.PositiveSmallIntegerField()
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = "reports_activitylog"
        ordering = ["-created_at", "-id"]
        verbose_name = "activity log entry"
        verbose_name_plural = "activity log"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.method} {self.path}"
