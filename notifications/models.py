"""The org log, notifications (one per recipient), delivery streams (the ordering fence) and
delivery records."""
from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from notifications.categories import CATEGORY_NAMES
from notifications.kinds import EntryView
from organizations.models import Organization


class Channel(models.TextChoices):
    """The built-in channels' names, for code that means one of them. Which channels exist is
    configuration (settings.HERALD_CHANNELS), validated by a system check, not a CHECK."""

    INAPP = "inapp", "In-app + WebSocket"
    SLACK = "slack", "Slack"
    EMAIL = "email", "Email"


class LogEntry(models.Model):
    """One fact that notifies: an entry of its organization's log, written in the transaction of
    the change it reports (notifications.publish). `seq` is gapless per organization; every
    delivery stream reads the log in seq order. `audience` is who is notified."""

    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE, related_name="log_entries")
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=64)
    payload = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="+")
    actor_name = models.CharField(max_length=150, blank=True)
    # Who is notified: the user ids given to publish(), or, when it was given none, the members at
    # the time of the entry (a snapshot written with the entry), so a drain that runs later notifies
    # who was a member then, not who is now.
    audience = ArrayField(models.BigIntegerField(), default=list, blank=True)
    occurred_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "seq"], name="logentry_unique_org_seq"),
            models.CheckConstraint(condition=Q(seq__gt=0), name="logentry_seq_positive"),
        ]
        verbose_name_plural = "log entries"

    def __str__(self) -> str:
        return f"{self.organization_id}#{self.seq} {self.kind}"

    def view(self) -> EntryView:
        return EntryView(seq=self.seq, kind=self.kind, payload=self.payload, actor_name=self.actor_name)


class Notification(models.Model):
    # No database foreign keys (CASCADE is Django's, on delete): the in-app fan-out writes these rows
    # by the thousand from rows that exist (the entry's audience, its entry, its organization), and
    # three deferred FK checks per row were a third of Postgres' cost of a batch send's fan-out
    # (docs/benchmarks.md). `recipient` needs no index of its own: notif_recipient_recent leads with it;
    # nor `entry`: notification_unique_entry_recipient does.
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications",
                                  db_constraint=False, db_index=False)
    entry = models.ForeignKey(LogEntry, on_delete=models.CASCADE, null=True, blank=True,
                              related_name="notifications", db_constraint=False, db_index=False)
    seq = models.BigIntegerField(null=True, blank=True)
    kind = models.CharField(max_length=64)
    title = models.CharField(max_length=255)
    body = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Makes the in-app fan-out idempotent: a redelivered batch inserts nothing twice. Entry first:
            # it also serves the entry's cascade and the live backlog's (recipient, entries) lookup, and
            # the fan-out inserts in entry order, at the index's right edge.
            models.UniqueConstraint(fields=["entry", "recipient"], condition=Q(entry__isnull=False),
                                    name="notification_unique_entry_recipient"),
        ]
        indexes = [
            models.Index(fields=["recipient", "-id"], name="notif_recipient_recent"),
            models.Index(fields=["recipient"], condition=Q(read_at__isnull=True), name="notif_recipient_unread"),
        ]

    def __str__(self) -> str:
        return f"{self.recipient_id}: {self.title}"


