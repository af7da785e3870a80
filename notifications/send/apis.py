"""The send API: POST /api/v1/send (Idempotency-Key aware), GET|DELETE /api/v1/send/{id},
GET /api/v1/send/{id}/deliveries. Callers: an org API key with `notifications:send`, or an owner or
admin with a user token naming the `organization`."""
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api import Pagination, StrictSerializer
from config.errors import ApplicationError
from notifications.models import SEND_DELIVERY_STATES, Send
from notifications.send import idempotency, selectors, services
from organizations.models import ApiKeyScope
from organizations.selectors import ApiKeyPrincipal

_SEND_SCOPES = {"GET": ApiKeyScope.NOTIFICATIONS_SEND, "POST": ApiKeyScope.NOTIFICATIONS_SEND,
                "DELETE": ApiKeyScope.NOTIFICATIONS_SEND}

_RECIPIENTS_SCHEMA = {
    "oneOf": [
        {"type": "array", "minItems": 1, "maxItems": services.MAX_RECIPIENTS,
         "items": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "format": "email"}]},
         "description": "User ids and/or email addresses of members."},
        {"type": "object", "properties": {"topic": {"type": "string", "enum": list(services.TOPICS)}},
         "required": ["topic"], "additionalProperties": False, "description": "Every member of the organization."},
    ],
}


@extend_schema_field(_RECIPIENTS_SCHEMA)
class RecipientsField(serializers.Field):
    """A list of user ids and/or emails, or {"topic": "members"}; checked for shape only (the
    service resolves and counts them)."""

    default_error_messages = {"invalid": "Expected a list of user ids and/or emails, or an object with a topic."}

    def to_internal_value(self, data):
        if isinstance(data, dict):
            if set(data) != {"topic"} or not isinstance(data["topic"], str):
                self.fail("invalid")
            return data
        if not isinstance(data, list):
            self.fail("invalid")
        return data

    def to_representation(self, value):
        return value


# The plain shapes of a send's body, validated without DRF (SendCreateApi.Input costs a deep copy of
# its ten fields and their validation on every send); anything else goes through Input, which
# answers the errors. Each accepted value is one Input would return unchanged (a test compares them).
_PLAIN_TEXT_FIELDS = {"kind": 100, "ordering_key": 128, "deliver_at_local": 16}
_PLAIN_KEYS = frozenset({"organization", "recipients", "kind", "data", "channels", "priority", *_PLAIN_TEXT_FIELDS})


def _plain_text(value, max_length: int) -> bool:
    """A string CharField(max_length) returns as it is: not blank, nothing to trim, no NUL or surrogate."""
    return (type(value) is str and 0 < len(value) <= max_length and value.isascii() and value.isprintable()
            and value == value.strip())


def send_input_plain(data) -> dict | None:
    """SendCreateApi.Input(data=data).validated_data for a body of plain values; None: not plain
    (Input validates it, and answers its errors)."""
    if type(data) is not dict or "recipients" not in data or "kind" not in data or not data.keys() <= _PLAIN_KEYS:
        return None
    values = {}
    for name, value in data.items():
        if name == "recipients":
            if not (type(value) is list or (type(value) is dict and value.keys() == {"topic"}
                                            and type(value["topic"]) is str)):
                return None
        elif name in _PLAIN_TEXT_FIELDS:
            if not _plain_text(value, _PLAIN_TEXT_FIELDS[name]):
                return None
        elif name == "organization":
            if type(value) is not int or not 0 < value <= services.MAX_BIGINT:
                return None
        elif name == "data":
            if type(value) is not dict:
                return None
            value = dict(value)
        elif name == "channels":
            if type(value) is not list or not 1 <= len(value) <= 10 or not all(_plain_text(c, 32) for c in value):
                return None
            value = list(value)
        elif type(value) is not str or value not in Send.Priority.values:  # priority
            return None
        values[name] = value
    values.setdefault("data", {})
    return values


_IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key", OpenApiTypes.STR, location=OpenApiParameter.HEADER, required=False,
    description="Replays the first answer for 24 h (same body); 422 with another body, 409 while in flight.")


class SendItemInput(StrictSerializer):
    """One send's body (POST /send without `organization`; each item of POST /send/batch)."""

    recipients = RecipientsField()
    kind = serializers.CharField(max_length=100, help_text="The template key.")
    data = serializers.DictField(required=False, default=dict)
    channels = serializers.ListField(child=serializers.CharField(max_length=32), required=False,
                                     allow_empty=False, max_length=10)
    priority = serializers.ChoiceField(choices=Send.Priority.values, required=False)
    send_at = serializers.DateTimeField(required=False)
    deliver_at_local = serializers.CharField(required=False, max_length=16,
                                             help_text="HH:MM or YYYY-MM-DD HH:MM, recipient local time.")
    ordering_key = serializers.CharField(required=False, max_length=128)


class SendAcceptedOutput(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Send.Status.values)
    recipients = serializers.IntegerField()


def _send_caller(request, organization_id: int | None) -> tuple[int, object, int | None, int | None]:
    """(organization id, actor, created_by_id, api_key_id) of a send request: an API key's own
    organization unless it names one; a user token must name it (an owner or admin of it)."""
    principal = request.user
    if isinstance(principal, ApiKeyPrincipal):
        organization_id = organization_id or principal.organization_id
        actor, created_by_id, api_key_id = f"api-key:{principal.api_key.name}", None, principal.api_key.pk
    else:
        if organization_id is None:
            raise ApplicationError("organization is required with a user token.", code="validation_error",
                                   extra={"fields": {"organization": ["This field is required."]}})
        actor, created_by_id, api_key_id = principal, principal.pk, None
    selectors.send_organization_check(principal=principal, organization_id=organization_id)
    return organization_id, actor, created_by_id, api_key_id


def _idempotent(request, organization_id: int, accept) -> Response:
    """Run `accept()` (the writes; returns the 202 body) in one transaction under the request's
    Idempotency-Key, if any: Stripe's rules (notifications.send.idempotency)."""
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        key = idempotency.idempotency_key_validate(key)
        fingerprint = idempotency.request_hash(method=request.method, path=request.path, body=request.data)
    with transaction.atomic():
        if key is not None:
            stored = idempotency.idempotency_begin(organization_id=organization_id, key=key,
                                                   fingerprint=fingerprint)
            if stored is not None:
                return Response(stored.response, status=stored.status_code,
                                headers={"Idempotent-Replayed": "true"})
        body = accept()
        if key is not None:
            idempotency.idempotency_store(organization_id=organization_id, key=key, fingerprint=fingerprint,
                                          status_code=status.HTTP_202_ACCEPTED, response=body)
    return Response(body, status=status.HTTP_202_ACCEPTED)


def _send_values(values: dict) -> dict:
    """A validated send body as the services take it: `recipients` (a list) or `topic`."""
    recipients = values.pop("recipients")
    topic = recipients.get("topic") if isinstance(recipients, dict) else None
    return {"recipients": None if topic else recipients, "topic": topic, **values}


class SendCreateApi(APIView):
    api_key_scopes = _SEND_SCOPES

    class Input(SendItemInput):
        organization = serializers.IntegerField(required=False, min_value=1, max_value=services.MAX_BIGINT,
                                                help_text="Required with a user token; an API key's own otherwise.")

    class Output(SendAcceptedOutput):
        pass

    @extend_schema(request=Input, parameters=[_IDEMPOTENCY_HEADER],
                   responses={202: Output})
    def post(self, request):
        values = send_input_plain(request.data)
        if values is None:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            values = dict(data.validated_data)
        organization_id, actor, created_by_id, api_key_id = _send_caller(request, values.pop("organization", None))
        values = _send_values(values)
        return _idempotent(request, organization_id, lambda: send_accepted_data(services.send_create(
            organization_id=organization_id, actor=actor, created_by_id=created_by_id, api_key_id=api_key_id,
            **values)))


