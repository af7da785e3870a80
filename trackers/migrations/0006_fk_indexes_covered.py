"""The single-column indexes Django made for foreign keys whose column already leads a composite index
or unique constraint of the same table (e.g. idempotency (organization_id) beside idempotency_unique
(organization_id, key)). Each was an index insert per row written, and a plan hazard: a statement
prepared while a table was small (or never analyzed) could take the narrow index and filter every
row of the organization (the idempotency lookup read all of an organization's keys on every send).
The composite index serves every lookup, cascade and foreign-key check the narrow one did.

Dropped CONCURRENTLY (hot tables: writers are not blocked), hence not atomic; the reverse rebuilds
them concurrently under Django's names.
"""
import django.db.models.deletion
from django.db import migrations, models

# (table, column, index) as Django named them.
DROPPED = [
    ("trackers_tracker", "organization_id", "trackers_tracker_organization_id_262cfb9a"),
    ("trackers_timeentry", "organization_id", "trackers_timeentry_organization_id_51e72f44"),
    ("trackers_comment", "root_id", "trackers_comment_root_id_a81c9ddf"),
]


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('organizations', '0009_fk_indexes_covered'),
        ('trackers', '0005_search_indexes'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
                                  reverse_sql=f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({column})")
                for table, column, name in DROPPED
            ],
            state_operations=[
                migrations.AlterField(
                    model_name='comment',
                    name='root',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='trackers.comment'),
                ),
                migrations.AlterField(
                    model_name='timeentry',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='time_entries', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='tracker',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='trackers', to='organizations.organization'),
                ),
            ],
        ),
    ]
