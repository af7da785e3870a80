"""The search log (one row per search, append-only) and the hourly top-10 per organization.

Registered through reports.models. The log has plain ids, no foreign keys: an INSERT checks no
other table and locks no organization row; a BRIN index on created_at serves the hourly window
and the retention purge at a fraction of a B-tree's write cost."""
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from organizations.models import Organization

QUERY_MAX_LENGTH = 200
TOP_SIZE = 10


class SearchLog(models.Model):
    organization_id = models.BigIntegerField()
    user_id = models.BigIntegerField(null=True, blank=True)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    query = models.CharField(max_length=QUERY_MAX_LENGTH)  # normalized (reports.search.services)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        indexes = [BrinIndex(fields=["created_at"], name="searchlog_created_brin")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} org {self.organization_id}: {self.query}"


class SearchTop(models.Model):
    """One of an organization's most searched queries in the window of the last refresh."""

    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE, related_name="+")
    rank = models.PositiveSmallIntegerField()
    query = models.CharField(max_length=QUERY_MAX_LENGTH)
    searches = models.PositiveIntegerField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "rank"], name="searchtop_org_rank"),
            models.CheckConstraint(condition=Q(rank__gte=1, rank__lte=TOP_SIZE), name="searchtop_rank_1_10"),
        ]
        ordering = ["organization", "rank"]
        verbose_name = "top search"

    def __str__(self) -> str:
        return f"#{self.rank} {self.query} ({self.searches})"