class DeliveryStream(models.Model):
    """The cursor of one (organization, channel, destination): the ordering fence.

    A worker sends only while it holds this row's lock (SELECT ... FOR UPDATE SKIP LOCKED, so a
    killed worker's lock dies with its connection), sends strictly the events after
    `delivered_seq`, and advances the cursor in the same transaction that records the outcome.
    """

    class OnDeadLetter(models.TextChoices):
        SKIP = "skip", "Record and move on"
        HOLD = "hold", "Hold the stream"

    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE,
                                     related_name="delivery_streams")
    channel = models.CharField(max_length=32)
    destination = models.CharField(max_length=120, blank=True, default="")
    # Per-recipient channels: the member the destination belongs to (their email, phone, one of
    # their devices), so "has this member an active destination on this channel" is one indexed
    # lookup whatever the destination's form. None for organization-wide streams (Slack, inapp).
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True,
                             related_name="+")
    delivered_seq = models.BigIntegerField(default=0)
    head_attempts = models.PositiveIntegerField(default=0)
    head_since = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    on_dead_letter = models.CharField(max_length=8, choices=OnDeadLetter.choices, default=OnDeadLetter.SKIP)
    held = models.BooleanField(default=False)
    # False while the destination is gone or disabled (Slack turned off, preference off): not
    # kicked, not swept; kept so a send in flight and the stream's records are undisturbed.
    active = models.BooleanField(default=True)
    # A per-recipient stream that carries API sends only (tracked entries of its member), never
    # other log entries: made by a transactional send for a member who has not opted in to the
    # channel (email), or left by an opt-out. It rests (inactive) once caught up, so later log
    # entries neither kick nor sweep it, until a send needs it again (notifications.delivery.streams).
    sends_only = models.BooleanField(default=False, db_default=False)
    updated_at = models.DateTimeField(db_default=Now())  # set to Postgres' now() by the fence

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "channel", "destination"], name="stream_unique"),
            models.CheckConstraint(condition=Q(delivered_seq__gte=0), name="stream_seq_nonnegative"),
        ]
        indexes = [
            # The send API's fan-out: which recipients have an active stream on a channel.
            models.Index(fields=["organization", "channel", "user"], condition=Q(active=True),
                         name="stream_member_active"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.channel}/{self.destination or '-'} @{self.delivered_seq}"


class Delivery(models.Model):
    """One message to an external destination, covering events first_seq..last_seq (coalesced when >1)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        DEAD = "dead", "Dead letter"
        DISCARDED = "discarded", "Discarded"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    stream = models.ForeignKey(DeliveryStream, db_index=False, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=32)
    first_seq = models.BigIntegerField()
    last_seq = models.BigIntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(db_default=Now())  # the database's clock: the retry window counts from it
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    late = models.BooleanField(default=False)
    provider_ref = models.CharField(max_length=120, blank=True)
    # An attempt ended without knowing whether the provider got it (a timeout after sending):
    # the next attempt asks the channel to look it up first.
    verify_first = models.BooleanField(default=False)
    # The channel admitted it (e.g. counted it against the recipient's daily cap): never again.
    admitted = models.BooleanField(default=False)
    # The seqs of the range this destination gets, decided when the record was made (kind, audience
    # and the member's preferences then): every attempt carries the same entries even if a
    # preference changes meanwhile. NULL: decided from the entries alone (older records).
    seqs = ArrayField(models.BigIntegerField(), null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(last_seq__gte=models.F("first_seq")), name="delivery_range_valid"),
            models.CheckConstraint(condition=Q(status__in=["pending", "sent", "dead", "discarded"]),
                                   name="delivery_status_valid"),
        ]
        indexes = [
            models.Index(fields=["stream", "first_seq"]),
            models.Index(fields=["status", "created_at"], condition=Q(status="dead"), name="delivery_dead"),
            # The fence's head lookup and the peek's "is a head pending" (a stream's sent history grows).
            models.Index(fields=["stream", "first_seq"], condition=Q(status="pending"), name="delivery_pending"),
            # Provider status callbacks name a message by its reference: only the channels whose
            # providers post them (SMS, WhatsApp) pay for this index.
            models.Index(fields=["channel", "provider_ref"], condition=Q(channel__in=["sms", "whatsapp"]),
                         name="delivery_provider_ref"),
        ]
        verbose_name_plural = "deliveries"


class EarlyStatusReport(models.Model):
    """A provider's status report that named a message Herald has no record of yet: the provider
    may call back before the fence's transaction that records the reference commits (it sends,
    then commits). Held here and applied by notifications.tasks.sweep_early_status_reports once
    the reference is known; dropped after EARLY_STATUS_REPORT_WAIT_SECONDS (then it was not ours)."""

    channel = models.CharField(max_length=32)
    provider_ref = models.CharField(max_length=120)
    state = models.CharField(max_length=12)
    reported_at = models.DateTimeField(null=True, blank=True)  # the provider's time, if it said
    error = models.TextField(blank=True)
    received_at = models.DateTimeField(db_default=Now())

    class Meta:
        indexes = [models.Index(fields=["received_at"], name="early_report_received")]


# --- email ---------------------------------------------------------------------------------------
# Preferences, the durable outbox of account emails, and the record of emails held back by the
# per-recipient daily limit. Owned by notifications.email / notifications.preferences.


class PreferenceCategory(models.TextChoices):
    TRACKER_EVENT = "tracker_event", "Tracker starts and stops"
    PROFILE_UPDATED = "profile_updated", "Profile change confirmations"


class NotificationPreference(models.Model):
    """A member's explicit choice for one (channel, category), per organization or, with
    organization NULL, for every organization. No row means the organization's default
    (OrganizationPreference), else the built-in one (notifications.policy.BUILTIN_OFF: tracker
    emails are off, everything else on)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preferences")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, null=True, blank=True,
                                     related_name="+")
    channel = models.CharField(max_length=32)
    category = models.CharField(max_length=32)  # one of notifications.categories (a CHECK)
    enabled = models.BooleanField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organization", "channel", "category"],
                                    condition=Q(organization__isnull=False), name="preference_unique_org"),
            models.UniqueConstraint(fields=["user", "channel", "category"],
                                    condition=Q(organization__isnull=True), name="preference_unique_global"),
            models.CheckConstraint(condition=Q(category__in=list(CATEGORY_NAMES)), name="preference_category_valid"),
        ]

    def __str__(self) -> str:
        scope = self.organization_id or "all"
        return f"{self.user_id}/{scope}/{self.channel}/{self.category}={'on' if self.enabled else 'off'}"


