"""REST endpoints for accounts, organizations, memberships, API keys and Slack settings."""
from django.conf import settings
from django.contrib.auth import update_session_auth_hash
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination, StrictSerializer
from config.errors import Forbidden, NotFound
from organizations import selectors, services
from organizations.errors import OrganizationsError
from organizations.models import (DEFAULT_API_KEY_SCOPES, ApiKey, ApiKeyScope, Membership, User, UserToken,
                                  LOCALE_PATTERN, default_api_key_scopes, locale_choices, normalize_phone,
                                  time_zone_choices, validate_e164)
from organizations.selectors import ApiKeyPrincipal


def client_ip(request) -> str | None:
    """The client's address (REMOTE_ADDR, already resolved from a trusted proxy's X-Forwarded-For)."""
    return request.META.get("REMOTE_ADDR") or None


def require_user(request) -> User:
    """Endpoints about 'me' need a person, not an organization's API key."""
    if isinstance(request.user, ApiKeyPrincipal):
        raise Forbidden("This endpoint needs a user, not an organization API key.", code="user_required")
    return request.user


class UserOutput(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "username", "email", "first_name", "last_name", "time_zone", "locale", "phone", "postal_code",
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
        user, token = services.user_register(**data.validated_data, ip=client_ip(request))
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
        user = services.user_login(request=request, ip=client_ip(request), **data.validated_data)
        return Response({"token": services.user_token_create(user=user, name="api login", ip=client_ip(request))})


class UserTokenOutput(serializers.Serializer):
    id = serializers.IntegerField()
    prefix = serializers.CharField()
    name = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    current = serializers.SerializerMethodField()

    def get_current(self, obj) -> bool:
        return obj.id == self.context.get("current_token_id")


class TokenListApi(APIView):
    """The caller's live tokens (not revoked, not expired), newest first."""

    @extend_schema(responses=UserTokenOutput(many=True))
    def get(self, request):
        user = require_user(request)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.user_token_list(user=user), request, view=self)
        current = request.auth.id if isinstance(request.auth, UserToken) else None
        return paginator.get_paginated_response(
            UserTokenOutput(page, many=True, context={"current_token_id": current}).data)


class TokenDetailApi(APIView):
    @extend_schema(request=None, responses={204: None})
    def delete(self, request, token_id: int):
        """Revoke one of your tokens; WebSockets opened with it close."""
        services.user_token_revoke(user=require_user(request), token_id=token_id, ip=client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class PasswordApi(APIView):
    class Input(StrictSerializer):
        current_password = serializers.CharField(max_length=128, write_only=True)
        new_password = serializers.CharField(max_length=128, write_only=True)

    @extend_schema(request=Input, responses={200: inline_serializer("PasswordChanged",
                                                                    {"token": serializers.CharField()})})
    def post(self, request):
        """Change your password: every token is revoked and every WebSocket closed; the answer
        carries one new token."""
        user = require_user(request)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        ip = client_ip(request)
        services.user_login(request=request._request, username=user.get_username(),
                            password=data.validated_data["current_password"], ip=ip)
        services.user_password_change(user=user, password=data.validated_data["new_password"], ip=ip)
        if not isinstance(request.auth, UserToken):  # a browser session: keep this one signed in
            update_session_auth_hash(request._request, user)
        return Response({"token": services.user_token_create(user=user, name="password change", ip=ip)})


class PhoneField(serializers.RegexField):
    """A phone number in E.164; spaces, dots, dashes and parentheses are dropped first (the pattern
    admits exactly what becomes a valid E.164 number)."""

    PATTERN = r"^\+[ ().-]*[1-9]([ ().-]*[0-9]){6,14}[ ().-]*\Z"

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 32)
        kwargs.setdefault("help_text", "E.164, e.g. +14155550100 (spaces, dashes and parentheses are dropped)")
        # A blank value clears the number: the schema's pattern must admit it too.
        pattern = r"^(?:" + self.PATTERN[1:-2] + r")?\Z" if kwargs.get("allow_blank") else self.PATTERN
        super().__init__(pattern, **kwargs)

    def to_internal_value(self, data):
        if isinstance(data, str) and self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)  # as typed, before punctuation is dropped
        value = normalize_phone(super().to_internal_value(data))
        try:
            validate_e164(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages[0], code="invalid_phone") from exc
        return value


