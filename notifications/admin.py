from django.conf import settings
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.utils import timezone

from config.errors import ApplicationError
from notifications import services, templating
from notifications.email import outbound_kick
from notifications.breaker import CircuitBreaker
from notifications.models import (ChannelDestination, DailySendCount, Delivery, DeliveryStream, Device, Digest,
                                  DigestItem, DigestSetting, EarlyStatusReport, EmailDeferral,
                                  IdempotencyKey, LogEntry, MemberNotificationSettings, Notification,
                                  NotificationPreference, NotificationTemplate, OrganizationPreference, OutboundEmail,
                                  Send, SendDelivery)


@admin.register(LogEntry)
class LogEntryAdmin(admin.ModelAdmin):
    """The org log is append-only: staff read it, nobody edits it here."""

    list_display = ("organization", "seq", "kind", "actor_name", "occurred_at")
    list_filter = ("kind",)
    search_fields = ("organization__name", "actor_name")
    list_select_related = ("organization",)
    raw_id_fields = ("organization", "actor")
    ordering = ("-id",)

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("title", "recipient", "organization", "seq", "kind", "created_at", "read_at")
    list_filter = ("kind", ("read_at", admin.EmptyFieldListFilter))
    search_fields = ("title", "recipient__username")
    list_select_related = ("recipient", "organization")
    raw_id_fields = ("recipient", "organization", "entry")
    ordering = ("-id",)


@admin.register(DeliveryStream)
class DeliveryStreamAdmin(admin.ModelAdmin):
    list_display = ("organization", "channel", "destination", "delivered_seq", "head_attempts", "held", "active",
                    "sends_only", "next_attempt_at", "updated_at")
    list_filter = ("channel", "held", "active", "sends_only", "on_dead_letter")
    search_fields = ("organization__name", "destination")
    list_select_related = ("organization",)
    readonly_fields = ("delivered_seq", "head_attempts", "head_since", "updated_at")
    actions = ["release_hold"]

    def changelist_view(self, request, extra_context=None):
        breakers = []
        for name in settings.HERALD_BREAKERS:
            try:
                breakers.append({"name": name, **CircuitBreaker(name).state()})
            except Exception as exc:  # Redis down: say so rather than fail the page
                breakers.append({"name": name, "state": f"unknown ({exc.__class__.__name__})"})
        return super().changelist_view(request, {**(extra_context or {}), "breakers": breakers})

    @admin.action(description="Release hold and resume delivery")
    def release_hold(self, request, queryset):
        for stream in queryset.filter(held=True):
            services.stream_release_hold(stream=stream)
        messages.success(request, "Streams resumed.")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("organization", "channel", "first_seq", "last_seq", "status", "attempts", "created_at",
                    "sent_at", "late", "short_error")
    list_filter = ("status", "channel", "late")
    search_fields = ("organization__name", "last_error", "provider_ref")
    list_select_related = ("organization",)
    readonly_fields = ("stream", "first_seq", "last_seq", "attempts", "created_at", "sent_at", "last_error",
                       "provider_ref")
    ordering = ("-id",)
    actions = ["requeue", "discard"]

    @admin.action(description="Requeue selected dead letters (sent late, or resumes a held stream)")
    def requeue(self, request, queryset):
        done = 0
        for delivery in queryset.filter(status=Delivery.Status.DEAD):
            services.delivery_requeue(delivery=delivery)
            done += 1
        messages.success(request, f"{done} dead letter(s) requeued.")

    @admin.action(description="Discard selected dead letters")
    def discard(self, request, queryset):
        done = 0
        for delivery in queryset.filter(status=Delivery.Status.DEAD):
            services.delivery_discard(delivery=delivery)
            done += 1
        messages.success(request, f"{done} dead letter(s) discarded.")

    @admin.display(description="last error")
    def short_error(self, obj):
        return (obj.last_error or "")[:80]