class OrganizationPreference(models.Model):
    """An organization's default for one (channel, category), set by its owners and admins: what
    its members get unless they chose otherwise (notifications.policy resolves the order)."""

    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE, related_name="+")
    channel = models.CharField(max_length=32)
    category = models.CharField(max_length=32)
    enabled = models.BooleanField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "channel", "category"], name="orgpreference_unique"),
            models.CheckConstraint(condition=Q(category__in=list(CATEGORY_NAMES)), name="orgpreference_category_valid"),
        ]

    def __str__(self) -> str:
        return f"org {self.organization_id}/{self.channel}/{self.category}={'on' if self.enabled else 'off'}"


class MemberNotificationSettings(models.Model):
    """A member's quiet hours (local times in User.time_zone; start > end wraps midnight; both NULL:
    none) and their own per-channel daily caps ({channel: n}, bounded by HERALD_DAILY_CAP_MAX)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True,
                                related_name="notification_settings")
    quiet_hours_start = models.TimeField(null=True, blank=True)
    quiet_hours_end = models.TimeField(null=True, blank=True)
    daily_caps = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(quiet_hours_start__isnull=True, quiet_hours_end__isnull=True)
                           | (Q(quiet_hours_start__isnull=False, quiet_hours_end__isnull=False)
                              & ~Q(quiet_hours_start=models.F("quiet_hours_end")))),
                name="membersettings_quiet_hours_valid"),
        ]
        verbose_name_plural = "member notification settings"

    def __str__(self) -> str:
        return f"{self.user_id}: quiet {self.quiet_hours_start}-{self.quiet_hours_end}, caps {self.daily_caps}"


class OutboundEmail(models.Model):
    """An account email (e.g. a profile change confirmation) waiting in Postgres until the email
    API limit grants it a slot. Drained FOR UPDATE SKIP LOCKED by any number of workers."""

    class Kind(models.TextChoices):
        PROFILE_UPDATED = "profile_updated", "Profile updated"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DEFERRED = "deferred", "Deferred (recipient daily limit)"
        SENT = "sent", "Sent"
        DEAD = "dead", "Dead letter"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="outbound_emails")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    to_email = models.EmailField(max_length=254)
    subject = models.CharField(max_length=255)
    body_text = models.TextField()
    body_html = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField()  # set by the service; deferrals and backoff push it on
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    provider_ref = models.CharField(max_length=200, blank=True)
    admitted = models.BooleanField(default=False)  # counted against the recipient's daily cap

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(status__in=["pending", "deferred", "sent", "dead"]),
                                   name="outbound_status_valid"),
            models.CheckConstraint(condition=Q(kind__in=["profile_updated"]), name="outbound_kind_valid"),
        ]
        indexes = [
            # The drain: due rows, oldest first.
            models.Index(fields=["next_attempt_at", "id"], condition=Q(status__in=["pending", "deferred"]),
                         name="outbound_due"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {self.to_email} ({self.status})"


class EmailDeferral(models.Model):
    """An email held back by the per-recipient daily limit: recorded, and sent when the limit frees
    (tracker events as one digest covering everything deferred). Open while released_at is NULL."""

    class Reason(models.TextChoices):
        RECIPIENT_DAILY_LIMIT = "recipient_daily_limit", "Recipient daily limit"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    category = models.CharField(max_length=32)  # the category of the run's first entry
    reason = models.CharField(max_length=32, choices=Reason.choices, default=Reason.RECIPIENT_DAILY_LIMIT)
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    outbound = models.ForeignKey(OutboundEmail, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    deferred_at = models.DateTimeField(auto_now_add=True)
    release_at = models.DateTimeField()
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(delivery__isnull=False, outbound__isnull=True)
                           | Q(delivery__isnull=True, outbound__isnull=False)),
                name="deferral_one_target"),
            models.UniqueConstraint(fields=["delivery"], condition=Q(released_at__isnull=True),
                                    name="deferral_open_delivery"),
            models.UniqueConstraint(fields=["outbound"], condition=Q(released_at__isnull=True),
                                    name="deferral_open_outbound"),
        ]
        indexes = [
            models.Index(fields=["release_at"], condition=Q(released_at__isnull=True), name="deferral_open_due"),
        ]

    def __str__(self) -> str:
        return f"{self.category} for {self.user_id} until {self.release_at:%Y-%m-%d %H:%M} ({self.reason})"


class DailySendCount(models.Model):
    """Messages sent to one user on one channel on one calendar day of the user's time zone: the
    per-recipient cap, counted durably (a Redis restart hands out nothing more)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, db_index=False, on_delete=models.CASCADE, related_name="+")
    channel = models.CharField(max_length=32)
    day = models.DateField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "channel", "day"], name="dailysend_unique")]

    def __str__(self) -> str:
        return f"{self.user_id}/{self.channel}/{self.day}: {self.count}"


