"""REST endpoint for the member's notification preferences: GET|PUT /api/v1/me/preferences."""
from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import StrictSerializer
from notifications import preferences
from notifications.models import Channel, PreferenceCategory
from organizations.apis import require_user
from organizations.selectors import organization_get_for_user


class PreferenceOutput(serializers.Serializer):
    organization_id = serializers.IntegerField(allow_null=True, help_text="null: every organization of yours")
    channel = serializers.CharField()
    category = serializers.CharField()
    enabled = serializers.BooleanField()
    source = serializers.ChoiceField(choices=["default", "global", "organization", "required"],
                                     help_text="Where the value comes from")
    locked = serializers.BooleanField(help_text="Always sent; cannot be turned off")


class PreferenceListOutput(serializers.Serializer):
    preferences = PreferenceOutput(many=True)


class PreferenceInput(StrictSerializer):
    organization_id = serializers.IntegerField(required=False, allow_null=True, default=None,
                                               help_text="Omit or null: every organization of yours")
    channel = serializers.ChoiceField(choices=[(Channel.EMAIL.value, Channel.EMAIL.label)], default="email")
    category = serializers.ChoiceField(choices=PreferenceCategory.choices)
    enabled = serializers.BooleanField()


class PreferencesApi(APIView):
    class Input(StrictSerializer):
        preferences = PreferenceInput(many=True, allow_empty=False, max_length=100)

    @staticmethod
    def _output(user) -> dict:
        return PreferenceListOutput({"preferences": preferences.preference_list(user=user)}).data

    @extend_schema(responses=PreferenceListOutput)
    def get(self, request):
        return Response(self._output(require_user(request)))

    @extend_schema(request=Input, responses=PreferenceListOutput)
    def put(self, request):
        """Set the given preferences (the others keep their values); answers with all of them."""
        user = require_user(request)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        with transaction.atomic():
            for item in data.validated_data["preferences"]:
                organization = None
                if item["organization_id"] is not None:
                    organization = organization_get_for_user(user=user, id=item["organization_id"])
                preferences.preference_set(user=user, organization=organization, channel=item["channel"],
                                           category=item["category"], enabled=item["enabled"])
        return Response(self._output(user))
