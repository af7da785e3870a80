"""Search requests: validate and normalize the query, log the search (one INSERT)."""
import unicodedata

from django.db import connection

from config.errors import ApplicationError
from organizations.selectors import ApiKeyPrincipal
from reports.errors import ReportsError
from reports.search.models import QUERY_MAX_LENGTH


def search_query_normalize(*, raw: str | None) -> str:
    """The query as logged and counted: NFKC, case-folded, control characters dropped, runs of
    whitespace as one space. Raises ApplicationError (400) when empty or over 200 characters."""
    text = unicodedata.normalize("NFKC", raw or "")
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    normalized = " ".join(text.casefold().split())
    if not normalized:
        raise ApplicationError("The search query 'q' is empty.", code=ReportsError.SEARCH_QUERY_EMPTY,
                               extra={"fields": {"q": ["This field may not be blank."]}})
    if len((raw or "").strip()) > QUERY_MAX_LENGTH or len(normalized) > QUERY_MAX_LENGTH:
        raise ApplicationError(f"The search query is longer than {QUERY_MAX_LENGTH} characters.",
                               code=ReportsError.SEARCH_QUERY_TOO_LONG,
                               extra={"fields": {"q": [f"At most {QUERY_MAX_LENGTH} characters."]},
                                      "max_length": QUERY_MAX_LENGTH})
    return normalized


def search_log_record(*, organization_id: int, principal, query: str) -> None:
    """One INSERT, no RETURNING, no foreign-key checks; the database's clock stamps it."""
    if isinstance(principal, ApiKeyPrincipal):
        user_id, api_key_id = None, principal.api_key.pk
    else:
        user_id, api_key_id = principal.pk, None
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO reports_searchlog (organization_id, user_id, api_key_id, query) "
                       "VALUES (%s, %s, %s, %s)", [organization_id, user_id, api_key_id, query])
