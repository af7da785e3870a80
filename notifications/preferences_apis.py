"""REST endpoints for notification preferences: the member's (GET|PUT /api/v1/me/preferences) and an
organization's defaults for its members (GET|PUT /api/v1/orgs/{id}/preferences, admins write)."""
from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import StrictSerializer
from notifications import preferences
from notifications.categories import CATEGORY_NAMES, template_categories
from organizations.apis import require_user
from organizations.selectors import organization_get_for_user

CHANNEL_CHOICES = preferences.preference_channels()
SOURCES = ["default", "organization_default", "global", "organization", "required"]


class PreferenceOutput(serializers.Serializer):
    organization_id = serializers.IntegerField(allow_null=True, help_text="null: every organization of yours")
    channel = serializers.CharField()
    category = serializers.CharField()
    enabled = serializers.BooleanField()
    source = serializers.ChoiceField(choices=SOURCES, help_text="Where the value comes from")
    locked = serializers.BooleanField(help_text="Always sent; cannot be turned off")


class CategoryOutput(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()
    transactional = serializers.BooleanField(help_text="Always sent, never held; cannot be turned off")
    promotional = serializers.BooleanField(help_text="Held during quiet hours")


class QuietHoursOutput(serializers.Serializer):
    start = serializers.TimeField(format="%H:%M", allow_null=True)
    end = serializers.TimeField(format="%H:%M", allow_null=True)
    time_zone = serializers.CharField(help_text="The member's time zone (PATCH /me changes it)")


class DailyCapOutput(serializers.Serializer):
    channel = serializers.CharField()
    limit = serializers.IntegerField(help_text="Messages per calendar day in your time zone")
    source = serializers.ChoiceField(choices=["default", "member"])


class DigestOutput(serializers.Serializer):
    organization_id = serializers.IntegerField()
    kind = serializers.CharField(help_text="A log kind (tracker.event, comment.reply, report.ready) or a send's kind")
    window = serializers.ChoiceField(choices=["hourly", "daily"], source="frequency")
    at = serializers.TimeField(format="%H:%M", allow_null=True, source="daily_at",
                               help_text="Daily: the local time (your time zone) it goes out")


class PreferenceListOutput(serializers.Serializer):
    preferences = PreferenceOutput(many=True, help_text="Email: tracker events and profile confirmations")
    channels = serializers.ListField(child=serializers.CharField())
    categories = CategoryOutput(many=True)
    matrix = PreferenceOutput(many=True, help_text="Every category x channel, globally and per organization")
    quiet_hours = QuietHoursOutput()
    daily_caps = DailyCapOutput(many=True)
    daily_cap_max = serializers.IntegerField()
    digests = DigestOutput(many=True, help_text="Kinds you get as one message per window")


class PreferenceInput(StrictSerializer):
    organization_id = serializers.IntegerField(required=False, allow_null=True, default=None,
                                               help_text="Omit or null: every organization of yours")
    channel = serializers.ChoiceField(choices=CHANNEL_CHOICES, default="email")
    category = serializers.ChoiceField(choices=list(CATEGORY_NAMES))
    enabled = serializers.BooleanField()


class DigestInput(StrictSerializer):
    organization_id = serializers.IntegerField()
    kind = serializers.CharField(max_length=100)
    window = serializers.ChoiceField(choices=["hourly", "daily", "off"])
    at = serializers.TimeField(required=False, allow_null=True, default=None,
                               help_text="Daily only: HH:MM in your time zone")


class QuietHoursInput(StrictSerializer):
    start = serializers.TimeField(allow_null=True, help_text="Local time (HH:MM); null with end: none")
    end = serializers.TimeField(allow_null=True, help_text="Local time; before start: wraps midnight")


def _output(user) -> dict:
    overview = preferences.preference_overview(user=user)
    row = overview.settings
    return PreferenceListOutput({
        "preferences": overview.preferences,
        "channels": CHANNEL_CHOICES,
        "categories": template_categories(),
        "matrix": overview.matrix,
        "quiet_hours": {"start": row.quiet_hours_start if row else None, "end": row.quiet_hours_end if row else None,
                        "time_zone": user.time_zone or "UTC"},
        "daily_caps": preferences.member_daily_caps(settings_row=row),
        "daily_cap_max": settings.HERALD_DAILY_CAP_MAX,
        "digests": overview.digests,
    }).data


class PreferencesApi(APIView):
    class Input(StrictSerializer):
        preferences = PreferenceInput(many=True, allow_empty=False, max_length=1000, required=False)
        quiet_hours = QuietHoursInput(required=False)
        daily_caps = serializers.DictField(
            child=serializers.IntegerField(min_value=0, max_value=settings.HERALD_DAILY_CAP_MAX, allow_null=True),
            required=False, help_text="{channel: messages per day, or null for the default}")
        digests = DigestInput(many=True, required=False, max_length=100)

    @extend_schema(responses=PreferenceListOutput)
    def get(self, request):
        return Response(_output(require_user(request)))

    @extend_schema(request=Input, responses=PreferenceListOutput)
    def put(self, request):
        """Set the given preferences, quiet hours, daily caps and digests (the others keep their values);
        answers with all of them. All or nothing."""
        user = require_user(request)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        with transaction.atomic():
            for item in values.get("preferences", []):
                organization = None
                if item["organization_id"] is not None:
                    organization = organization_get_for_user(user=user, id=item["organization_id"])
                preferences.preference_set(user=user, organization=organization, channel=item["channel"],
                                           category=item["category"], enabled=item["enabled"])
            if "quiet_hours" in values:
                preferences.member_quiet_hours_set(user=user, start=values["quiet_hours"]["start"],
                                                   end=values["quiet_hours"]["end"])
            if "daily_caps" in values:
                preferences.member_daily_caps_set(user=user, caps=values["daily_caps"])
            for item in values.get("digests", []):
                organization = organization_get_for_user(user=user, id=item["organization_id"])
                preferences.digest_set(user=user, organization=organization, kind=item["kind"],
                                       window=item["window"], at=item["at"])
        return Response(_output(user))


class OrganizationPreferenceOutput(serializers.Serializer):
    channel = serializers.CharField()
    category = serializers.CharField()
    enabled = serializers.BooleanField()
    source = serializers.ChoiceField(choices=["default", "organization", "required"],
                                     help_text="default: built in; organization: set by the organization")
    locked = serializers.BooleanField()


class OrganizationPreferenceListOutput(serializers.Serializer):
    organization_id = serializers.IntegerField()
    defaults = OrganizationPreferenceOutput(many=True)


class OrganizationPreferenceInput(StrictSerializer):
    channel = serializers.ChoiceField(choices=CHANNEL_CHOICES)
    category = serializers.ChoiceField(choices=list(CATEGORY_NAMES))
    enabled = serializers.BooleanField(allow_null=True, help_text="null: back to the built-in default")


class OrganizationPreferencesApi(APIView):
    """The defaults an organization's members get unless they choose otherwise."""

    class Input(StrictSerializer):
        defaults = OrganizationPreferenceInput(many=True, allow_empty=False, max_length=1000)

    @staticmethod
    def _output(organization) -> dict:
        return OrganizationPreferenceListOutput({
            "organization_id": organization.id,
            "defaults": preferences.organization_preference_list(organization=organization)}).data

    @extend_schema(responses=OrganizationPreferenceListOutput)
    def get(self, request, org_id: int):
        organization = organization_get_for_user(user=require_user(request), id=org_id)
        return Response(self._output(organization))

    @extend_schema(request=Input, responses=OrganizationPreferenceListOutput)
    def put(self, request, org_id: int):
        """Owners and admins: set (or clear, with enabled null) defaults; all or nothing."""
        organization = organization_get_for_user(user=require_user(request), id=org_id, admin=True)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        with transaction.atomic():
            for item in data.validated_data["defaults"]:
                preferences.organization_preference_set(organization=organization, channel=item["channel"],
                                                        category=item["category"], enabled=item["enabled"])
        return Response(self._output(organization))

