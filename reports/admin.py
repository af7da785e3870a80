"""Admin for report jobs, the (read-only) activity log and search log, and the top-10."""
from django.contrib import admin

from reports.models import ActivityLog, ReportJob, SearchLog, SearchTop


@admin.register(ReportJob)
class ReportJobAdmin(admin.ModelAdmin):
    list_display = ("id", "organization", "requested_by", "kind", "format", "date_from", "date_to", "status",
                    "progress", "rows", "created_at", "finished_at")
    list_filter = ("status", "kind", "format")
    list_select_related = ("organization", "requested_by")
    raw_id_fields = ("organization", "requested_by", "api_key")
    readonly_fields = ("status", "progress", "rows", "total_rows", "attempts", "file", "file_size", "error",
                       "created_at", "started_at", "heartbeat_at", "finished_at", "expires_at", "expired")


@admin.register(ActivityLog)
class ActivityLogAdmin(admin.ModelAdmin):
    """Append-only history: a list with filters, no add, change or delete. The list has no links:
    a row's key is (created_at, id), and created_at ranges pick the partitions to read."""

    list_display = ("created_at", "organization_id", "actor_name", "method", "action", "object_type", "object_id",
                    "status", "ip", "path")
    list_display_links = None
    list_filter = ("method", ("created_at", admin.DateFieldListFilter))
    search_fields = ("actor_name", "path", "action")
    date_hierarchy = "created_at"
    show_full_result_count = False  # count(*) over 30 days of partitions on every page is not cheap
    list_per_page = 100

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SearchLog)
class SearchLogAdmin(_ReadOnly):
    list_display = ("created_at", "organization_id", "user_id", "api_key_id", "query")
    list_filter = (("created_at", admin.DateFieldListFilter),)
    search_fields = ("query",)
    show_full_result_count = False
    list_per_page = 100


@admin.register(SearchTop)
class SearchTopAdmin(_ReadOnly):
    list_display = ("organization", "rank", "query", "searches", "window_start", "window_end")
    list_select_related = ("organization",)
    raw_id_fields = ("organization",)
