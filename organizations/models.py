"""Identity and tenancy: users, organizations, memberships, org API keys and Slack settings."""
import functools
import zoneinfo

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q


@functools.cache
def _time_zones() -> frozenset[str]:
    # available_timezones() walks the tz database on disk (~30 ms): once per process is enough.
    return frozenset(zoneinfo.available_timezones())


def validate_time_zone(value: str) -> None:
    if value not in _time_zones():
        raise ValidationError(f"Unknown time zone: {value!r}.", code="invalid_time_zone")


class User(AbstractUser):
    email = models.EmailField("email address", blank=True, db_index=True)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    phone = models.CharField(max_length=32, blank=True)
    postal_code = models.CharField(max_length=16, blank=True)
    slack_user_id = models.CharField(max_length=32, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                models.functions.Lower("email"), condition=~Q(email=""), name="user_email_unique_ci"
            ),
        ]


class Organization(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=64, unique=True)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    # Last per-organization event sequence number handed out (see trackers.services).
    last_event_seq = models.BigIntegerField(default=0)
    last_event_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(last_event_seq__gte=0), name="org_seq_nonnegative")]
        # The sweeper and backlog metric look only at recently active organizations.
        indexes = [models.Index(fields=["last_event_at"], condition=Q(last_event_at__isnull=False),
                                name="org_recent_activity")]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    ADMIN_ROLES = (Role.OWNER, Role.ADMIN)

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="membership_unique_user_org"),
            models.CheckConstraint(condition=Q(role__in=["owner", "admin", "member"]), name="membership_role_valid"),
        ]
        indexes = [models.Index(fields=["user", "organization"])]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class ApiKey(models.Model):
    """An organization's API key. Only a SHA-256 of the secret is stored; the key is shown once."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=24, unique=True)
    key_hash = models.CharField(max_length=64)
    created_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class UserToken(models.Model):
    """A user's API token (`Authorization: Token <key>`). Stored hashed, like API keys."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    prefix = models.CharField(max_length=24, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token {self.prefix}… for {self.user}"


class SlackIntegration(models.Model):
    """The organization's Slack channel and bot token; the token is Fernet-encrypted at rest."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="slack")
    channel = models.CharField(max_length=80)
    token_encrypted = models.TextField()
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.organization} → {self.channel}"