def _invalid(message: str, fields: dict, **extra) -> ApplicationError:
    return ApplicationError(message, code="validation_error", extra={**extra, "fields": fields})


def send_batch_input(data) -> tuple[int | None, list[dict]]:
    """(organization, sends) of a batch body, each send validated as POST /send validates its body
    (send_input_plain, else SendItemInput); the first invalid one is 400 with its fields named
    `sends[<index>].<field>` and `extra.index`."""
    if not isinstance(data, dict):
        raise _invalid("Invalid input.", {"non_field_errors": ["Expected a JSON object."]})
    unknown = sorted(set(data) - {"organization", "sends"})
    if unknown:
        raise _invalid("Invalid input.", {name: ["Unknown field."] for name in unknown})
    organization = data.get("organization")
    if organization is not None and (type(organization) is not int or not 0 < organization <= services.MAX_BIGINT):
        raise _invalid("Invalid input.", {"organization": ["Expected a positive integer."]})
    sends = data.get("sends")
    if type(sends) is not list or not 1 <= len(sends) <= services.MAX_BATCH_SENDS:
        raise _invalid(f"sends: a list of 1 to {services.MAX_BATCH_SENDS} sends.",
                       {"sends": [f"A list of 1 to {services.MAX_BATCH_SENDS} sends."]})
    items = []
    for index, item in enumerate(sends):
        if isinstance(item, dict) and "organization" in item:  # the batch names it once
            raise _invalid(f"sends[{index}]: Invalid input.", {f"sends[{index}].organization": ["Unknown field."]},
                           index=index)
        values = send_input_plain(item)
        if values is None:
            serializer = SendItemInput(data=item)
            if not serializer.is_valid():
                raise _invalid(f"sends[{index}]: Invalid input.",
                               {f"sends[{index}].{name}": errors for name, errors in serializer.errors.items()},
                               index=index)
            values = dict(serializer.validated_data)
        items.append(_send_values(values))
    return organization, items


class SendBatchCreateApi(APIView):
    """Several sends in one request, all or nothing: each item is the body of POST /send (without
    `organization`, given once for the batch). An invalid send is /send's error, its fields named
    `sends[<index>].<field>` and `extra.index` set; nothing is written. The Idempotency-Key covers
    the whole batch. 202 answers one {id, status, recipients} per send, in request order; each is
    then a normal send (GET|DELETE /send/{id}, /send/{id}/deliveries), their log entries' seqs
    consecutive in request order."""

    api_key_scopes = _SEND_SCOPES

    class Input(StrictSerializer):  # the schema; send_batch_input validates (errors name the send's index)
        organization = serializers.IntegerField(required=False, min_value=1, max_value=services.MAX_BIGINT,
                                                help_text="Required with a user token; an API key's own otherwise.")
        sends = SendItemInput(many=True, allow_empty=False, max_length=services.MAX_BATCH_SENDS,
                              help_text=f"1 to {services.MAX_BATCH_SENDS} sends, each as the body of POST /send "
                                        f"(without organization); {services.MAX_BATCH_RECIPIENTS} recipients in "
                                        "all. Errors name the send: `sends[<index>].<field>`.")

    class Output(serializers.Serializer):
        results = SendAcceptedOutput(many=True, help_text="One per send, in request order.")

    @extend_schema(request=Input, parameters=[_IDEMPOTENCY_HEADER], responses={202: Output})
    def post(self, request):
        organization, items = send_batch_input(request.data)
        organization_id, actor, created_by_id, api_key_id = _send_caller(request, organization)
        return _idempotent(request, organization_id, lambda: {"results": [send_accepted_data(send) for send in
                                                                          services.sends_create_batch(
            organization_id=organization_id, sends=items, actor=actor, created_by_id=created_by_id,
            api_key_id=api_key_id)]})