class MeApi(APIView):
    class Input(StrictSerializer):
        email = serializers.EmailField(max_length=254, required=False)
        first_name = serializers.CharField(max_length=150, required=False, allow_blank=True)
        last_name = serializers.CharField(max_length=150, required=False, allow_blank=True)
        time_zone = serializers.ChoiceField(choices=time_zone_choices(), required=False)
        locale = serializers.ChoiceField(choices=locale_choices(), required=False)
        phone = PhoneField(required=False, allow_blank=True)
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
    locale = serializers.CharField(help_text="Default locale of the organization's notification templates")
    last_event_seq = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class OrganizationListCreateApi(APIView):
    class Input(StrictSerializer):
        name = serializers.CharField(max_length=120)
        slug = serializers.SlugField(max_length=64, required=False)
        time_zone = serializers.ChoiceField(choices=time_zone_choices(), required=False, default="UTC")
        locale = serializers.RegexField(LOCALE_PATTERN, max_length=16, required=False, default="en")

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
    email = serializers.SerializerMethodField()
    role = serializers.CharField()
    postal_code = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_email(self, obj) -> str | None:
        """Owners and admins see members' emails; members see null (no harvesting of addresses)."""
        return obj.user.email if self.context.get("show_emails") else None

    def get_postal_code(self, obj) -> str | None:
        """Set by admins (POST /orgs/{id}/members/postal-codes); shown to whoever sees emails."""
        return obj.postal_code if self.context.get("show_emails") else None


class MemberPostalCodesApi(APIView):
    """Bulk update of members' postal codes (owners and admins; keys with members:write)."""

    class Row(serializers.Serializer):
        email = serializers.EmailField(max_length=254)
        postal_code = serializers.RegexField(r"^\s*[A-Za-z0-9][A-Za-z0-9 -]{1,8}[A-Za-z0-9]\s*$", max_length=10)

    class Input(StrictSerializer):
        updates = serializers.ListField(min_length=1, max_length=services.BULK_MAX_ROWS, allow_empty=False)

    class Output(serializers.Serializer):
        matched = serializers.IntegerField()
        unmatched = serializers.ListField(child=serializers.CharField())

    @extend_schema(request=inline_serializer("MemberPostalCodesInput", {
        "updates": Row(many=True, allow_empty=False, max_length=services.BULK_MAX_ROWS)}), responses=Output)
    def post(self, request, org_id: int):
        """Set postal codes by member email (case-insensitive), up to 100,000 rows in one statement;
        all or nothing. Postal codes are stored trimmed and upper case."""
        organization = selectors.organization_get_for_user(user=request.user, id=org_id, admin=True)
        body = request.data
        if not isinstance(body, dict) or set(body) != {"updates"} or not isinstance(body["updates"], list) \
                or not body["updates"]:
            # Shape only (rows are checked by the service, in one pass: a serializer per row would
            # cost seconds at 100,000 rows).
            data = self.Input(data=body)
            data.is_valid(raise_exception=True)
        result = services.membership_postal_codes_update(organization=organization, updates=body["updates"])
        return Response(self.Output(result).data)


class InvitationOutput(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    role = serializers.CharField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()


class MembershipListCreateApi(APIView):
    class Input(StrictSerializer):
        email = serializers.EmailField(max_length=254)
        role = serializers.ChoiceField(choices=Membership.Role.choices, default=Membership.Role.MEMBER)

    @extend_schema(responses=MembershipOutput(many=True))
    def get(self, request, org_id: int):
        organization = selectors.organization_get_for_user(user=request.user, id=org_id)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.membership_list(organization=organization), request, view=self)
        show = selectors.can_see_member_emails(principal=request.user, organization_id=organization.id)
        return paginator.get_paginated_response(MembershipOutput(page, many=True, context={"show_emails": show}).data)

    @extend_schema(request=Input, responses={201: inline_serializer(
        "InvitationCreated", {"invitation": InvitationOutput(), "token": serializers.CharField(),
                              "accept_url": serializers.CharField()})})
    def post(self, request, org_id: int):
        """Invite someone by email: they join when they accept (POST /api/v1/invitations/{token}/accept,
        signed in with that email). The same answer whether or not the address has an account."""
        organization = selectors.organization_get_for_user(user=request.user, id=org_id, admin=True)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        key = request.user.api_key if isinstance(request.user, ApiKeyPrincipal) else None
        invitation, token = services.invitation_create(
            organization=organization, invited_by=None if key else request.user, api_key=key, ip=client_ip(request),
            **data.validated_data)
        return Response({"invitation": InvitationOutput(invitation).data, "token": token,
                         "accept_url": f"{settings.HERALD_BASE_URL}/api/v1/invitations/{token}/accept"},
                        status=status.HTTP_201_CREATED)


