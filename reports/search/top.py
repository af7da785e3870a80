"""The hourly top-10: beat's refresh aggregates the search log into SearchTop and writes each
organization's answer into Redis; the endpoint serves it from there.

Cache layout (raw Redis, bytes):
- GEN_KEY: the generation of the last refresh, "<window_start>/<window_end>" (ISO times).
- org key: "<generation>\\n<the JSON body of GET /search/top>", expiring after two refreshes.

A read is one MGET of both keys. A value of the current generation is a hit; its body is the
response, not parsed. A value of an older generation is stale: one request (SET NX lock per
organization) recomputes it from SearchTop while every other request serves the stale body. With no
value at all, the others wait briefly for the lock holder's value, then read the table themselves.
The refresh writes the new values before the new generation, so active organizations never see a
stale or missing value at the turn of the hour; Redis unreachable, the table answers directly.
"""
import json
import logging
import time
import uuid
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import connection, transaction

from reports.search.models import TOP_SIZE, SearchTop

logger = logging.getLogger("herald.reports")

GEN_KEY = "herald:search:top:gen"
# Serializes refreshes (two beats, a manual run during the scheduled one): the loser skips.
_REFRESH_ADVISORY_LOCK = 0x5EA2C4  # pg_try_advisory_xact_lock key
_FILL_LOCK_MS = 5000
_COLD_WAIT_SECONDS = 0.5

_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"""

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:  # one pool per process; short timeouts: Redis away, the table answers
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    return _client


def org_key(organization_id: int) -> str:
    return f"herald:search:top:{organization_id}"


def _lock_key(organization_id: int) -> str:
    return f"herald:search:top:{organization_id}:lock"


def _generation(start: datetime, end: datetime) -> bytes:
    return f"{start.isoformat()}/{end.isoformat()}".encode()


def _body(*, start: str | None, end: str | None, rows: list[tuple[int, str, int]]) -> bytes:
    return json.dumps({"window_start": start, "window_end": end,
                       "results": [{"rank": r, "query": q, "searches": n} for r, q, n in rows]},
                      separators=(",", ":")).encode()


# --- refresh (beat, hourly) --------------------------------------------------------------------

_AGGREGATE_SQL = f"""
WITH counted AS (
    SELECT organization_id, query, count(*) AS searches,
           row_number() OVER (PARTITION BY organization_id ORDER BY count(*) DESC, query) AS rank
    FROM reports_searchlog
    WHERE created_at >= %(start)s AND created_at < %(end)s
    GROUP BY organization_id, query
)
INSERT INTO reports_searchtop (organization_id, rank, query, searches, window_start, window_end)
SELECT c.organization_id, c.rank, c.query, c.searches, %(start)s, %(end)s
FROM counted c JOIN organizations_organization o ON o.id = c.organization_id
WHERE c.rank <= {TOP_SIZE}
RETURNING organization_id, rank, query, searches
"""


def search_top_refresh() -> dict:
    """Recompute every organization's top-10 of the last SEARCH_TOP_WINDOW_SECONDS into SearchTop
    (one statement, readers see the old rows until commit), then write the answers to Redis and
    bump the generation. Also trims the log past SEARCH_LOG_RETENTION_DAYS (bounded batch)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s), now()", [_REFRESH_ADVISORY_LOCK])
            got, end = cursor.fetchone()
            if not got:
                return {"skipped": True}
            start = end - timedelta(seconds=settings.SEARCH_TOP_WINDOW_SECONDS)
            cursor.execute("DELETE FROM reports_searchtop RETURNING organization_id")
            previous = {org_id for (org_id,) in cursor.fetchall()}
            cursor.execute(_AGGREGATE_SQL, {"start": start, "end": end})
            rows = cursor.fetchall()
    per_org: dict[int, list[tuple[int, str, int]]] = {}
    for org_id, rank, query, searches in rows:
        per_org.setdefault(org_id, []).append((rank, query, searches))
    generation = _generation(start, end)
    try:
        _cache_write(generation=generation, start=start.isoformat(), end=end.isoformat(), per_org=per_org,
                     emptied=previous - set(per_org))
    except redis.RedisError:
        logger.warning("search top-10 not cached (Redis unavailable); readers use the table", exc_info=True)
    purged = search_log_purge()
    return {"organizations": len(per_org), "rows": sum(len(v) for v in per_org.values()), "purged": purged,
            "window_start": start.isoformat(), "window_end": end.isoformat()}


