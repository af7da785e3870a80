"""Error codes of the notifications app (the `code` of {"message", "code", "extra"})."""
from enum import StrEnum


class NotificationsError(StrEnum):
    NOT_DEAD_LETTER = "not_dead_letter"
    NOTIFICATION_NOT_FOUND = "notification_not_found"
    UNKNOWN_KIND = "unknown_kind"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNKNOWN_PREFERENCE = "unknown_preference"
    PREFERENCE_LOCKED = "preference_locked"
    # templates (notifications.templating)
    UNKNOWN_CATEGORY = "unknown_category"
    UNKNOWN_TEMPLATE = "unknown_template"
    TEMPLATE_NOT_FOUND = "template_not_found"
    TEMPLATE_EXISTS = "template_exists"
    INVALID_TEMPLATE = "invalid_template"
    TEMPLATE_SYNTAX_ERROR = "template_syntax_error"
    TEMPLATE_UNDECLARED_VARIABLE = "template_undeclared_variable"
    TEMPLATE_FORBIDDEN = "template_forbidden"
    TEMPLATE_TOO_LARGE = "template_too_large"
    TEMPLATE_RENDER_ERROR = "template_render_error"
    # the send API
    CHANNEL_NOT_SUPPORTED = "channel_not_supported"
    RECIPIENT_NOT_FOUND = "recipient_not_found"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    SEND_NOT_FOUND = "send_not_found"
    SEND_NOT_CANCELLABLE = "send_not_cancellable"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_KEY_IN_USE = "idempotency_key_in_use"
