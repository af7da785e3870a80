"""The activity log of API writes: recording one row per write, and keeping the day partitions.

reports_activitylog is partitioned by range of created_at, one partition per UTC day
(reports_activitylog_pYYYYMMDD). Partitions are created ahead by beat (and on demand if a write
finds none) and attached with ATTACH PARTITION, which does not block writers; old days are
removed with DETACH PARTITION ... CONCURRENTLY and DROP TABLE of the detached table: no DELETE,
no vacuum debt, writers never wait on the purge."""
import datetime as dt
import logging
import re
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connection, transaction

logger = logging.getLogger("herald.activity")

TABLE = "reports_activitylog"
_PARTITION = re.compile(rf"^{TABLE}_p(\d{{8}})$")

_INSERT = f"""
INSERT INTO {TABLE} (organization_id, actor_user_id, actor_api_key_id, actor_name, method, action,
                     object_type, object_id, path, status, ip)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


@dataclass(frozen=True)
class ActivityRecord:
    organization_id: int | None
    actor_user_id: int | None
    actor_api_key_id: int | None
    actor_name: str
    method: str
    action: str
    object_type: str
    object_id: str
    path: str
    status: int
    ip: str | None

    def params(self) -> list:
        return [self.organization_id, self.actor_user_id, self.actor_api_key_id, self.actor_name[:150],
                self.method[:8], self.action[:100], self.object_type[:40], self.object_id[:64], self.path[:255],
                self.status, self.ip]


def activity_record(*, record: ActivityRecord) -> None:
    """One INSERT (a savepoint only inside an outer transaction). Never raises: the write it
    describes has already happened; a lost log line is logged instead."""
    try:
        _insert(record)
    except DatabaseError as exc:
        if "no partition" not in str(exc):
            logger.warning("activity log write failed", extra={"path": record.path}, exc_info=True)
            return
        try:  # beat has not created today's partition (a fresh install, beat down): make it now
            activity_partitions_ensure(days_ahead=1)
            _insert(record)
        except DatabaseError:
            logger.warning("activity log write failed", extra={"path": record.path}, exc_info=True)


def _insert(record: ActivityRecord) -> None:
    if connection.in_atomic_block:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(_INSERT, record.params())
    else:
        with connection.cursor() as cur:
            cur.execute(_INSERT, record.params())


def partition_name(day: dt.date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def _db_today() -> dt.date:
    with connection.cursor() as cur:
        cur.execute("SELECT (now() AT TIME ZONE 'UTC')::date")
        return cur.fetchone()[0]


def activity_partitions() -> list[tuple[str, dt.date, bool]]:
    """(name, day, detach pending) of every partition, oldest first."""
    with connection.cursor() as cur:
        cur.execute("""SELECT c.relname, i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                       WHERE i.inhparent = %s::regclass ORDER BY c.relname""", [TABLE])
        rows = cur.fetchall()
    out = []
    for name, pending in rows:
        match = _PARTITION.match(name)
        if match:
            day = dt.datetime.strptime(match.group(1), "%Y%m%d").date()  # noqa: DTZ007 (a date, no time)
            out.append((name, day, pending))
    return out


def activity_partition_create(*, day: dt.date) -> bool:
    """Create and attach the partition of `day` (UTC) if missing; True if it was created. The
    CHECK constraint matching the bounds lets ATTACH skip its validation scan."""
    name = partition_name(day)
    lo, hi = f"{day.isoformat()} 00:00:00+00", f"{(day + dt.timedelta(days=1)).isoformat()} 00:00:00+00"
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [TABLE])  # one creator at a time
        cur.execute("SELECT to_regclass(%s)", [name])
        if cur.fetchone()[0] is not None:
            return False
        cur.execute(f'CREATE TABLE "{name}" (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
        cur.execute(f"""ALTER TABLE "{name}" ADD CONSTRAINT "{name}_bounds"
                        CHECK (created_at IS NOT NULL AND created_at >= '{lo}' AND created_at < '{hi}')""")
        cur.execute(f"""ALTER TABLE {TABLE} ATTACH PARTITION "{name}" FOR VALUES FROM ('{lo}') TO ('{hi}')""")
        cur.execute(f'ALTER TABLE "{name}" DROP CONSTRAINT "{name}_bounds"')
    return True


def activity_partitions_ensure(*, days_ahead: int | None = None) -> int:
    """Today's partition and the next `days_ahead` days'; returns how many were created."""
    days_ahead = settings.ACTIVITY_PARTITIONS_AHEAD_DAYS if days_ahead is None else days_ahead
    today = _db_today()
    return sum(activity_partition_create(day=today + dt.timedelta(days=n)) for n in range(days_ahead + 1))


def activity_purge(*, keep_days: int | None = None, pause: float | None = None) -> list[str]:
    """Drop every partition whose whole day is older than `keep_days` (default
    ACTIVITY_RETENTION_DAYS); returns the dropped names. Runs outside any transaction: DETACH
    ... CONCURRENTLY needs its own, and that is what keeps writers from waiting."""
    keep_days = settings.ACTIVITY_RETENTION_DAYS if keep_days is None else keep_days
    pause = settings.ACTIVITY_PURGE_PAUSE_SECONDS if pause is None else pause
    if connection.in_atomic_block:
        raise RuntimeError("activity_purge must run in autocommit mode (DETACH ... CONCURRENTLY)")
    cutoff = _db_today() - dt.timedelta(days=keep_days)  # rows before cutoff 00:00 UTC are > keep_days old
    dropped = []
    for name, day, pending in activity_partitions():
        if day >= cutoff:
            break
        with connection.cursor() as cur:
            # A purge interrupted mid-detach leaves it pending: FINALIZE completes that one.
            mode = "FINALIZE" if pending else "CONCURRENTLY"
            cur.execute(f'ALTER TABLE {TABLE} DETACH PARTITION "{name}" {mode}')
            cur.execute(f'DROP TABLE "{name}"')
        dropped.append(name)
        if pause:
            time.sleep(pause)  # one day at a time: the I/O of unlinking a day's files is spread out
    if dropped:
        logger.info("activity partitions dropped", extra={"partitions": dropped})
    return dropped


def activity_maintain() -> dict:
    """The daily beat job: partitions ahead, then the purge."""
    created = activity_partitions_ensure()
    dropped = activity_purge()
    return {"created": created, "dropped": dropped}