class MembershipDetailApi(APIView):
    class Input(StrictSerializer):
        role = serializers.ChoiceField(choices=[Membership.Role.ADMIN, Membership.Role.MEMBER])

    @extend_schema(request=Input, responses=MembershipOutput)
    def patch(self, request, org_id: int, membership_id: int):
        """Change a member's role (admin or member; an owner's membership is 409 owner_protected)."""
        user = require_user(request)
        organization = selectors.organization_get_for_user(user=user, id=org_id, admin=True)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_role_change(organization=organization, membership_id=membership_id,
                                                     role=data.validated_data["role"], by=user, ip=client_ip(request))
        return Response(MembershipOutput(membership, context={"show_emails": True}).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, org_id: int, membership_id: int):
        """Remove a member from the organization (not an owner)."""
        user = require_user(request)
        organization = selectors.organization_get_for_user(user=user, id=org_id, admin=True)
        services.membership_remove(organization=organization, membership_id=membership_id, by=user,
                                   ip=client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationListApi(APIView):
    @extend_schema(responses=InvitationOutput(many=True))
    def get(self, request, org_id: int):
        """Pending invitations of the organization, newest first (owners and admins)."""
        organization = selectors.organization_get_for_user(user=request.user, id=org_id, admin=True)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.invitation_pending_list(organization=organization), request,
                                           view=self)
        return paginator.get_paginated_response(InvitationOutput(page, many=True).data)


class InvitationDetailApi(APIView):
    @extend_schema(request=None, responses={204: None})
    def delete(self, request, org_id: int, invitation_id: int):
        """Withdraw a pending invitation."""
        organization = selectors.organization_get_for_user(user=request.user, id=org_id, admin=True)
        key = request.user.api_key if isinstance(request.user, ApiKeyPrincipal) else None
        services.invitation_revoke(organization=organization, invitation_id=invitation_id,
                                   by=None if key else request.user, api_key=key, ip=client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationAcceptApi(APIView):
    @extend_schema(request=None, responses={201: MembershipOutput})
    def post(self, request, token: str):
        """Join the organization you were invited to (signed in with the invited email; once)."""
        membership = services.invitation_accept(user=require_user(request), token=token, ip=client_ip(request))
        return Response(MembershipOutput(membership, context={"show_emails": True}).data,
                        status=status.HTTP_201_CREATED)


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
    scopes = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


def _key_actor(request) -> tuple[User | None, ApiKey | None]:
    if isinstance(request.user, ApiKeyPrincipal):
        return None, request.user.api_key
    return request.user, None


class ApiKeyListCreateApi(APIView):
    class Input(StrictSerializer):
        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiKeyScope.choices), required=False,
                                       allow_empty=False, max_length=len(ApiKeyScope.choices),
                                       help_text="Default: " + ", ".join(DEFAULT_API_KEY_SCOPES))

    @extend_schema(responses=ApiKeyOutput(many=True))
    def get(self, request, org_id: int):
        organization = selectors.organization_get_for_user(user=request.user, id=org_id, admin=True)
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.api_key_list(organization=organization), request, view=self)
        return paginator.get_paginated_response(ApiKeyOutput(page, many=True).data)

    @extend_schema(request=Input, responses={201: inline_serializer(
        "ApiKeyCreated", {"api_key": ApiKeyOutput(), "key": serializers.CharField()})})
    def post(self, request, org_id: int):
        organization = selectors.organization_get_for_user(user=request.user, id=org_id, admin=True)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        user, key = _key_actor(request)
        scopes = data.validated_data.get("scopes")
        if key is not None and not set(scopes or default_api_key_scopes()) <= set(key.scopes):
            # A key never mints a key that can do more than itself.
            raise Forbidden("A key cannot grant scopes it does not have.", code=OrganizationsError.SCOPE_REQUIRED,
                            extra={"scopes": sorted(set(scopes or default_api_key_scopes()) - set(key.scopes))})
        api_key, full = services.api_key_create(organization=organization, created_by=user, scopes=scopes,
                                                name=data.validated_data["name"], ip=client_ip(request))
        return Response({"api_key": ApiKeyOutput(api_key).data, "key": full}, status=status.HTTP_201_CREATED)


class ApiKeyRevokeApi(APIView):
    @extend_schema(request=None, responses=ApiKeyOutput)
    def post(self, request, org_id: int, key_id: int):
        organization = selectors.organization_get_for_user(user=request.user, id=org_id, admin=True)
        api_key = ApiKey.objects.filter(organization=organization, id=key_id).first()
        if api_key is None:
            raise NotFound("API key not found.", code=OrganizationsError.API_KEY_NOT_FOUND)
        user, _ = _key_actor(request)
        return Response(ApiKeyOutput(services.api_key_revoke(api_key=api_key, by=user, ip=client_ip(request))).data)
