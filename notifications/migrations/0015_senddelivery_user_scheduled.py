"""A member's scheduled status rows (they follow the member's zone: notifications.send.schedule),
built CONCURRENTLY: the table takes a row per recipient x channel of every send."""
from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('notifications', '0014_delivery_provider_ref'),
        ('organizations', '0008_database_defaults'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='senddelivery',
            index=models.Index(condition=models.Q(('state', 'scheduled')), fields=['user'], name='senddelivery_user_scheduled'),
        ),
    ]
