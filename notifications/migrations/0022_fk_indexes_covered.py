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
    ("notifications_delivery", "stream_id", "notifications_delivery_stream_id_25139934"),
    ("notifications_deliverystream", "organization_id", "notifications_deliverystream_organization_id_9e9c1a80"),
    ("notifications_logentry", "organization_id", "notifications_logentry_organization_id_834ed986"),
    ("notifications_channeldestination", "organization_id", "notifications_channeldestination_organization_id_d41900fa"),
    ("notifications_dailysendcount", "user_id", "notifications_dailysendcount_user_id_81b23322"),
    ("notifications_notificationtemplate", "organization_id", "notifications_notificationtemplate_organization_id_8a9e0134"),
    ("notifications_device", "user_id", "notifications_device_user_id_57172e7e"),
    ("notifications_send", "organization_id", "notifications_send_organization_id_7cd5aee2"),
    ("notifications_idempotencykey", "organization_id", "notifications_idempotencykey_organization_id_d76c4953"),
    ("notifications_organizationpreference", "organization_id", "notifications_organizationpreference_organization_id_dc897c9f"),
    ("notifications_digest", "user_id", "notifications_digest_user_id_01fcc33e"),
    ("notifications_digestitem", "entry_id", "notifications_digestitem_entry_id_118b7b1b"),
    ("notifications_digestsetting", "organization_id", "notifications_digestsetting_organization_id_3699e954"),
]


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('notifications', '0021_senddelivery_send_no_db_constraint'),
        ('organizations', '0009_fk_indexes_covered'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
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
                    model_name='channeldestination',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='channel_destinations', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='dailysendcount',
                    name='user',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL),
                ),
                migrations.AlterField(
                    model_name='delivery',
                    name='stream',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='deliveries', to='notifications.deliverystream'),
                ),
                migrations.AlterField(
                    model_name='deliverystream',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='delivery_streams', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='device',
                    name='user',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='devices', to=settings.AUTH_USER_MODEL),
                ),
                migrations.AlterField(
                    model_name='digest',
                    name='user',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL),
                ),
                migrations.AlterField(
                    model_name='digestitem',
                    name='entry',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='notifications.logentry'),
                ),
                migrations.AlterField(
                    model_name='digestsetting',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='idempotencykey',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='logentry',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='log_entries', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='notificationtemplate',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='notification_templates', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='organizationpreference',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='send',
                    name='organization',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='sends', to='organizations.organization'),
                ),
            ],
        ),
    ]
