"""Trackers, their ordered event log (the outbox) and the time entries they produce."""
from django.conf import settings
from django.db import models
from django.db.models import F, Q

from organizations.models import Organization


class Tracker(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="trackers")
    name = models.CharField(max_length=120)
    is_running = models.BooleanField(default=False)
    started_at = models.DateTimeField(null=True, blank=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(is_running=False) | Q(started_at__isnull=False), name="tracker_running_has_start"
            ),
        ]
        indexes = [models.Index(fields=["organization", "id"])]

    def __str__(self) -> str:
        return self.name


class TrackerEvent(models.Model):
    """One start or stop. `seq` is gapless and unique per organization, assigned in the same
    transaction as the tracker change; the row is the outbox every delivery stream reads."""

    class Action(models.TextChoices):
        START = "start", "Start"
        STOP = "stop", "Stop"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    tracker = models.ForeignKey(Tracker, on_delete=models.CASCADE, related_name="events")
    action = models.CharField(max_length=8, choices=Action.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="+")
    actor_name = models.CharField(max_length=150, blank=True)
    occurred_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "seq"], name="event_unique_org_seq"),
            models.CheckConstraint(condition=Q(seq__gt=0), name="event_seq_positive"),
            models.CheckConstraint(condition=Q(action__in=["start", "stop"]), name="event_action_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}#{self.seq} {self.action}"


class TimeEntry(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="time_entries")
    tracker = models.ForeignKey(Tracker, on_delete=models.CASCADE, related_name="entries")
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    stopped_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    started_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    duration = models.DurationField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(stopped_at__isnull=True) | Q(stopped_at__gte=F("started_at")),
                                   name="entry_stop_after_start"),
            models.UniqueConstraint(fields=["tracker"], condition=Q(stopped_at__isnull=True),
                                    name="entry_one_open_per_tracker"),
        ]
        indexes = [models.Index(fields=["organization", "-started_at"])]
        verbose_name_plural = "time entries"
