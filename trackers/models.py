"""Trackers, the time entries they produce and comment threads (starts and stops are entries of the
org log, notifications.LogEntry)."""
from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import models
from django.db.models import F, Q

from organizations.models import Organization

# Text search configuration of the full-text indexes below; reports.search queries with the same
# expression, to_tsvector(SEARCH_CONFIG, COALESCE(<column>, '')), so the planner uses them. Each
# index leads with organization_id (btree_gin): a search reads its own tenant's postings only.
SEARCH_CONFIG = "english"


class Tracker(models.Model):
    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE, related_name="trackers")
    name = models.CharField(max_length=120)
    is_running = models.BooleanField(default=False)
    started_at = models.DateTimeField(null=True, blank=True)
    # No index on started_by: every start and stop changes it, and an indexed column would make that
    # UPDATE write every index of the table (no HOT update; migration 0007 says more).
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+", db_index=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(is_running=False) | Q(started_at__isnull=False), name="tracker_running_has_start"
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "id"]),
            GinIndex(F("organization"), SearchVector("name", config=SEARCH_CONFIG), name="tracker_name_search"),
        ]

    def __str__(self) -> str:
        return self.name


class TimeEntry(models.Model):
    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE,
                                     related_name="time_entries")
    tracker = models.ForeignKey(Tracker, on_delete=models.CASCADE, related_name="entries")
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    stopped_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    started_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    duration = models.DurationField(null=True, blank=True)
    notes = models.TextField(blank=True, max_length=4000)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(stopped_at__isnull=True) | Q(stopped_at__gte=F("started_at")),
                                   name="entry_stop_after_start"),
            models.UniqueConstraint(fields=["tracker"], condition=Q(stopped_at__isnull=True),
                                    name="entry_one_open_per_tracker"),
        ]
        indexes = [
            models.Index(fields=["organization", "-started_at"]),
            # Most entries have no notes: the search index holds only those that do.
            GinIndex(F("organization"), SearchVector("notes", config=SEARCH_CONFIG), name="entry_notes_search",
                     condition=~Q(notes="")),
        ]
        verbose_name_plural = "time entries"


class Comment(models.Model):
    """A comment on a tracker, or on one of its time entries (`time_entry` set), threaded by `parent`.

    `path` is the materialized path: the ids from the thread's root down to this comment, each
    zero-padded to PATH_WIDTH digits and joined by "/". Ordering a thread by `path` is its
    depth-first reading order, so a page of top-level comments and every reply under them is one
    query on (root, path), whatever the depth. `root` is the top-level comment (itself for one)."""

    PATH_WIDTH = 12

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="comments")
    tracker = models.ForeignKey(Tracker, on_delete=models.CASCADE, related_name="comments")
    time_entry = models.ForeignKey(TimeEntry, on_delete=models.CASCADE, null=True, blank=True, related_name="comments")
    parent = models.ForeignKey("self", on_delete=models.CASCADE, null=True, blank=True, related_name="replies")
    root = models.ForeignKey("self", db_index=False, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    path = models.TextField(blank=True)
    depth = models.PositiveIntegerField(default=0)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                               related_name="+")
    body = models.TextField(max_length=10000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    edited_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(parent__isnull=True, depth=0) | Q(parent__isnull=False, depth__gt=0),
                                   name="comment_depth_matches_parent"),
            models.CheckConstraint(condition=Q(deleted_at__isnull=True) | Q(body=""), name="comment_deleted_no_body"),
        ]
        indexes = [
            # The page of top-level comments of one thread target (a tracker, or one of its entries).
            models.Index(fields=["tracker", "time_entry", "id"], condition=Q(parent__isnull=True),
                         name="comment_top_level"),
            # Every comment under a page of roots, in reading order.
            models.Index(fields=["root", "path"], name="comment_thread_path"),
            # Deleted comments have no body (a constraint): nothing of theirs is searchable.
            GinIndex(F("organization"), SearchVector("body", config=SEARCH_CONFIG), name="comment_body_search",
                     condition=Q(deleted_at__isnull=True)),
        ]

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    def __str__(self) -> str:
        return f"comment {self.pk} on tracker {self.tracker_id}"