class ChannelDestination(models.Model):
    """A destination an organization configures for a channel that has several per organization
    (webhook endpoints, ...): the channel's stream destination is str(id). `secret_encrypted` is
    Fernet-encrypted (organizations.secrets); `options` are the channel's own."""

    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE,
                                     related_name="channel_destinations")
    channel = models.CharField(max_length=32)
    address = models.CharField(max_length=2000)
    secret_encrypted = models.TextField(blank=True)
    options = models.JSONField(default=dict, blank=True)
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        indexes = [models.Index(fields=["organization", "channel"], name="destination_org_channel")]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.channel}: {self.address[:60]}"


# --- templates -----------------------------------------------------------------------------------


class NotificationTemplate(models.Model):
    """What an organization sends for one kind (the send API's template key) in one locale: a part
    per channel ({channel: {field: template text}}), rendered in a sandbox by
    notifications.templating with the declared `variables` only. Validated there on every save."""

    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE,
                                     related_name="notification_templates")
    kind = models.CharField(max_length=64)
    locale = models.CharField(max_length=16)
    category = models.CharField(max_length=32)
    description = models.CharField(max_length=200, blank=True)
    variables = models.JSONField(default=list, blank=True)
    parts = models.JSONField(default=dict)
    version = models.PositiveIntegerField(default=1)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "kind", "locale"], name="template_unique_kind_locale"),
            models.CheckConstraint(condition=Q(category__in=list(CATEGORY_NAMES)), name="template_category_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.kind}/{self.locale}"


class Device(models.Model):
    """A member's device registered for push notifications (notifications.channels.push): the
    push channel's stream destination is str(id), one stream per device in each of the member's
    organizations. A token the provider reports unregistered is deleted (pruned)."""

    class Platform(models.TextChoices):
        ANDROID = "android", "Android"
        IOS = "ios", "iOS"
        WEB = "web", "Web"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, db_index=False, on_delete=models.CASCADE, related_name="devices")
    token = models.CharField(max_length=512)
    platform = models.CharField(max_length=16, choices=Platform.choices)
    name = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    last_seen_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["token"], name="device_unique_token"),
            models.CheckConstraint(condition=Q(platform__in=["android", "ios", "web"]), name="device_platform_valid"),
        ]
        indexes = [models.Index(fields=["user", "id"], name="device_user")]

    def __str__(self) -> str:
        return f"{self.user_id}/{self.platform}/{self.token[:12]}…"


# --- the send API ----------------------------------------------------------------------------------
# A send (POST /api/v1/send) is one entry of kind "message" in the org log (a scheduled send gets
# its entry when it falls due), plus one SendDelivery row per recipient x channel: the status of
# each, written set-based, updated by the in-app fan-out and the fence. Owned by notifications.send.