@admin.register(NotificationPreference)
class NotificationPreferenceAdmin(admin.ModelAdmin):
    list_display = ("user", "organization", "channel", "category", "enabled", "updated_at")
    list_filter = ("channel", "category", "enabled")
    search_fields = ("user__username", "user__email", "organization__name")
    list_select_related = ("user", "organization")
    raw_id_fields = ("user", "organization")


@admin.register(OrganizationPreference)
class OrganizationPreferenceAdmin(admin.ModelAdmin):
    """An organization's defaults for its members (a transactional category stays on whatever this says)."""

    list_display = ("organization", "channel", "category", "enabled", "updated_at")
    list_filter = ("channel", "category", "enabled")
    search_fields = ("organization__name",)
    list_select_related = ("organization",)
    raw_id_fields = ("organization",)


@admin.register(MemberNotificationSettings)
class MemberNotificationSettingsAdmin(admin.ModelAdmin):
    list_display = ("user", "quiet_hours_start", "quiet_hours_end", "daily_caps", "updated_at")
    search_fields = ("user__username", "user__email")
    list_select_related = ("user",)
    raw_id_fields = ("user",)


@admin.register(DigestSetting)
class DigestSettingAdmin(admin.ModelAdmin):
    list_display = ("user", "organization", "kind", "frequency", "daily_at", "updated_at")
    list_filter = ("frequency",)
    search_fields = ("user__username", "user__email", "organization__name", "kind")
    list_select_related = ("user", "organization")
    raw_id_fields = ("user", "organization")


