"""Identity and tenancy: users, organizations, memberships, org API keys and Slack settings."""
import functools
import re
import zoneinfo

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q


@functools.cache
def _time_zones() -> frozenset[str]:
    # available_timezones() walks the tz database on disk (~30 ms): once per process is enough.
    return frozenset(zoneinfo.available_timezones())


def time_zone_choices() -> list[str]:
    return sorted(_time_zones())


def validate_time_zone(value: str) -> None:
    if value not in _time_zones():
        raise ValidationError(f"Unknown time zone: {value!r}.", code="invalid_time_zone")


# A language tag as notification templates name their locales ("en", "pt-BR").
LOCALE_PATTERN = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,2}\Z"


E164 = re.compile(r"^\+[1-9][0-9]{6,14}\Z")


def normalize_phone(value: str) -> str:
    """"+33 1 23 45 67 89" / "+1 (555) 010-0200" -> E.164 ("+33123456789"); other input unchanged
    (the validator refuses it)."""
    compact = re.sub(r"[\s().-]", "", value or "")
    return compact if E164.match(compact) else value


def validate_e164(value: str) -> None:
    """A phone number in E.164: "+", country code, subscriber number, 8 to 15 digits in all."""
    if value and not E164.match(value):
        raise ValidationError("Enter the number in international form, e.g. +14155550100.", code="invalid_phone")


def locale_choices() -> list[tuple[str, str]]:
    """The locales a member may choose (Django's LANGUAGES: code, name); templates of a kind are
    picked by the recipient's locale."""
    return list(settings.LANGUAGES)


def validate_locale(value: str) -> None:
    if value not in dict(settings.LANGUAGES):
        raise ValidationError(f"Unknown locale: {value!r}.", code="invalid_locale")


class User(AbstractUser):
    email = models.EmailField("email address", blank=True, db_index=True)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    locale = models.CharField(max_length=16, default="en", db_default="en", validators=[validate_locale])
    phone = models.CharField(max_length=32, blank=True, default="", db_default="", validators=[validate_e164],
                             help_text="E.164 (+14155550100): SMS and WhatsApp notifications go here")
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
    locale = models.CharField(max_length=16, default="en", db_default="en",
                              help_text="Default locale of notification templates")
    # Last per-organization event sequence number handed out (see trackers.services).
    last_event_seq = models.BigIntegerField(default=0)
    # When the log last moved, to within a minute: the appends set it through LAST_EVENT_AT_SQL,
    # which leaves it as it is while it is younger than that, so that the row's UPDATE on every
    # event changes no indexed column and can be HOT (migration 0010). Entries carry their own time.
    last_event_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(last_event_seq__gte=0), name="org_seq_nonnegative")]
        # The sweeper and backlog metric look only at recently active organizations.
        indexes = [models.Index(fields=["last_event_at"], condition=Q(last_event_at__isnull=False),
                                name="org_recent_activity")]

    LAST_EVENT_AT_SQL = ("last_event_at = CASE WHEN last_event_at > clock_timestamp() - interval '1 minute' "
                         "THEN last_event_at ELSE clock_timestamp() END")

    def __str__(self) -> str:
        return self.name


# 3 to 10 characters of A-Z, 0-9, space and hyphen, starting and ending with a letter or digit
# (after normalization: trimmed, upper case, inner whitespace as one space).
POSTAL_CODE_MAX = 10
POSTAL_CODE_PATTERN = r"^[A-Z0-9][A-Z0-9 -]{1,8}[A-Z0-9]$"


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    ADMIN_ROLES = (Role.OWNER, Role.ADMIN)

    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, db_index=False, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    # Per organization (set by its admins, e.g. for payroll or tax regions); "" = not set.
    # Normalized by organizations.services.postal_code_normalize; the CHECK is the same rule.
    postal_code = models.CharField(max_length=POSTAL_CODE_MAX, blank=True, default="", db_default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="membership_unique_user_org"),
            models.CheckConstraint(condition=Q(role__in=["owner", "admin", "member"]), name="membership_role_valid"),
            models.CheckConstraint(condition=Q(postal_code="") | Q(postal_code__regex=POSTAL_CODE_PATTERN),
                                   name="membership_postal_code_valid"),
        ]
        indexes = [models.Index(fields=["user", "organization"])]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class ApiKeyScope(models.TextChoices):
    """What an organization API key may do (docs/security.md). A key never manages keys or
    memberships unless given the scope; a new key without `scopes` gets DEFAULT_API_KEY_SCOPES."""

    ORGS_READ = "orgs:read", "Read the organization, its members and trackers"
    TRACKERS_WRITE = "trackers:write", "Create, start and stop trackers"
    EVENTS_READ = "events:read", "Read the event log"
    NOTIFICATIONS_SEND = "notifications:send", "Send notifications"
    INTEGRATIONS_WRITE = "integrations:write", "Change Slack and other integrations"
    MEMBERS_WRITE = "members:write", "Invite members (as members only)"
    API_KEYS_WRITE = "api_keys:write", "Create and revoke API keys"
    TEMPLATES_WRITE = "templates:write", "Create, change and delete notification templates"