class Send(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued (in the log)"
        SCHEDULED = "scheduled", "Scheduled (or a promotional send held back by a backlog)"
        SHED = "shed", "Shed (promotional, past the backlog limit)"
        CANCELLED = "cancelled", "Cancelled"

    class Priority(models.TextChoices):
        TRANSACTIONAL = "transactional", "Transactional"
        PROMOTIONAL = "promotional", "Promotional"

    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE, related_name="sends")
    kind = models.CharField(max_length=100)  # the template key
    category = models.CharField(max_length=32, blank=True)
    data = models.JSONField(default=dict, blank=True)
    # The log entry's payload, templates rendered at acceptance ({send_id, kind, parts, ...}): a
    # scheduled send publishes it when it falls due.
    payload = models.JSONField(default=dict, blank=True)
    channels = ArrayField(models.CharField(max_length=32), default=list)
    priority = models.CharField(max_length=16, choices=Priority.choices, default=Priority.TRANSACTIONAL)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    ordering_key = models.CharField(max_length=128, blank=True)
    send_at = models.DateTimeField(null=True, blank=True)  # as asked
    deliver_at_local = models.CharField(max_length=32, blank=True)  # as asked ("HH:MM", optional date)
    due_at = models.DateTimeField(null=True, blank=True)  # the next time a scheduled part falls due
    entry = models.ForeignKey(LogEntry, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    recipients = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    api_key = models.ForeignKey("organizations.ApiKey", on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="+")
    created_at = models.DateTimeField(db_default=Now())
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(status__in=["queued", "scheduled", "shed", "cancelled"]),
                                   name="send_status_valid"),
            models.CheckConstraint(condition=Q(priority__in=["transactional", "promotional"]),
                                   name="send_priority_valid"),
        ]
        indexes = [
            models.Index(fields=["organization", "-id"], name="send_org_recent"),
            # Beat's dispatcher: scheduled sends by due time.
            models.Index(fields=["due_at"], condition=Q(status="scheduled"), name="send_due"),
        ]

    def __str__(self) -> str:
        return f"send {self.pk} {self.kind} ({self.status})"


SEND_DELIVERY_STATES = ["queued", "scheduled", "sent", "delivered", "failed", "dead", "suppressed", "deferred",
                        "shed", "cancelled", "digested"]


