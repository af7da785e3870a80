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
    ("reports_reportjob", "organization_id", "reports_reportjob_organization_id_8d96899e"),
    ("reports_searchtop", "organization_id", "reports_searchtop_organization_id_1a2328be"),
]


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('organizations', '0009_fk_indexes_covered'),
        ('reports', '0002_search'),
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
                    model_name='reportjob',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='report_jobs', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='searchtop',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='organizations.organization'),
                ),
            ],
        ),
    ]