def _cache_write(*, generation: bytes, start: str, end: str, per_org: dict, emptied: set[int]) -> None:
    client, ttl = _redis(), settings.SEARCH_TOP_CACHE_SECONDS
    items = [(org_id, _body(start=start, end=end, rows=sorted(top))) for org_id, top in per_org.items()]
    items += [(org_id, _body(start=start, end=end, rows=[])) for org_id in emptied]
    for i in range(0, len(items), 1000):
        pipe = client.pipeline(transaction=False)
        for org_id, body in items[i:i + 1000]:
            pipe.set(org_key(org_id), generation + b"\n" + body, ex=ttl)
        pipe.execute()
    client.set(GEN_KEY, generation)  # last: every value of this generation is in place


def search_log_purge() -> int:
    """Delete at most SEARCH_LOG_PURGE_BATCH log rows older than the retention (the BRIN index
    finds them); an hourly run keeps up with any realistic search rate."""
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM reports_searchlog WHERE id IN (SELECT id FROM reports_searchlog "
            "WHERE created_at < now() - make_interval(days => %s) LIMIT %s)",
            [settings.SEARCH_LOG_RETENTION_DAYS, settings.SEARCH_LOG_PURGE_BATCH])
        return cursor.rowcount


# --- read (the endpoint) -----------------------------------------------------------------------

def _table_body(organization_id: int, generation: bytes | None) -> bytes:
    rows = list(SearchTop.objects.filter(organization_id=organization_id).order_by("rank")
                .values_list("rank", "query", "searches", "window_start", "window_end"))
    if rows:
        start, end = rows[0][3].isoformat(), rows[0][4].isoformat()
    elif generation:
        start, _, end = generation.decode().partition("/")
    else:
        start = end = None
    return _body(start=start, end=end, rows=[r[:3] for r in rows])


def _fill(client: redis.Redis, organization_id: int, generation: bytes | None) -> bytes | None:
    """Recompute one organization's value if this request wins its lock; None if another has it."""
    token = uuid.uuid4().hex
    lock = _lock_key(organization_id)
    if not client.set(lock, token, nx=True, px=_FILL_LOCK_MS):
        return None
    try:
        body = _table_body(organization_id, generation)
        client.set(org_key(organization_id), (generation or b"") + b"\n" + body,
                   ex=settings.SEARCH_TOP_CACHE_SECONDS)
        return body
    finally:
        client.eval(_RELEASE, 1, lock, token)


def search_top_body(*, organization_id: int) -> bytes:
    """The JSON body of GET /orgs/{id}/search/top (the caller checked access)."""
    client = _redis()
    try:
        generation, value = client.mget(GEN_KEY, org_key(organization_id))
        if value is not None:
            value_generation, _, body = value.partition(b"\n")
            if value_generation == (generation or b""):
                return body  # the hot path: one round trip, nothing parsed
            return _fill(client, organization_id, generation) or body  # stale: served while one recomputes
        body = _fill(client, organization_id, generation)
        deadline = time.monotonic() + _COLD_WAIT_SECONDS
        while body is None and time.monotonic() < deadline:  # another request is filling it
            time.sleep(0.02)
            value = client.get(org_key(organization_id))
            if value is not None:
                body = value.partition(b"\n")[2]
        return body if body is not None else _table_body(organization_id, generation)
    except redis.RedisError:
        logger.warning("search top-10 read from the table (Redis unavailable)", exc_info=True)
        return _table_body(organization_id, None)