@admin.register(Digest)
class DigestAdmin(admin.ModelAdmin):
    """Digests that went out (one per member x kind x window); read-only."""

    list_display = ("user", "organization", "kind", "window_end", "items", "entry", "created_at")
    search_fields = ("user__username", "kind")
    list_select_related = ("user", "organization")
    raw_id_fields = ("user", "organization", "entry")

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DigestItem)
class DigestItemAdmin(admin.ModelAdmin):
    """Entries held for a member's digest; digest empty until their window's digest goes out."""

    list_display = ("user", "organization", "kind", "seq", "due_at", "digest")
    search_fields = ("user__username", "kind")
    list_select_related = ("user", "organization")
    raw_id_fields = ("user", "organization", "entry", "digest")

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(EarlyStatusReport)
class EarlyStatusReportAdmin(admin.ModelAdmin):
    """Provider status reports held because they named a message not recorded yet (applied by
    sweep_early_status_reports once it is; dropped after EARLY_STATUS_REPORT_WAIT_SECONDS)."""

    list_display = ("channel", "provider_ref", "state", "reported_at", "received_at")
    list_filter = ("channel", "state")
    search_fields = ("provider_ref",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(OutboundEmail)
class OutboundEmailAdmin(admin.ModelAdmin):
    list_display = ("kind", "to_email", "status", "attempts", "created_at", "next_attempt_at", "sent_at",
                    "provider_ref")
    list_filter = ("status", "kind")
    search_fields = ("to_email", "user__username", "subject", "last_error")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    readonly_fields = ("attempts", "created_at", "sent_at", "last_error", "provider_ref")
    ordering = ("-id",)
    actions = ["requeue"]

    @admin.action(description="Requeue selected dead emails")
    def requeue(self, request, queryset):
        done = queryset.filter(status=OutboundEmail.Status.DEAD).update(
            status=OutboundEmail.Status.PENDING, attempts=0, next_attempt_at=timezone.now())
        outbound_kick()
        messages.success(request, f"{done} email(s) requeued.")


@admin.register(EmailDeferral)
class EmailDeferralAdmin(admin.ModelAdmin):
    list_display = ("user", "category", "reason", "deferred_at", "release_at", "released_at")
    list_filter = ("category", "reason", ("released_at", admin.EmptyFieldListFilter))
    search_fields = ("user__username", "user__email")
    list_select_related = ("user",)
    raw_id_fields = ("user", "delivery", "outbound")
    ordering = ("-id",)


@admin.register(DailySendCount)
class DailySendCountAdmin(admin.ModelAdmin):
    list_display = ("user", "channel", "day", "count")
    list_filter = ("channel", "day")
    search_fields = ("user__username", "user__email")
    list_select_related = ("user",)
    raw_id_fields = ("user",)


@admin.register(ChannelDestination)
class ChannelDestinationAdmin(admin.ModelAdmin):
    """Per-organization destinations (webhook endpoints, ...). The secret is never shown."""

    list_display = ("organization", "channel", "address", "enabled", "created_at")
    list_filter = ("channel", "enabled")
    search_fields = ("organization__name", "address", "description")
    list_select_related = ("organization",)
    raw_id_fields = ("organization",)
    exclude = ("secret_encrypted",)


class NotificationTemplateForm(forms.ModelForm):
    class Meta:
        model = NotificationTemplate
        fields = ["organization", "kind", "locale", "category", "description", "variables", "parts"]

    def clean(self):
        """The API's validation (syntax, declared variables, sandbox rules), with its message."""
        cleaned = super().clean()
        try:
            cleaned.update(templating.template_validate(
                kind=cleaned.get("kind", ""), locale=cleaned.get("locale", ""), category=cleaned.get("category", ""),
                variables=cleaned.get("variables") or [], parts=cleaned.get("parts") or {}))
        except ApplicationError as exc:
            raise ValidationError(f"{exc.message} ({exc.code})") from exc
        return cleaned


@admin.register(NotificationTemplate)
class NotificationTemplateAdmin(admin.ModelAdmin):
    form = NotificationTemplateForm
    list_display = ("organization", "kind", "locale", "category", "version", "updated_at")
    list_filter = ("category", "locale")
    search_fields = ("organization__name", "kind", "description")
    list_select_related = ("organization",)
    raw_id_fields = ("organization",)
    ordering = ("organization", "kind", "locale")

    def save_model(self, request, obj, form, change):
        fields = {name: form.cleaned_data[name] for name in ("kind", "locale", "category", "variables", "parts")}
        if change:
            templating.template_update(template=obj, description=form.cleaned_data["description"], **fields)
        else:
            created = templating.template_create(organization=form.cleaned_data["organization"],
                                                 description=form.cleaned_data["description"],
                                                 created_by=request.user, **fields)
            obj.pk = created.pk


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    """Members' push devices (notifications.channels.push). The token is shown by its end only."""

    list_display = ("user", "platform", "name", "token_hint", "created_at", "last_seen_at")
    list_filter = ("platform",)
    search_fields = ("user__username", "name")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    exclude = ("token",)
    readonly_fields = ("token_hint", "created_at", "last_seen_at")

    @admin.display(description="token")
    def token_hint(self, obj) -> str:
        return f"…{obj.token[-6:]}" if obj.token else ""


# --- the send API ---------------------------------------------------------------------------------

@admin.register(Send)
class SendAdmin(admin.ModelAdmin):
    """Sends are written by the API; staff read them (and their status rows)."""

    list_display = ("id", "organization", "kind", "priority", "status", "recipients", "created_at", "due_at")
    list_filter = ("status", "priority")
    search_fields = ("kind", "organization__name", "ordering_key")
    list_select_related = ("organization",)
    raw_id_fields = ("organization", "entry", "created_by", "api_key")
    ordering = ("-id",)

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False


@admin.register(SendDelivery)
class SendDeliveryAdmin(admin.ModelAdmin):
    list_display = ("send", "user", "channel", "state", "updated_at", "error")
    list_filter = ("state", "channel")
    list_select_related = ("user",)
    raw_id_fields = ("send", "organization", "user", "entry")
    ordering = ("-id",)
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(admin.ModelAdmin):
    list_display = ("organization", "key", "status_code", "created_at", "expires_at")
    search_fields = ("key",)
    list_select_related = ("organization",)
    raw_id_fields = ("organization",)
    ordering = ("-id",)

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False
