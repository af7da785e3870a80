"""The index provider status callbacks look a message up by (Delivery.channel, provider_ref), built
CONCURRENTLY: the deliveries table is written by every worker and must not be locked meanwhile."""
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('notifications', '0013_digests'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='delivery',
            index=models.Index(condition=models.Q(('channel__in', ['sms', 'whatsapp'])), fields=['channel', 'provider_ref'], name='delivery_provider_ref'),
        ),
    ]
