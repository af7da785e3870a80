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
