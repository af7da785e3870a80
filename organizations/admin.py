from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from organizations.models import ApiKey, Membership, Organization, SlackIntegration, User, UserToken


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "email", "time_zone", "is_staff", "is_active", "date_joined")
    list_filter = ("is_staff", "is_active", "time_zone")
    search_fields = ("username", "email", "first_name", "last_name")
    fieldsets = BaseUserAdmin.fieldsets + (
        ("Herald", {"fields": ("time_zone", "phone", "postal_code", "slack_user_id")}),
    )


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
    list_display = ("name", "prefix", "organization", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "organization__name")
    exclude = ("key_hash",)
    readonly_fields = ("prefix", "hash_prefix", "created_at", "last_used_at")
    list_select_related = ("organization",)
    raw_id_fields = ("organization", "created_by")

    def has_add_permission(self, request):
        return False  # keys are created through the API, where the secret is shown once


@admin.register(UserToken)
class UserTokenAdmin(HashPrefixMixin, admin.ModelAdmin):
    list_display = ("prefix", "user", "created_at", "last_used_at")
    search_fields = ("prefix", "user__username")
    exclude = ("key_hash",)
    readonly_fields = ("prefix", "hash_prefix", "created_at", "last_used_at")
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
