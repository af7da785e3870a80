from django.contrib import admin

from trackers.models import Comment, TimeEntry, Tracker


@admin.register(Tracker)
class TrackerAdmin(admin.ModelAdmin):
    list_display = ("name", "organization", "is_running", "started_at", "started_by")
    list_filter = ("is_running",)
    search_fields = ("name", "organization__name")
    list_select_related = ("organization", "started_by")
    raw_id_fields = ("organization", "started_by")


@admin.register(TimeEntry)
class TimeEntryAdmin(admin.ModelAdmin):
    list_display = ("tracker", "organization", "started_by", "started_at", "stopped_at", "duration")
    list_filter = ("stopped_at",)
    search_fields = ("tracker__name", "organization__name", "started_by__username")
    list_select_related = ("tracker", "organization", "started_by")
    raw_id_fields = ("organization", "tracker", "started_by", "stopped_by")


@admin.register(Comment)
class CommentAdmin(admin.ModelAdmin):
    list_display = ("id", "tracker", "time_entry", "parent", "author", "created_at", "edited_at", "deleted_at")
    list_filter = ("deleted_at",)
    search_fields = ("body", "tracker__name", "author__username")
    list_select_related = ("tracker", "author")
    raw_id_fields = ("organization", "tracker", "time_entry", "parent", "root", "author")
    readonly_fields = ("path", "depth", "root")
