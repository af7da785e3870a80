"""Error codes of the reports app (reports, stats, activity log); raised as config.errors types."""
from enum import StrEnum


class ReportsError(StrEnum):
    RANGE_REQUIRED = "range_required"          # stats without from/to
    RANGE_INVALID = "range_invalid"            # not ISO dates, or from > to
    RANGE_TOO_LONG = "range_too_long"          # more than REPORT_MAX_RANGE_DAYS
    UNKNOWN_KIND = "unknown_report_kind"
    UNKNOWN_FORMAT = "unknown_report_format"
    REPORT_NOT_FOUND = "report_not_found"
    REPORT_NOT_READY = "report_not_ready"      # download while queued/running/failed/cancelled (409)
    REPORT_EXPIRED = "report_expired"          # download after the file was removed (410)
    REPORT_NOT_CANCELLABLE = "report_not_cancellable"  # cancel of a finished job (409)
    STATS_RATE_LIMITED = "stats_rate_limited"  # 429 with Retry-After
    SEARCH_QUERY_EMPTY = "search_query_empty"        # q missing or blank
    SEARCH_QUERY_TOO_LONG = "search_query_too_long"  # q over 200 characters
