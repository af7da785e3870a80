"""REST endpoints for accounts, organizations, memberships, API keys and Slack settings."""
from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination, StrictSerializer
from config.errors import ApplicationError, Forbidden, NotFound
from organizations import selectors, services
from organizations.models import ApiKey, Membership, User, validate_time_zone
from organizations.selectors import ApiKeyPrincipal


def require_user(request) -> User:
    """Endpoints about 'me' need a person, not an organization's API key."""
    if isinstance(request.user, ApiKeyPrincipal):
        raise Forbidden("This endpoint needs a user, not an organization API key.", code="user_required")
    return request.user


class UserOutput(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "username", "email", "first_name", "last_name", "time_zone", "phone", "postal_code",
                  "slack_user_id", "date_joined"]
        read_only_fields = fields


class RegisterApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class Input(StrictSerializer):
        username = serializers.RegexField(r"^[\w.@+-]+\Z", max_length=150)
        email = serializers.EmailField(max_length=254)
        password = serializers.CharField(max_length=128, write_only=True)

    @extend_schema(request=Input, responses={201: inline_serializer(
        "RegisterOutput", {"user": UserOutput(), "token": serializers.CharField()})}, auth=[])
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        user, token = services.user_register(**data.validated_data)
        return Response({"user": UserOutput(user).data, "token": token}, status=status.HTTP_201_CREATED)


class TokenApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class Input(StrictSerializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(max_length=128, write_only=True)

    @extend_schema(request=Input, responses={200: inline_serializer("TokenOutput", {"token": serializers.CharField()})},
                   auth=[])
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(request, **data.validated_data)
        if user is None:
            raise ApplicationError("Wrong username or password.", code="invalid_credentials", status=400)
        return Response({"token": services.user_token_create(user=user)})


class MeApi(APIView):
    class Input(StrictSerializer):
        email = serializers.EmailField(max_length=254, required=False)
        first_name = serializers.CharField(max_length=150, required=False, allow_blank=True)
        last_name = serializers.CharField(max_length=150, required=False, allow_blank=True)
        time_zone = serializers.CharField(max_length=64, required=False, validators=[validate_time_zone])
        phone = serializers.RegexField(r"^\+?[0-9 ()-]{0,31}\Z", max_length=32, required=False, allow_blank=True)
        postal_code = serializers.CharField(max_length=16, required=False, allow_blank=True)
        slack_user_id = serializers.CharField(max_length=32, required=False, allow_blank=True)

    @extend_schema(responses=UserOutput)
    def get(self, request):
        return Response(UserOutput(require_user(request)).data)

    @extend_schema(request=Input, responses=UserOutput)
    def patch(self, request):
        user = require_user(request)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_update(user=user, data=data.validated_data)
        return Response(UserOutput(user).data)


class OrganizationOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    time_zone = serializers.CharField()
    last_event_seq = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class OrganizationListCreateApi(APIView):
    class Input(StrictSerializer):
        name = serializers.CharField(max_length=120)
        slug = serializers.SlugField(max_length=64, required=False)
        time_zone = serializers.CharField(max_length=64, required=False, default="UTC",
                                          validators=[validate_time_zone])

    @extend_schema(responses=OrganizationOutput(many=True))
    def get(self, request):
        queryset = selectors.organization_list_for_user(user=request.user)
        paginator = Pagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(OrganizationOutput(page, many=True).data)

    @extend_schema(request=Input, responses={201: OrganizationOutput})
    def post(self, request):
        user = require_user(request)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        organization = services.organization_create(creator=user, **data.validated_data)
        return Response(OrganizationOutput(organization).data, status=status.HTTP_201_CREATED)


class OrganizationDetailApi(APIView):
    @extend_schema(responses=OrganizationOutput)
    def get(self, request, org_id: int):
        organization = selectors.organization_get_for_user(user=request.user, id=org_id)
        return Response(OrganizationOutput(organization).data)


class MembershipOutput(serializers.Serializer):
    id = serializers.IntegerField()
    user_id = serializers.IntegerField()
    username = serializers.CharField(source="user.username")
    email = serializers.CharField(source="user.email")
    role = serializers.CharField()
    created_at = serializers.DateTimeField()


class MembershipListCreateApi(APIView):
    class Input(StrictSerializer):
        email = serializers.EmailField(max_length=254)
        role = serializers.ChoiceField(choices=Membership.Role.choices, default=Membership.Role.MEMBER)

    @extend_schema(responses=MembershipOutput(many=True))
    def get(self, request, org_id: int):
        organization = selectors.organization_get_for_user(user=request.user, id=org_id)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.membership_list(organization=organization), request, view=self)
        return paginator.get_paginated_response(MembershipOutput(page, many=True).data)

    @extend_schema(request=Input, responses={201: MembershipOutput})
    def post(self, request, org_id: int):
        organization = selectors.organization_get_for_user(user=request.user, id=org_id, admin=True)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_create(organization=organization, **data.validated_data)
        return Response(MembershipOutput(membership).data, status=status.HTTP_201_CREATED)


class SlackSettingsApi(APIView):
    class Input(StrictSerializer):
        channel = serializers.RegexField(r"^[#]?[A-Za-z0-9._-]{1,79}\Z", max_length=80)
        token = serializers.RegexField(r"^xox[a-z]-[A-Za-z0-9-]{1,250}\Z", max_length=255, write_only=True,
                                       error_messages={"invalid": "Expected a Slack bot token (xoxb-…)."})

    class Output(serializers.Serializer):
        channel = serializers.CharField()
        enabled = serializers.BooleanField()
        token_set = serializers.SerializerMethodField()
        updated_at = serializers.DateTimeField()

        def get_token_set(self, obj) -> bool:
            return bool(obj.token_encrypted)

    @extend_schema(request=Input, responses=Output)
    def put(self, request, org_id: int):
        organization = selectors.organization_get_for_user(user=request.user, id=org_id, admin=True)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        integration = services.slack_integration_set(organization=organization, **data.validated_data)
        return Response(self.Output(integration).data)


class ApiKeyOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class ApiKeyListCreateApi(APIView):
    class Input(StrictSerializer):
        name = serializers.CharField(max_length=100)

    @extend_schema(responses=ApiKeyOutput(many=True))
    def get(self, request, org_id: int):
        organization = selectors.organization_get_for_user(user=require_user(request), id=org_id, admin=True)
        keys = ApiKey.objects.filter(organization=organization).order_by("-id")
        return Response(ApiKeyOutput(keys, many=True).data)

    @extend_schema(request=Input, responses={201: inline_serializer(
        "ApiKeyCreated", {"api_key": ApiKeyOutput(), "key": serializers.CharField()})})
    def post(self, request, org_id: int):
        user = require_user(request)
        organization = selectors.organization_get_for_user(user=user, id=org_id, admin=True)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        api_key, full = services.api_key_create(organization=organization, created_by=user, **data.validated_data)
        return Response({"api_key": ApiKeyOutput(api_key).data, "key": full}, status=status.HTTP_201_CREATED)


class ApiKeyRevokeApi(APIView):
    @extend_schema(request=None, responses=ApiKeyOutput)
    def post(self, request, org_id: int, key_id: int):
        organization = selectors.organization_get_for_user(user=require_user(request), id=org_id, admin=True)
        api_key = ApiKey.objects.filter(organization=organization, id=key_id).first()
        if api_key is None:
            raise NotFound("API key not found.", code="api_key_not_found")
        return Response(ApiKeyOutput(services.api_key_revoke(api_key=api_key)).data)
