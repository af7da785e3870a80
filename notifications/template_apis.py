"""REST endpoints of notification templates: `GET|POST /orgs/{id}/templates/`,
`GET|PUT|DELETE /templates/{id}`, `POST /templates/{id}/preview`. Members read, owners and admins
(or API keys with `templates:write`) write."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination, StrictSerializer
from notifications import templating
from notifications.categories import CATEGORY_NAMES
from organizations.models import ApiKeyScope
from organizations.selectors import ApiKeyPrincipal, organization_get_for_user, organization_list_for_user

WRITE_SCOPES = {"POST": ApiKeyScope.TEMPLATES_WRITE, "PUT": ApiKeyScope.TEMPLATES_WRITE,
                "DELETE": ApiKeyScope.TEMPLATES_WRITE}


class TemplateOutput(serializers.Serializer):
    id = serializers.IntegerField()
    organization_id = serializers.IntegerField()
    kind = serializers.CharField()
    locale = serializers.CharField()
    category = serializers.CharField()
    description = serializers.CharField()
    variables = serializers.ListField(child=serializers.CharField())
    parts = serializers.JSONField(help_text="{channel: {field: template text}}")
    version = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class TemplateInput(StrictSerializer):
    kind = serializers.CharField(max_length=64, help_text="The send API's template key (a lower-case slug)")
    locale = serializers.CharField(max_length=16, default="en", help_text="Language tag, e.g. en or pt-BR")
    category = serializers.ChoiceField(choices=list(CATEGORY_NAMES))
    description = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    variables = serializers.ListField(child=serializers.CharField(max_length=64), max_length=templating.MAX_VARIABLES,
                                      required=False, default=list,
                                      help_text="The names the parts may use (top-level keys of `data`)")
    parts = serializers.DictField(
        child=serializers.DictField(), allow_empty=False,
        help_text="{channel: {field: template text}}: " + "; ".join(
            f"{c}: {', '.join(f)}" for c, f in templating.PART_FIELDS.items()))


def _organization_ids(principal) -> list[int]:
    return list(organization_list_for_user(user=principal).values_list("id", flat=True))


def _template_for(request, template_id: int, *, admin: bool = False):
    """The template if the caller belongs to its organization (404 otherwise); writes need admin."""
    template = templating.template_get(organization_ids=_organization_ids(request.user), id=template_id)
    if admin:
        organization_get_for_user(user=request.user, id=template.organization_id, admin=True)
    return template


class TemplateListCreateApi(APIView):
    api_key_scopes = {"GET": ApiKeyScope.ORGS_READ, "POST": ApiKeyScope.TEMPLATES_WRITE}

    @extend_schema(operation_id="org_templates_list", responses=TemplateOutput(many=True), parameters=[
        OpenApiParameter("kind", OpenApiTypes.STR, description="Only this kind"),
        OpenApiParameter("locale", OpenApiTypes.STR, description="Only this locale")])
    def get(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id)
        rows = templating.template_list(organization_id=organization.id, kind=request.query_params.get("kind"),
                                        locale=request.query_params.get("locale"))
        paginator = Pagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(TemplateOutput(page, many=True).data)

    @extend_schema(operation_id="org_templates_create", request=TemplateInput, responses={201: TemplateOutput})
    def post(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id, admin=True)
        data = TemplateInput(data=request.data)
        data.is_valid(raise_exception=True)
        creator = None if isinstance(request.user, ApiKeyPrincipal) else request.user
        template = templating.template_create(organization=organization, created_by=creator, **data.validated_data)
        return Response(TemplateOutput(template).data, status=status.HTTP_201_CREATED)


class TemplateDetailApi(APIView):
    api_key_scopes = {"GET": ApiKeyScope.ORGS_READ, **WRITE_SCOPES}

    @extend_schema(operation_id="templates_retrieve", responses=TemplateOutput)
    def get(self, request, template_id: int):
        return Response(TemplateOutput(_template_for(request, template_id)).data)

    @extend_schema(operation_id="templates_update", request=TemplateInput, responses=TemplateOutput)
    def put(self, request, template_id: int):
        template = _template_for(request, template_id, admin=True)
        data = TemplateInput(data=request.data)
        data.is_valid(raise_exception=True)
        template = templating.template_update(template=template, **data.validated_data)
        return Response(TemplateOutput(template).data)

    @extend_schema(operation_id="templates_delete", responses={204: None})
    def delete(self, request, template_id: int):
        templating.template_delete(template=_template_for(request, template_id, admin=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TemplatePreviewApi(APIView):
    """Render every part of the template of this kind for a locale (resolved like a send: the
    locale, the organization's default, then "en") with the given data."""

    api_key_scopes = {"POST": ApiKeyScope.ORGS_READ}

    class Input(StrictSerializer):
        locale = serializers.CharField(max_length=16, required=False, allow_blank=True, allow_null=True,
                                       default=None, help_text="Omit: this template's own locale")
        data = serializers.DictField(required=False, default=dict)

    class Output(serializers.Serializer):
        template_id = serializers.IntegerField(help_text="The variant that was rendered")
        kind = serializers.CharField()
        locale = serializers.CharField(help_text="The locale of the variant that was rendered")
        parts = serializers.JSONField(help_text="{channel: {field: rendered text}}")

    @extend_schema(operation_id="templates_preview", request=Input, responses=Output)
    def post(self, request, template_id: int):
        template = _template_for(request, template_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        locale = data.validated_data["locale"]
        if locale:
            template = templating.template_resolve(organization_id=template.organization_id, kind=template.kind,
                                                   locale=locale)
        parts = templating.template_render(template=template, data=data.validated_data["data"])
        return Response(self.Output({"template_id": template.id, "kind": template.kind, "locale": template.locale,
                                     "parts": parts}).data)

