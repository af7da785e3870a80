"""OpenAPI wiring: unique component names for view-nested Input/Output serializers, lists documented
as the paginated envelope they are, strict request bodies (no unknown fields), and every error an
operation can answer documented with the one error shape and its codes."""
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from config.api import Pagination, StrictSerializer


class ErrorResponse(serializers.Serializer):
    """{"message", "code", "extra"}: every 4xx and 5xx of the API."""

    message = serializers.CharField()
    code = serializers.CharField(help_text="Machine-readable; the codes of each status are listed on it.")
    extra = serializers.DictField(help_text="Details, e.g. `fields` for validation errors, `retry_after` for 429.")


# Codes each status can carry (config.api, config.middleware and the apps' errors.py enums).
ERROR_CODES = {
    "400": ["validation_error", "malformed_request", "json_too_deep", "bad_request", "invalid_role",
            "invalid_credentials", "invalid_scope",
            # notification templates
            "invalid_template", "template_syntax_error", "template_undeclared_variable", "template_forbidden",
            "template_too_large", "template_render_error", "unknown_category", "unknown_channel", "unknown_template",
            # SMS, push, Apprise channels
            "too_many_devices", "invalid_apprise_url", "too_many_apprise_destinations",
            "search_query_empty", "search_query_too_long",
            "bulk_too_many_rows", "bulk_rows_invalid",
            # the send API
            "channel_not_supported", "too_many_recipients", "invalid_idempotency_key",
            "sms_too_long", "push_too_large", "whatsapp_too_long"],
    "401": ["not_authenticated", "authentication_failed", "invalid_token", "token_expired", "token_revoked",
            "invalid_api_key", "revoked_api_key"],
    "403": ["permission_denied", "forbidden", "admin_required", "user_required", "scope_required", "invalid_role",
            "comment_not_author",
            # provider status callbacks
            "invalid_signature", "callback_not_configured", "invalid_verify_token"],
    "404": ["not_found", "organization_not_found", "api_key_not_found", "token_not_found", "invitation_not_found",
            "tracker_not_found", "notification_not_found", "time_entry_not_found", "comment_not_found",
            "parent_not_found", "template_not_found", "device_not_found",
            "apprise_destination_not_found", "send_not_found", "recipient_not_found", "sms_provider_not_found"],
    "405": ["method_not_allowed"],
    "406": ["not_acceptable"],
    "409": ["conflict", "registration_unavailable", "email_taken", "slug_taken", "membership_exists",
            "invitation_used", "tracker_already_running", "tracker_not_running", "comment_deleted",
            "idempotency_key_in_use", "template_exists", "device_token_taken", "send_not_cancellable"],
    "410": ["invitation_expired"],
    "422": ["idempotency_key_reused"],
    "413": ["request_too_large"],
    "415": ["unsupported_media_type"],
    "429": ["rate_limited", "account_locked"],
    "503": ["service_unavailable"],
}
THROTTLED_ROUTES = ("/api/v1/auth/token", "/api/v1/auth/register", "/api/v1/me/password")


class AutoSchema(SpectacularAutoSchema):
    def get_serializer_name(self, serializer, direction):
        # "MeApi.Input" -> "MeApiInput": every view's nested serializer gets its own component.
        return serializer.__class__.__qualname__.replace(".", "")

    def _get_paginator(self):
        """Every list the API returns is paginated (count, next, previous, results), also from plain
        APIViews that page by hand: a GET answering many objects is documented as the envelope."""
        paginator = super()._get_paginator()
        if paginator is None and self.method == "GET":
            return Pagination()
        return paginator

    def _get_parameters(self):
        """Page parameters carry their bounds wherever a view declares them (page >= 1, page_size
        1..max): the API refuses anything else with 400."""
        parameters = super()._get_parameters()
        for parameter in parameters:
            schema = parameter.get("schema", {})
            if parameter.get("in") == "query" and parameter["name"] in ("page", "page_size") \
                    and schema.get("type") == "integer":
                schema.setdefault("minimum", 1)
                if parameter["name"] == "page_size":
                    schema.setdefault("maximum", Pagination.max_page_size)
        return parameters

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if (isinstance(field, (serializers.ListField, serializers.ListSerializer))
                and not getattr(field, "allow_empty", True) and schema.get("type") == "array"):
            schema.setdefault("minItems", 1)  # "This list may not be empty."
        if (isinstance(field, (serializers.ListField, serializers.ListSerializer))
                and getattr(field, "max_length", None) is not None and schema.get("type") == "array"):
            schema.setdefault("maxItems", field.max_length)
        return schema

    def _map_serializer(self, serializer, direction, bypass_extensions=False):
        schema = super()._map_serializer(serializer, direction, bypass_extensions)
        if direction == "request" and isinstance(serializer, StrictSerializer):
            schema["additionalProperties"] = False  # unknown fields are 400, not ignored
        return schema

    def _error_statuses(self) -> list[str]:
        statuses = ["400", "405", "406", "503"]
        if not all(isinstance(p, AllowAny) for p in self.view.get_permissions()):
            statuses += ["401", "403"]
        if self.path.startswith("/api/v1/callbacks/"):
            statuses.append("403")  # a provider's request without a valid signature
        if "{" in self.path or self._is_list_view():
            statuses.append("404")  # an unknown or foreign object; a page past the end
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            statuses += ["404", "409", "413", "415"]  # 404: a body may name an object that is not yours
        if self.method == "POST" and self.path in ("/api/v1/send", "/api/v1/send/batch"):
            statuses.append("422")  # Idempotency-Key reused with another body
        if self.path.endswith("/accept"):
            statuses.append("410")
        if self.path in THROTTLED_ROUTES or self.path.endswith("/stats"):
            statuses.append("429")
        return sorted(set(statuses))

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        error = self.resolve_serializer(ErrorResponse, "response").ref
        for status in self._error_statuses():
            if status in responses:
                continue
            codes = ERROR_CODES.get(status, [])
            responses[status] = {
                "description": "Error; `code` is one of: " + ", ".join(f"`{c}`" for c in codes),
                "content": {"application/json": {"schema": error}},
                "x-error-codes": codes,
            }
            if status in ("429", "503"):
                responses[status]["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                                                "description": "Seconds to wait."}}
        return responses
