"""Retention: notifications and delivery records older than NOTIFICATION_RETENTION_DAYS are
archived to compressed files through Django's storage API and removed from the hot tables.

Each table goes in batches of NOTIFICATION_RETENTION_BATCH rows, oldest id first, one short
transaction per batch: the batch is locked with FOR UPDATE SKIP LOCKED (a writer touching an old
row, e.g. marking it read, is never waited for: that row is skipped and goes next time), written
as one gzipped JSON-lines file (every column, one row per line), then deleted by primary key. The
file is saved before the delete commits, so a crash loses nothing: at worst a batch is archived
twice and a reader keeps the last copy of an id. Rows still in flight (a pending delivery) stay.
The cutoff comes from Postgres' clock. Beat runs it daily (settings.CELERY_BEAT_SCHEDULE).

A table joins by one entry in RETAINED (model label, its time column, which rows may go).
"""
import gzip
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.apps import apps
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Q

logger = logging.getLogger("herald.retention")


@dataclass(frozen=True)
class Retained:
    model: str  # app_label.Model
    time_field: str
    may_go: Q = field(default_factory=Q)  # rows still needed (in flight) stay whatever their age


RETAINED: list[Retained] = [
    Retained("notifications.Notification", "created_at"),
    Retained("notifications.Delivery", "created_at", ~Q(status="pending")),
    # Send API status rows (recipient x channel) that can no longer change.
    Retained("notifications.SendDelivery", "created_at", ~Q(state__in=["queued", "scheduled", "deferred", "failed"])),
]


@dataclass
class Archived:
    model: str
    rows: int = 0
    files: list[str] = field(default_factory=list)


def _db_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def _storage():
    return storages[settings.NOTIFICATION_ARCHIVE_STORAGE]


def _file_name(model: str, day, first_id: int, last_id: int) -> str:
    label = model.replace(".", "/").lower()
    return f"{settings.NOTIFICATION_ARCHIVE_PREFIX}/{label}/{day:%Y/%m/%d}/{first_id:012d}-{last_id:012d}.jsonl.gz"


def _write(name: str, rows: list[dict]) -> str:
    body = "".join(json.dumps(row, cls=DjangoJSONEncoder, separators=(",", ":")) + "\n" for row in rows)
    storage = _storage()
    if storage.exists(name):  # the same batch archived before a crash: replace, never "name_abc123"
        storage.delete(name)
    return storage.save(name, ContentFile(gzip.compress(body.encode(), compresslevel=6)))


def _archive_batch(spec: Retained, cutoff, batch: int) -> tuple[int, str | None]:
    model = apps.get_model(spec.model)
    with transaction.atomic():
        rows = list(model.objects.select_for_update(skip_locked=True)
                    .filter(spec.may_go, **{f"{spec.time_field}__lt": cutoff})
                    .order_by("pk").values()[:batch])
        if not rows:
            return 0, None
        ids = [row["id"] for row in rows]
        name = _write(_file_name(spec.model, cutoff, ids[0], ids[-1]), rows)
        # Through the ORM so rows that point at these (e.g. an email deferral of a delivery) go too.
        model.objects.filter(pk__in=ids).delete()
    return len(rows), name


def notifications_archive(*, days: int | None = None, batch: int | None = None, pause: float | None = None,
                          max_batches: int | None = None) -> list[Archived]:
    """Archive and remove every retained table's rows older than `days`; returns what it did."""
    days = settings.NOTIFICATION_RETENTION_DAYS if days is None else days
    batch = settings.NOTIFICATION_RETENTION_BATCH if batch is None else batch
    pause = settings.NOTIFICATION_RETENTION_PAUSE_SECONDS if pause is None else pause
    if days < 1 or batch < 1:
        raise ValueError("retention needs days >= 1 and batch >= 1")
    cutoff = _db_now() - timedelta(days=days)
    done = []
    for spec in RETAINED:
        archived = Archived(model=spec.model)
        while max_batches is None or len(archived.files) < max_batches:
            count, name = _archive_batch(spec, cutoff, batch)
            if not count:
                break
            archived.rows += count
            archived.files.append(name)
            if count < batch:
                break
            if pause:
                time.sleep(pause)  # let writers and autovacuum breathe between batches
        if archived.rows:
            logger.info("archived", extra={"model": spec.model, "rows": archived.rows, "files": len(archived.files)})
        done.append(archived)
    return done


def archive_read(name: str) -> list[dict]:
    """The rows of one archive file (operators restoring or auditing)."""
    with _storage().open(name, "rb") as handle:
        return [json.loads(line) for line in gzip.decompress(handle.read()).decode().splitlines() if line]
