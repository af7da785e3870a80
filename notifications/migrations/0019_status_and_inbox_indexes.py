"""Fewer indexes on the two tables every in-app notification writes (and its status row updates):
each was an index insert per row, on the INSERT and on the non-HOT UPDATE queued -> sent.

- notifications_senddelivery: organization_id and user_id lose their single-column indexes. No query
  reads the table by either alone (their foreign keys are DO_NOTHING: no cascade reads them either);
  a member's and an organization's reads have partial indexes of their own (senddelivery_user_scheduled,
  senddelivery_org_failures).
- notifications_notification: the unique (recipient, entry) index becomes (entry, recipient), which
  serves the LogEntry -> Notification cascade (`WHERE entry_id IN (...)`) and the live backlog's
  (recipient, entries) lookup as well, so entry_id's own index goes; the fan-out inserts in entry order,
  at the index's right edge.

Built and dropped CONCURRENTLY (the tables take a row per recipient x channel), hence not atomic.
"""
from django.conf import settings
from django.db import migrations, models

# The single-column indexes Django made for the foreign keys (its names), as (table, column, name).
DROPPED = {
    "senddelivery": [("notifications_senddelivery", "organization_id", "notifications_senddelivery_organization_id_457242a4"),
                     ("notifications_senddelivery", "user_id", "notifications_senddelivery_user_id_12199dcf")],
    "notification": [("notifications_notification", "entry_id", "notifications_notification_entry_id_1e9f8793")],
}


def _drop(model: str) -> list:
    return [migrations.RunSQL(f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
                              reverse_sql=f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({column})")
            for table, column, name in DROPPED[model]]


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('notifications', '0018_inbox_rows_without_fk_checks'),
        ('organizations', '0008_database_defaults'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=_drop("senddelivery"),
            state_operations=[
                migrations.AlterField(
                    model_name='senddelivery',
                    name='organization',
                    field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=models.deletion.DO_NOTHING,
                                            related_name='+', to='organizations.organization'),
                ),
                migrations.AlterField(
                    model_name='senddelivery',
                    name='user',
                    field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=models.deletion.DO_NOTHING,
                                            related_name='+', to=settings.AUTH_USER_MODEL),
                ),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS notification_unique_entry_recipient "
                    "ON notifications_notification (entry_id, recipient_id) WHERE entry_id IS NOT NULL",
                    reverse_sql="DROP INDEX CONCURRENTLY IF EXISTS notification_unique_entry_recipient"),
                migrations.RunSQL(
                    "DROP INDEX CONCURRENTLY IF EXISTS notification_unique_recipient_entry",
                    reverse_sql="CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS notification_unique_recipient_entry "
                                "ON notifications_notification (recipient_id, entry_id) WHERE entry_id IS NOT NULL"),
                *_drop("notification"),
            ],
            state_operations=[
                migrations.RemoveConstraint(model_name='notification', name='notification_unique_recipient_entry'),
                migrations.AddConstraint(
                    model_name='notification',
                    constraint=models.UniqueConstraint(condition=models.Q(('entry__isnull', False)),
                                                       fields=('entry', 'recipient'),
                                                       name='notification_unique_entry_recipient'),
                ),
                migrations.AlterField(
                    model_name='notification',
                    name='entry',
                    field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True,
                                            on_delete=models.deletion.CASCADE, related_name='notifications',
                                            to='notifications.logentry'),
                ),
            ],
        ),
    ]