class SendDelivery(models.Model):
    """The state of one recipient x channel of a send. Unique per (send, user, channel): a replayed
    request, a retried task or a redelivered message never makes a second one, and the in-app
    fan-out and the fence move a row out of `queued` once (UPDATE ... WHERE state IN ...)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        SCHEDULED = "scheduled", "Scheduled"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered (provider callback)"
        FAILED = "failed", "Failed (retrying)"
        DEAD = "dead", "Dead letter"
        SUPPRESSED = "suppressed", "Suppressed by preference"
        DEFERRED = "deferred", "Deferred by a cap"
        SHED = "shed", "Shed under overload"
        CANCELLED = "cancelled", "Cancelled"
        DIGESTED = "digested", "Held for the member's digest"

    # States from which a row may still go out; DELETE /send/{id} cancels these (and `digested` rows
    # whose digest has not gone out: notifications.send.services.send_cancel).
    PENDING = ("queued", "scheduled", "deferred", "failed")

    # A send writes one row per recipient x channel (100,000 for a topic send): none of its foreign
    # keys is a database constraint. organization, user and entry are checked when the rows are
    # written (members of the send's organization, its own entry); `send` is the row written just
    # before them in the same transaction. A constraint would cost a lookup per row and, deferred as
    # Django makes them, a FOR KEY SHARE check per row at COMMIT (~19 ms for a batch of 200 sends;
    # migration 0021). A send's rows still go with it through the ORM: on_delete=CASCADE is Django's
    # collector, not the database's (a raw DELETE of sends would leave their rows behind).
    id = models.BigAutoField(primary_key=True)
    # send and entry need no index of their own: senddelivery_unique and senddelivery_entry lead with them.
    # Nor organization and user: no query reads the rows by either alone (the partial indexes below
    # serve an organization's failures and a member's scheduled rows; DO_NOTHING: no cascade reads
    # them), and every index costs an insert per row when it is written. No index has `state`,
    # `sent_at` or `updated_at` in its key or predicate: the claim queued -> sent writes only those,
    # so it is a HOT update (no index entry; the table's fillfactor of 50, migration 0020, leaves each
    # page room for a second version of its rows).
    send = models.ForeignKey(Send, on_delete=models.CASCADE, related_name="deliveries",
                             db_constraint=False, db_index=False)
    organization = models.ForeignKey(Organization, on_delete=models.DO_NOTHING, related_name="+",
                                     db_constraint=False, db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, related_name="+",
                             db_constraint=False, db_index=False)
    channel = models.CharField(max_length=32)
    locale = models.CharField(max_length=16, default="en")
    entry = models.ForeignKey(LogEntry, on_delete=models.DO_NOTHING, null=True, blank=True, related_name="+",
                              db_constraint=False, db_index=False)
    state = models.CharField(max_length=12, choices=State.choices, default=State.QUEUED)
    due_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())  # when the state last changed
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # When the row last became failed or dead (kept when it moves on: read failures with `state`).
    failed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [
            # Also serves GET /send/{id} (its rows by channel) and the deliveries list.
            models.UniqueConstraint(fields=["send", "channel", "user"], name="senddelivery_unique"),
            models.CheckConstraint(condition=Q(state__in=SEND_DELIVERY_STATES), name="senddelivery_state_valid"),
        ]
        indexes = [
            # The fan-out and the fence: the rows of a run's entries for one channel (and user).
            models.Index(fields=["entry", "channel", "user"], name="senddelivery_entry"),
            # "Failures of an organization in the last hour" (notifications.send.selectors.send_failures).
            models.Index(fields=["organization", "failed_at"], condition=Q(failed_at__isnull=False),
                         name="senddelivery_org_failed"),
            # A member who changes zone: their rows not yet due (notifications.send.schedule). Rows that
            # went out keep their due time, in the past: the range on due_at skips them.
            models.Index(fields=["user", "due_at"], condition=Q(due_at__isnull=False), name="senddelivery_user_due"),
        ]
        verbose_name_plural = "send deliveries"

    def __str__(self) -> str:
        return f"send {self.send_id} -> {self.user_id}/{self.channel}: {self.state}"


class IdempotencyKey(models.Model):
    """An Idempotency-Key of an organization (Stripe's rules): written in the transaction of the
    request it answers, so it exists exactly when that request's effects do; replayed for 24 h."""

    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)  # sha256 of method, path and canonical body
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(db_default=Now())
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "key"], name="idempotency_unique")]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expiry")]

    def __str__(self) -> str:
        return f"{self.organization_id}:{self.key}"


# --- digests -------------------------------------------------------------------------------------------
# A member's choice to get one kind as a digest per window (DigestSetting); the entries held for it,
# recorded when they are published (DigestItem); the digest that went out (Digest, unique per member x
# kind x window: exactly once). Owned by notifications.digests.


class DigestSetting(models.Model):
    class Frequency(models.TextChoices):
        HOURLY = "hourly", "Hourly"
        DAILY = "daily", "Daily at a local time"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    organization = models.ForeignKey(Organization, db_index=False, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=100)  # a log kind ("tracker.event") or a send's template kind
    frequency = models.CharField(max_length=8, choices=Frequency.choices)
    daily_at = models.TimeField(null=True, blank=True)  # in the member's time zone
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "kind", "user"], name="digestsetting_unique"),
            models.CheckConstraint(condition=Q(frequency="hourly", daily_at__isnull=True)
                                   | Q(frequency="daily", daily_at__isnull=False), name="digestsetting_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}/{self.organization_id}/{self.kind}: {self.frequency} {self.daily_at or ''}"


class Digest(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, db_index=False, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=100)
    window_end = models.DateTimeField()
    entry = models.ForeignKey(LogEntry, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    items = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization", "kind", "window_end"],
                                               name="digest_unique_window")]

    def __str__(self) -> str:
        return f"digest {self.user_id}/{self.kind} @{self.window_end:%Y-%m-%d %H:%M} ({self.items})"


class DigestItem(models.Model):
    id = models.BigAutoField(primary_key=True)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    entry = models.ForeignKey(LogEntry, db_index=False, on_delete=models.CASCADE, related_name="+")
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=100)
    due_at = models.DateTimeField()  # the end of the window it belongs to
    digest = models.ForeignKey(Digest, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["entry", "user"], name="digestitem_unique")]
        indexes = [models.Index(fields=["due_at"], condition=Q(digest__isnull=True), name="digestitem_due")]

    def __str__(self) -> str:
        return f"{self.user_id}/{self.kind} #{self.seq} due {self.due_at:%Y-%m-%d %H:%M}"