def send_accepted_data(send: Send) -> dict:
    """SendAcceptedOutput(send).data, built directly (a serializer deep-copies its fields per
    instance, on every send)."""
    return {"id": send.pk, "status": str(send.status), "recipients": send.recipients}


class SendOutput(serializers.Serializer):
    id = serializers.IntegerField()
    organization_id = serializers.IntegerField()
    kind = serializers.CharField()
    category = serializers.CharField()
    status = serializers.ChoiceField(choices=Send.Status.values)
    priority = serializers.ChoiceField(choices=Send.Priority.values)
    channels = serializers.ListField(child=serializers.CharField())
    recipients = serializers.IntegerField()
    ordering_key = serializers.CharField()
    send_at = serializers.DateTimeField(allow_null=True)
    deliver_at_local = serializers.CharField()
    due_at = serializers.DateTimeField(allow_null=True)
    seq = serializers.IntegerField(allow_null=True, help_text="The seq of its (latest) log entry.")
    created_at = serializers.DateTimeField()
    cancelled_at = serializers.DateTimeField(allow_null=True)
    counts = serializers.DictField(child=serializers.DictField(child=serializers.IntegerField()),
                                   help_text="{channel: {state: count}}")


class SendCancelOutput(serializers.Serializer):
    send = SendOutput()
    cancelled = serializers.IntegerField(help_text="Recipient x channel rows cancelled by this call.")


class SendDetailApi(APIView):
    api_key_scopes = _SEND_SCOPES

    @extend_schema(responses=SendOutput)
    def get(self, request, send_id: int):
        send = selectors.send_get_for_principal(principal=request.user, id=send_id)
        return Response(SendOutput({**_send_fields(send), "counts": selectors.send_counts(send=send)}).data)

    @extend_schema(request=None, responses=SendCancelOutput)
    def delete(self, request, send_id: int):
        send = selectors.send_get_for_principal(principal=request.user, id=send_id)
        send, cancelled = services.send_cancel(send=send)
        return Response({"send": SendOutput({**_send_fields(send), "counts": selectors.send_counts(send=send)}).data,
                         "cancelled": cancelled})


def _send_fields(send: Send) -> dict:
    fields = {name: getattr(send, name) for name in SendOutput().fields if name not in ("seq", "counts")}
    fields["seq"] = send.entry.seq if send.entry_id else None
    return fields


class SendDeliveryOutput(serializers.Serializer):
    id = serializers.IntegerField()
    recipient = serializers.IntegerField(source="user_id")
    channel = serializers.CharField()
    state = serializers.ChoiceField(choices=SEND_DELIVERY_STATES)
    locale = serializers.CharField()
    seq = serializers.IntegerField(source="entry.seq", allow_null=True, default=None)
    due_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    sent_at = serializers.DateTimeField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField()


class SendDeliveryListApi(APIView):
    api_key_scopes = _SEND_SCOPES

    @extend_schema(parameters=[
        OpenApiParameter("channel", OpenApiTypes.STR, description="Only this channel"),
        OpenApiParameter("state", {"type": "string", "enum": SEND_DELIVERY_STATES}, description="Only this state"),
    ], responses=SendDeliveryOutput(many=True))
    def get(self, request, send_id: int):
        send = selectors.send_get_for_principal(principal=request.user, id=send_id)
        state = request.query_params.get("state")
        if state is not None and state not in SEND_DELIVERY_STATES:
            raise ApplicationError("Unknown state.", code="validation_error",
                                   extra={"fields": {"state": [f"One of: {', '.join(SEND_DELIVERY_STATES)}."]}})
        channel = request.query_params.get("channel")
        paginator = Pagination()
        rows = selectors.send_delivery_list(send=send, channel=channel, state=state).select_related("entry")
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(SendDeliveryOutput(page, many=True).data)