DEFAULT_API_KEY_SCOPES = [ApiKeyScope.ORGS_READ, ApiKeyScope.TRACKERS_WRITE, ApiKeyScope.EVENTS_READ,
                          ApiKeyScope.NOTIFICATIONS_SEND]


def default_api_key_scopes() -> list[str]:
    return [str(s) for s in DEFAULT_API_KEY_SCOPES]


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
    scopes = models.JSONField(default=default_api_key_scopes)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class UserToken(models.Model):
    """A user's API token (`Authorization: Token <key>`). Stored hashed, like API keys.

    It expires HERALD_TOKEN_TTL_SECONDS after its last use (sliding; NULL: issued before expiry
    existed, counted from its creation), ends when revoked, and is bound to the password it was
    issued under (`auth_hash`, the user's session auth hash): a password change by any path ends it."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    prefix = models.CharField(max_length=24, unique=True)
    key_hash = models.CharField(max_length=64)
    name = models.CharField(max_length=100, blank=True)
    auth_hash = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-id"], condition=Q(revoked_at__isnull=True),
                                name="usertoken_active_by_user")]

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


class Invitation(models.Model):
    """An offer to join an organization, sent to an email address. Only the invitee (signed in with
    that email) can accept it, once, before it expires. The token is stored hashed."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REVOKED = "revoked", "Revoked"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(max_length=254)
    role = models.CharField(max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    prefix = models.CharField(max_length=24, unique=True)
    key_hash = models.CharField(max_length=64)
    invited_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    invited_by_api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    accepted_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(status__in=["pending", "accepted", "revoked"]),
                                   name="invitation_status_valid"),
            models.CheckConstraint(condition=Q(role__in=["admin", "member"]), name="invitation_role_valid"),
            # One pending invitation per address and organization: inviting again renews it.
            models.UniqueConstraint(models.F("organization"), models.functions.Lower("email"),
                                    condition=Q(status="pending"), name="invitation_one_pending_per_email"),
        ]
        indexes = [models.Index(fields=["organization", "-id"], condition=Q(status="pending"),
                                name="invitation_pending_by_org")]

    def __str__(self) -> str:
        return f"{self.email} → {self.organization} ({self.status})"


class SecurityEvent(models.Model):
    """Audit log of security-relevant facts, written in the transaction of the change (or on its own
    for failed logins). Read in the admin; never edited."""

    class Kind(models.TextChoices):
        LOGIN = "login", "Login"
        LOGIN_FAILED = "login_failed", "Failed login"
        LOGIN_LOCKED = "login_locked", "Account locked after failures"
        REGISTERED = "registered", "Registered"
        PASSWORD_CHANGED = "password_changed", "Password changed"
        USER_DEACTIVATED = "user_deactivated", "User deactivated"
        TOKEN_CREATED = "token_created", "Token created"
        TOKEN_REVOKED = "token_revoked", "Token revoked"
        API_KEY_CREATED = "api_key_created", "API key created"
        API_KEY_REVOKED = "api_key_revoked", "API key revoked"
        MEMBERSHIP_CREATED = "membership_created", "Member added"
        INVITATION_CREATED = "invitation_created", "Invitation created"
        INVITATION_ACCEPTED = "invitation_accepted", "Invitation accepted"
        INVITATION_REVOKED = "invitation_revoked", "Invitation revoked"
        ROLE_CHANGED = "role_changed", "Role changed"
        MEMBERSHIP_REMOVED = "membership_removed", "Member removed"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    user = models.ForeignKey(User, db_index=False, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    organization = models.ForeignKey(Organization, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    ip = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-created_at"]), models.Index(fields=["kind", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} at {self.created_at:%Y-%m-%d %H:%M:%S}"
