"""The claim of a status row (queued -> sent: state, sent_at, updated_at) becomes a HOT update: no
index of notifications_senddelivery has a column it writes in its key or its predicate, so the
update writes no index entry (it wrote one into each of the table's five indexes).

- senddelivery_due (due_at WHERE state = 'scheduled') goes: nothing reads it (beat's dispatcher
  picks sends by notifications_send.due_at, then a send's rows by send_id: senddelivery_unique).
- senddelivery_user_scheduled (user WHERE state = 'scheduled') -> senddelivery_user_due
  (user, due_at WHERE due_at IS NOT NULL): a member's rows not yet due, for a change of zone.
- senddelivery_org_failures (organization, updated_at WHERE state IN ('failed', 'dead')) ->
  senddelivery_org_failed (organization, failed_at WHERE failed_at IS NOT NULL), failed_at a new
  column set when a row becomes failed or dead, backfilled from updated_at.
- fillfactor 50: a page keeps room for a second version of each of its rows (HOT needs the same
  page, and a drain claims a page's rows in one transaction, so none of its old versions can be
  pruned meanwhile: 85 gave 20 % of the claims HOT, 70 43 %, 50 95 %; docs/benchmarks.md). It applies
  to pages written from now on; existing pages stay as they are (no rewrite).

Indexes built and dropped CONCURRENTLY (a row per recipient x channel of every send), hence not
atomic; the new ones are built before the old ones go.
"""
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models

FILLFACTOR = 50


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('notifications', '0019_status_and_inbox_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='senddelivery',
            name='failed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunSQL(
            "UPDATE notifications_senddelivery SET failed_at = updated_at "
            "WHERE state IN ('failed', 'dead') AND failed_at IS NULL",
            reverse_sql=migrations.RunSQL.noop),
        AddIndexConcurrently(
            model_name='senddelivery',
            index=models.Index(condition=models.Q(('failed_at__isnull', False)), fields=['organization', 'failed_at'],
                               name='senddelivery_org_failed'),
        ),
        AddIndexConcurrently(
            model_name='senddelivery',
            index=models.Index(condition=models.Q(('due_at__isnull', False)), fields=['user', 'due_at'],
                               name='senddelivery_user_due'),
        ),
        RemoveIndexConcurrently(model_name='senddelivery', name='senddelivery_org_failures'),
        RemoveIndexConcurrently(model_name='senddelivery', name='senddelivery_due'),
        RemoveIndexConcurrently(model_name='senddelivery', name='senddelivery_user_scheduled'),
        migrations.RunSQL(f"ALTER TABLE notifications_senddelivery SET (fillfactor = {FILLFACTOR})",
                          reverse_sql="ALTER TABLE notifications_senddelivery RESET (fillfactor)"),
    ]
