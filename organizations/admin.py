from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm
from django.db.models import Case, When

from organizations import services
from organizations.models import (ApiKey, Invitation, Membership, Organization, SecurityEvent, SlackIntegration,
                                  User, UserToken)


class PasswordChangeForm(AdminPasswordChangeForm):
    """The admin's "change password" goes through the service: tokens revoked, sockets closed, audited."""

    def save(self, commit=True):
        services.user_password_change(user=self.user, password=self.cleaned_data["password1"], via="admin")
        return self.user


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "email", "time_zone", "is_staff", "is_active", "date_joined")
    list_filter = ("is_staff", "is_active", "time_zone")
    search_fields = ("username", "email", "first_name", "last_name")
    fieldsets = BaseUserAdmin.fieldsets + (
        ("Herald", {"fields": ("time_zone", "phone", "postal_code", "slack_user_id")}),
    )
    change_password_form = PasswordChangeForm
    actions = ["deactivate"]

    @admin.action(description="Deactivate (revoke tokens, close open sockets)")
    def deactivate(self, request, queryset):
        for user in queryset:
            services.user_deactivate(user=user, by=request.user)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and "is_active" in form.changed_data and not obj.is_active:
            services.user_deactivate(user=obj, by=request.user)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ("user",)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "time_zone", "last_event_seq", "created_at")
    search_fields = ("name", "slug")
    list_filter = ("time_zone",)
    readonly_fields = ("last_event_seq", "created_at")
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "organization", "role", "created_at")
    list_filter = ("role",)
    search_fields = ("user__username", "user__email", "organization__name")
    raw_id_fields = ("user", "organization")
    list_select_related = ("user", "organization")


class HashPrefixMixin:
    """Stored hashes are shown by their first characters only: enough to tell rows apart, not enough to
    test a leaked key offline or to recognise one from the full digest."""

    HASH_SHOWN = 8

    @admin.display(description="key hash")
    def hash_prefix(self, obj) -> str:
        return f"{obj.key_hash[:self.HASH_SHOWN]}…" if obj.key_hash else ""


@admin.register(ApiKey)
class ApiKeyAdmin(HashPrefixMixin, admin.ModelAdmin):
    list_display = ("name", "prefix", "organization", "scopes", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "organization__name")
    exclude = ("key_hash",)
    readonly_fields = ("prefix", "hash_prefix", "scopes", "created_at", "last_used_at")
    list_select_related = ("organization",)
    raw_id_fields = ("organization", "created_by")

    def has_add_permission(self, request):
        return False  # keys are created through the API, where the secret is shown once


@admin.register(UserToken)
class UserTokenAdmin(HashPrefixMixin, admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "expires_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "user__username")
    exclude = ("key_hash", "auth_hash")
    readonly_fields = ("prefix", "hash_prefix", "created_at", "last_used_at", "expires_at")
    list_select_related = ("user",)

    def has_add_permission(self, request):
        return False


@admin.register(SlackIntegration)
class SlackIntegrationAdmin(admin.ModelAdmin):
    list_display = ("organization", "channel", "enabled", "updated_at")
    list_filter = ("enabled",)
    search_fields = ("organization__name", "channel")
    exclude = ("token_encrypted",)  # never shown, not even encrypted
    list_select_related = ("organization",)


@admin.register(Invitation)
class InvitationAdmin(HashPrefixMixin, admin.ModelAdmin):
    """Pending invitations first; accept happens only through the invitee's own request."""

    list_display = ("email", "organization", "role", "status", "created_at", "expires_at", "invited_by")
    list_filter = ("status", "role")
    search_fields = ("email", "organization__name")
    exclude = ("key_hash",)
    readonly_fields = ("prefix", "hash_prefix", "organization", "email", "role", "status", "invited_by",
                       "invited_by_api_key", "accepted_by", "created_at", "expires_at", "decided_at")
    list_select_related = ("organization", "invited_by")
    ordering = ("-id",)

    def get_queryset(self, request):
        # Pending ones first (the ones that still need a decision), then newest first.
        return super().get_queryset(request).order_by(
            Case(When(status=Invitation.Status.PENDING, then=0), default=1), "-id")

    def has_add_permission(self, request):
        return False


@admin.register(SecurityEvent)
class SecurityEventAdmin(admin.ModelAdmin):
    """The audit log: read-only."""

    list_display = ("created_at", "kind", "user", "organization", "api_key", "ip")
    list_filter = ("kind",)
    search_fields = ("user__username", "organization__name", "ip")
    list_select_related = ("user", "organization", "api_key")
    readonly_fields = ("created_at", "kind", "user", "organization", "api_key", "ip", "detail")
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
