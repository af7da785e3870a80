"""Tracker start and stop as HOT updates (heap-only tuples: the new row version on the same page,
no index entry written). Every start and stop UPDATEs the tracker's row (is_running, started_at,
started_by_id); Postgres can write that update without touching the indexes only when no indexed
column changes and the page has room. started_by_id had Django's foreign-key index, so every event
wrote a new entry into each of the table's four indexes, the full-text GIN index on the name among
them (its to_tsvector computed again), and left the old ones for vacuum: 0 HOT updates of 3,786 in
`bench/capacity.py` (pg_stat_user_tables, 2026-12-04).

- The index on started_by_id goes: nothing reads trackers by who started them; deleting a user
  (SET_NULL, and the foreign-key check) now scans the tracker table, a rare, admin-side cost.
- fillfactor 70: a third of each page is kept free for the new versions, so an update finds room
  on its own page (pruned in passing, without waiting for vacuum). Applies to pages written from
  now on; `VACUUM FULL trackers_tracker` (or pg_repack) rewrites the existing ones.

The index is dropped CONCURRENTLY (writers are not blocked), hence not atomic; the reverse rebuilds
it concurrently under Django's name.
"""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('trackers', '0006_fk_indexes_covered'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "DROP INDEX CONCURRENTLY IF EXISTS trackers_tracker_started_by_id_ee8f6a1a",
                    reverse_sql="CREATE INDEX CONCURRENTLY IF NOT EXISTS trackers_tracker_started_by_id_ee8f6a1a "
                                "ON trackers_tracker (started_by_id)"),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='tracker',
                    name='started_by',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
                ),
            ],
        ),
        migrations.RunSQL("ALTER TABLE trackers_tracker SET (fillfactor = 70)",
                          reverse_sql="ALTER TABLE trackers_tracker RESET (fillfactor)"),
    ]
