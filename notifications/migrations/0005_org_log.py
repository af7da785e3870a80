"""The org log: every tracker event becomes a log entry (kind "tracker.event", same seq), and each
inbox notification points at its entry instead of the tracker event. Audience of migrated entries:
the organization's members today (who they were at the time is not recorded)."""

import django.contrib.postgres.fields
import django.db.models.deletion
import django.db.models.functions.datetime
from django.conf import settings
from django.db import migrations, models

COPY_SQL = """
INSERT INTO notifications_logentry (organization_id, seq, kind, payload, actor_id, actor_name, audience, occurred_at)
SELECT e.organization_id, e.seq, 'tracker.event',
       jsonb_build_object('tracker_id', e.tracker_id, 'tracker_name', t.name, 'action', e.action, 'event_id', e.id),
       e.actor_id, e.actor_name,
       ARRAY(SELECT m.user_id FROM organizations_membership m WHERE m.organization_id = e.organization_id
             ORDER BY m.user_id),
       e.occurred_at
FROM trackers_trackerevent e JOIN trackers_tracker t ON t.id = e.tracker_id;
UPDATE notifications_notification n SET entry_id = l.id
FROM trackers_trackerevent e, notifications_logentry l
WHERE n.event_id = e.id AND l.organization_id = e.organization_id AND l.seq = e.seq;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('notifications', '0004_inapp_streams'),
        ('organizations', '0001_initial'),
        ('trackers', '0002_timeentry_started_by_blank'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='LogEntry',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('seq', models.BigIntegerField()),
                ('kind', models.CharField(max_length=64)),
                ('payload', models.JSONField(blank=True, default=dict)),
                ('actor_name', models.CharField(blank=True, max_length=150)),
                ('audience', django.contrib.postgres.fields.ArrayField(base_field=models.BigIntegerField(), blank=True, default=list, size=None)),
                ('occurred_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
            ],
            options={
                'verbose_name_plural': 'log entries',
            },
        ),
        migrations.AddField(
            model_name='logentry',
            name='actor',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(
            model_name='logentry',
            name='organization',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='log_entries', to='organizations.organization'),
        ),
        migrations.AddField(
            model_name='notification',
            name='entry',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='notifications', to='notifications.logentry'),
        ),
        migrations.RunSQL(COPY_SQL, reverse_sql=migrations.RunSQL.noop),
        migrations.RemoveConstraint(
            model_name='notification',
            name='notification_unique_recipient_event',
        ),
        migrations.RemoveField(
            model_name='notification',
            name='event',
        ),
        migrations.AddConstraint(
            model_name='notification',
            constraint=models.UniqueConstraint(condition=models.Q(('entry__isnull', False)), fields=('recipient', 'entry'), name='notification_unique_recipient_entry'),
        ),
        migrations.AddConstraint(
            model_name='logentry',
            constraint=models.UniqueConstraint(fields=('organization', 'seq'), name='logentry_unique_org_seq'),
        ),
        migrations.AddConstraint(
            model_name='logentry',
            constraint=models.CheckConstraint(condition=models.Q(('seq__gt', 0)), name='logentry_seq_positive'),
        ),
    ]
