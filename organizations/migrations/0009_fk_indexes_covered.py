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
from django.conf import settings
from django.db import migrations, models

# (table, column, index) as Django named them.
DROPPED = [
    ("organizations_membership", "organization_id", "organizations_membership_organization_id_6889aa64"),
    ("organizations_membership", "user_id", "organizations_membership_user_id_a8e72055"),
    ("organizations_securityevent", "user_id", "organizations_securityevent_user_id_d419652b"),
]


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('organizations', '0008_database_defaults'),
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
                    model_name='membership',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='memberships', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='membership',
                    name='user',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='memberships', to=settings.AUTH_USER_MODEL),
                ),
                migrations.AlterField(
                    model_name='securityevent',
                    name='user',
                    field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
                ),
            ],
        ),
    ]
