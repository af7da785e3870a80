"""REST wiring shared by every app: the one error format, pagination, strict input serializers."""
import math

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import set_rollback

from config.errors import ApplicationError

_DRF_CODES = {
    exceptions.ParseError: "malformed_request",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "validation_error",
}


def error_payload(message: str, code: str, extra: dict | None = None) -> dict:
    return {"message": message, "code": code, "extra": extra or {}}


def activity_organization(request, organization_id: int) -> None:
    """Tell the activity log (reports.middleware) which organization a write concerned, when the
    URL does not name it: the middleware then needs no query to find it."""
    getattr(request, "_request", request).herald_organization_id = organization_id


def exception_handler(exc, context):
    """Every API error, whatever raised it, leaves as {"message", "code", "extra"}."""
    headers = {}
    if isinstance(exc, ApplicationError):
        set_rollback()
        if exc.status_code == 429 and "retry_after" in exc.extra:
            headers["Retry-After"] = str(math.ceil(exc.extra["retry_after"]))
        return Response(error_payload(exc.message, exc.code, exc.extra), status=exc.status_code, headers=headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=serializers.as_serializer_error(exc))
    if not isinstance(exc, exceptions.APIException):
        return None  # a real bug: let Django log it and answer 500 (handler500 keeps the format)

    set_rollback()
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    specific = getattr(exc.detail, "code", None)
    if isinstance(specific, str) and specific not in (exc.default_code, "invalid", "error"):
        code = specific  # e.g. AuthenticationFailed(code="revoked_api_key")
    if isinstance(exc, exceptions.ValidationError):
        message = "Invalid input."
        extra = {"fields": exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}}
    else:
        message = str(exc.detail)
        extra = {}
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        extra["retry_after"] = exc.wait
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(math.ceil(exc.wait))
    response = Response(error_payload(message, code, extra), status=exc.status_code, headers=headers)
    return response


def json_400(request, exception=None):
    """Requests Django rejects before a view runs (a broken multipart body, a bad Host header)."""
    return JsonResponse(error_payload("Bad request.", "bad_request"), status=400)


def json_403(request, exception=None):
    return JsonResponse(error_payload("Forbidden.", "forbidden"), status=403)


def json_404(request, exception=None):
    return JsonResponse(error_payload("Not found.", "not_found"), status=404)


def json_500(request):
    return JsonResponse(error_payload("Internal server error.", "server_error"), status=500)


class Pagination(PageNumberPagination):
    """Page links are absolute URLs under HERALD_BASE_URL: the request's Host header (anything a
    client sends when ALLOWED_HOSTS is "*") never ends up in a link."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request):
        """page_size must be a positive integer when given (DRF would silently fall back)."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is not None and (not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size):
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"Must be an integer from 1 to {self.max_page_size}."]})
        return super().get_page_size(request)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"]["maximum"] = self.max_page_size
        return parameters

    def get_page_number(self, request, paginator):
        raw = request.query_params.get(self.page_query_param)
        if raw is not None and raw != "last" and (not raw.isdigit() or int(raw) < 1):
            raise exceptions.ValidationError({self.page_query_param: ["Must be a positive integer."]})
        return super().get_page_number(request, paginator)

    def get_next_link(self):
        if not self.page.has_next():
            return None
        url = settings.HERALD_BASE_URL + self.request.get_full_path()
        return replace_query_param(url, self.page_query_param, self.page.next_page_number())

    def get_previous_link(self):
        if not self.page.has_previous():
            return None
        url = settings.HERALD_BASE_URL + self.request.get_full_path()
        number = self.page.previous_page_number()
        if number == 1:
            return remove_query_param(url, self.page_query_param)
        return replace_query_param(url, self.page_query_param, number)


def validated_input(serializer_class: type[serializers.Serializer], data: dict) -> dict:
    """Validate `data` with an API Input serializer outside a request (the browser pages post the
    same fields as the API): the validated data, or the ApplicationError the API would answer."""
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        raise ApplicationError("Invalid input.", code="validation_error", extra={"fields": serializer.errors})
    return serializer.validated_data


class StrictSerializer(serializers.Serializer):
    """Input serializer that rejects unknown fields instead of silently dropping them."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ["Expected a JSON object."]}, code="invalid"
            )
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown}, code="unknown_field")
        wrong = {name: [f"Expected {expected}."] for name, expected in
                 ((name, _json_type_error(field, data[name])) for name, field in self.fields.items() if name in data)
                 if expected}
        if wrong:
            raise serializers.ValidationError(wrong, code="invalid")
        return super().to_internal_value(data)


# JSON types as the schema states them: DRF would coerce 0 into "0" or "true" into True.
_JSON_TYPES = [
    (serializers.BooleanField, (bool,), "a boolean"),
    (serializers.IntegerField, (int,), "an integer"),
    (serializers.FloatField, (int, float), "a number"),
    (serializers.CharField, (str,), "a string"),  # also Email, Regex, Slug, URL fields
    (serializers.ChoiceField, None, None),
    (serializers.ListField, (list,), "an array"),
    (serializers.DictField, (dict,), "an object"),
    (serializers.DateTimeField, (str,), "a string"),
    (serializers.DateField, (str,), "a string"),
    (serializers.TimeField, (str,), "a string"),
]


def _json_type_error(field, value) -> str | None:
    """What the field expects if `value` has the wrong JSON type (null is the field's own business)."""
    if value is None or field.read_only:
        return None
    for cls, types, label in _JSON_TYPES:
        if isinstance(field, cls):
            if types is None:
                return None
            ok = isinstance(value, types) and not (bool not in types and isinstance(value, bool))
            return None if ok else label
    return None

