"""DeliveryStream.user: the member a per-recipient stream's destination belongs to, so the send
API's fan-out asks "has this member an active stream on this channel" whatever the destination's
form (email / sms / whatsapp: the user id; push: a device id). Existing streams are filled in."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


# Destinations as the channels of this release spell them: a user id (email, sms, whatsapp) or a
# device id (push). Organization-wide streams (inapp, slack, webhook, apprise) keep NULL.
BACKFILL = """
UPDATE notifications_deliverystream s SET user_id = u.id
FROM organizations_user u
WHERE s.channel IN ('email', 'sms', 'whatsapp') AND s.destination ~ '^[0-9]{1,18}$'
  AND u.id = s.destination::bigint;
UPDATE notifications_deliverystream s SET user_id = d.user_id
FROM notifications_device d
WHERE s.channel = 'push' AND s.destination ~ '^[0-9]{1,18}$' AND d.id = s.destination::bigint;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('notifications', '0010_send'),
        ('organizations', '0008_database_defaults'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='deliverystream',
            name='user',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
        migrations.AddIndex(
            model_name='deliverystream',
            index=models.Index(condition=models.Q(('active', True)), fields=['organization', 'channel', 'user'], name='stream_member_active'),
        ),
    ]
