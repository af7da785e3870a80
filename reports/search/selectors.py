"""The search itself: one SQL statement over three GIN-indexed sources, ranked by ts_rank, one
page with the total (a window count), snippets (ts_headline) computed for that page only."""
import html
from dataclasses import dataclass

from django.db import connection

from trackers.models import SEARCH_CONFIG

# Markers ts_headline puts around matched words; the snippet is HTML-escaped in Python, then they
# become <mark> tags (user text never reaches the page unescaped). Stripped from the text first.
_START, _STOP = "\x02", "\x03"
HEADLINE_OPTIONS = f'StartSel="{_START}", StopSel="{_STOP}", MaxWords=24, MinWords=8'

# Each branch is `to_tsvector(config, COALESCE(col, ''))` with the partial index's condition, the
# exact expression of the indexes in trackers.models, so each is a bitmap scan of its GIN index;
# organization_id is compared as bigint (btree_gin has no int4 = int8 operator: the index would
# then be used for the words only, across every tenant).
# The tsquery is written out in each branch (not a CTE): a constant, it is an index condition;
# from a CTE it would be a join filter applied to every row of the organization.
_TSQUERY = f"websearch_to_tsquery('{SEARCH_CONFIG}', %(q)s)"
_SEARCH_SQL = f"""
WITH hits AS (
    SELECT 'tracker' AS type, t.id, t.id AS tracker_id, NULL::bigint AS time_entry_id, t.name AS text,
           ts_rank(to_tsvector('{SEARCH_CONFIG}'::regconfig, COALESCE(t.name, '')), {_TSQUERY}) AS rank
    FROM trackers_tracker t
    WHERE to_tsvector('{SEARCH_CONFIG}'::regconfig, COALESCE(t.name, '')) @@ {_TSQUERY}
      AND t.organization_id = %(org)s::bigint
    UNION ALL
    SELECT 'time_entry', e.id, e.tracker_id, e.id, e.notes,
           ts_rank(to_tsvector('{SEARCH_CONFIG}'::regconfig, COALESCE(e.notes, '')), {_TSQUERY})
    FROM trackers_timeentry e
    WHERE to_tsvector('{SEARCH_CONFIG}'::regconfig, COALESCE(e.notes, '')) @@ {_TSQUERY} AND NOT (e.notes = '')
      AND e.organization_id = %(org)s::bigint
    UNION ALL
    SELECT 'comment', c.id, c.tracker_id, c.time_entry_id, c.body,
           ts_rank(to_tsvector('{SEARCH_CONFIG}'::regconfig, COALESCE(c.body, '')), {_TSQUERY})
    FROM trackers_comment c
    WHERE to_tsvector('{SEARCH_CONFIG}'::regconfig, COALESCE(c.body, '')) @@ {_TSQUERY} AND c.deleted_at IS NULL
      AND c.organization_id = %(org)s::bigint
),
page AS (
    SELECT hits.*, count(*) OVER () AS total FROM hits
    ORDER BY rank DESC, type, id LIMIT %(limit)s OFFSET %(offset)s
)
SELECT page.type, page.id, page.tracker_id, page.time_entry_id, t.name, page.rank, page.total,
       ts_headline('{SEARCH_CONFIG}', translate(page.text, chr(2) || chr(3), ''), {_TSQUERY}, %(options)s)
FROM page JOIN trackers_tracker t ON t.id = page.tracker_id
ORDER BY page.rank DESC, page.type, page.id
"""


@dataclass(frozen=True)
class SearchHit:
    type: str  # "tracker" | "time_entry" | "comment"
    id: int
    organization_id: int
    tracker_id: int
    tracker_name: str
    time_entry_id: int | None
    rank: float
    snippet: str  # HTML: escaped text with <mark> around the matched words

    @property
    def url(self) -> str:
        """Where the result lives in the web UI."""
        if self.type == "tracker":
            return f"/trackers/{self.tracker_id}/"
        if self.type == "time_entry":
            return f"/orgs/{self.organization_id}/time-entries/?tracker={self.tracker_id}#entry-{self.id}"
        return f"/trackers/{self.tracker_id}/#comment-{self.id}"


def _snippet(headline: str) -> str:
    """ts_headline drops what its parser reads as HTML tags; the rest is escaped here."""
    text = " ".join(headline.split())
    return html.escape(text).replace(_START, "<mark>").replace(_STOP, "</mark>")


def search_page(*, organization_id: int, query: str, offset: int, limit: int) -> tuple[int | None, list[SearchHit]]:
    """(total matches, the hits [offset, offset + limit) best first). The total is None when the
    page is past the end (the window count has no row to ride on)."""
    with connection.cursor() as cursor:
        cursor.execute(_SEARCH_SQL, {"q": query, "org": organization_id, "limit": limit, "offset": offset,
                                     "options": HEADLINE_OPTIONS})
        rows = cursor.fetchall()
    if not rows:
        return (0 if offset == 0 else None), []
    hits = [SearchHit(type=kind, id=id_, organization_id=organization_id, tracker_id=tracker_id,
                      tracker_name=tracker_name, time_entry_id=time_entry_id, rank=float(rank),
                      snippet=_snippet(headline or ""))
            for kind, id_, tracker_id, time_entry_id, tracker_name, rank, _total, headline in rows]
    return rows[0][6], hits
