"""Idempotency-Key with Stripe's rules, stored in Postgres in the request's own transaction.

- A key lives 24 h (SEND_IDEMPOTENCY_TTL_SECONDS) per organization.
- While a request with the key runs, it holds a transaction-level advisory lock on (org, key): a
  second request with the key gets 409 `idempotency_key_in_use` at once (pg_try_advisory_xact_lock
  never waits), whichever web process or host it reaches.
- The answer is written in the transaction that did the work, so the key exists exactly when the
  work does: a request that failed (4xx, a crash) leaves nothing and may be retried with the key.
- The same key with the same request (a sha256 of method, path and canonical JSON body) replays
  the stored status and body; with another request it is 422 `idempotency_key_reused`.
"""
import hashlib
import json
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction

from config.errors import ApplicationError, Conflict
from config.rawrows import RowReader
from notifications.errors import NotificationsError
from notifications.models import IdempotencyKey

_KEY_ROW = RowReader(IdempotencyKey, "k")  # written out: every keyed send reads it (config.rawrows)
# By (organization_id, key), idempotency_unique (tests/test_schema_indexes.py: no narrower index of
# the organization alone for a generic plan to pick and filter every key of the organization with).
LOOKUP_SQL = (f"SELECT {_KEY_ROW.columns} FROM notifications_idempotencykey k "
              "WHERE k.organization_id = %s AND k.key = %s AND k.expires_at > now()")

_STORE_SQL = """
INSERT INTO notifications_idempotencykey (organization_id, key, request_hash, status_code, response, created_at,
                                          expires_at)
VALUES (%(org)s, %(key)s, %(hash)s, %(status)s, %(response)s::jsonb, now(), now() + %(ttl)s)
ON CONFLICT (organization_id, key) DO UPDATE
SET request_hash = EXCLUDED.request_hash, status_code = EXCLUDED.status_code, response = EXCLUDED.response,
    created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
WHERE notifications_idempotencykey.expires_at <= now()
"""


def idempotency_key_validate(key: str) -> str:
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise ApplicationError("Idempotency-Key must be 1 to 255 printable ASCII characters.",
                               code=NotificationsError.INVALID_IDEMPOTENCY_KEY,
                               extra={"fields": {"Idempotency-Key": ["1 to 255 printable ASCII characters."]}})
    return key


def request_hash(*, method: str, path: str, body) -> str:
    """The request's fingerprint: the same JSON, whatever its key order or spacing."""
    canonical = json.dumps({"method": method.upper(), "path": path, "body": body}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _lock_id(organization_id: int, key: str) -> int:
    digest = hashlib.sha256(f"herald-idempotency:{organization_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def idempotency_begin(*, organization_id: int, key: str, fingerprint: str) -> IdempotencyKey | None:
    """Inside the request's transaction: claim the key (409 if another request holds it), then
    return its stored answer to replay, or None to go on. 422 for the same key with another
    request."""
    if not connection.in_atomic_block:
        raise RuntimeError("idempotency_begin() must run inside the request's transaction")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_lock_id(organization_id, key)])
        (locked,) = cursor.fetchone()
    if not locked:
        raise Conflict("A request with this Idempotency-Key is still in progress; retry later.",
                       code=NotificationsError.IDEMPOTENCY_KEY_IN_USE)
    # Its own statement, after the lock: its snapshot then includes the answer of a request that
    # held the lock and committed (one statement with the lock would read from before it).
    with connection.cursor() as cursor:
        cursor.execute(LOOKUP_SQL, [organization_id, key])
        row = cursor.fetchone()
    stored = _KEY_ROW.build(row) if row is not None else None
    if stored is not None and stored.request_hash != fingerprint:
        raise ApplicationError("This Idempotency-Key was used with a different request.",
                               code=NotificationsError.IDEMPOTENCY_KEY_REUSED, status=422)
    return stored


def idempotency_store(*, organization_id: int, key: str, fingerprint: str, status_code: int, response: dict) -> None:
    """Record the answer in the request's transaction (replacing an expired record of the key)."""
    with connection.cursor() as cursor:
        cursor.execute(_STORE_SQL, {"org": organization_id, "key": key, "hash": fingerprint, "status": status_code,
                                    "response": json.dumps(response),
                                    "ttl": timedelta(seconds=settings.SEND_IDEMPOTENCY_TTL_SECONDS)})


def idempotency_keys_purge(*, batch: int = 5000) -> int:
    """Delete expired keys in batches (beat), each batch its own short transaction."""
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("""
                DELETE FROM notifications_idempotencykey WHERE id IN (
                    SELECT id FROM notifications_idempotencykey WHERE expires_at <= now()
                    ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)""", [batch])
            deleted = cursor.rowcount
        total += deleted
        if deleted < batch:
            return total
