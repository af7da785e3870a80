"""Error codes of the trackers app (trackers, time entries, comments)."""
from enum import StrEnum


class TrackerErrorCode(StrEnum):
    TRACKER_NOT_FOUND = "tracker_not_found"
    TRACKER_ALREADY_RUNNING = "tracker_already_running"
    TRACKER_NOT_RUNNING = "tracker_not_running"
    TIME_ENTRY_NOT_FOUND = "time_entry_not_found"
    COMMENT_NOT_FOUND = "comment_not_found"
    # The parent does not exist or belongs to another organization (same answer: no existence leak).
    PARENT_NOT_FOUND = "parent_not_found"
    # The parent is a comment of another tracker or time entry of the same organization.
    PARENT_IN_OTHER_THREAD = "parent_in_other_thread"
    COMMENT_DELETED = "comment_deleted"
    COMMENT_NOT_AUTHOR = "comment_not_author"
    USER_REQUIRED = "user_required"
