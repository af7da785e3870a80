"""Error codes of the notifications app (the `code` of {"message", "code", "extra"})."""
from enum import StrEnum


class NotificationsError(StrEnum):
    NOT_DEAD_LETTER = "not_dead_letter"
    NOTIFICATION_NOT_FOUND = "notification_not_found"
    UNKNOWN_KIND = "unknown_kind"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNKNOWN_PREFERENCE = "unknown_preference"
    PREFERENCE_LOCKED = "preference_locked"
