"""Full-text search indexes (reports.search), (organization_id, tsvector) with btree_gin; built
CONCURRENTLY, so writers of big tables never wait."""

import django.contrib.postgres.indexes
from django.contrib.postgres.operations import AddIndexConcurrently, BtreeGinExtension
import django.contrib.postgres.search
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('organizations', '0003_tokens_scopes_invitations_audit'),
        ('trackers', '0004_events_move_to_org_log'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        BtreeGinExtension(),
        AddIndexConcurrently(
            model_name='comment',
            index=django.contrib.postgres.indexes.GinIndex(models.F('organization'), django.contrib.postgres.search.SearchVector('body', config='english'), condition=models.Q(('deleted_at__isnull', True)), name='comment_body_search'),
        ),
        AddIndexConcurrently(
            model_name='timeentry',
            index=django.contrib.postgres.indexes.GinIndex(models.F('organization'), django.contrib.postgres.search.SearchVector('notes', config='english'), condition=models.Q(('notes', ''), _negated=True), name='entry_notes_search'),
        ),
        AddIndexConcurrently(
            model_name='tracker',
            index=django.contrib.postgres.indexes.GinIndex(models.F('organization'), django.contrib.postgres.search.SearchVector('name', config='english'), name='tracker_name_search'),
        ),
    ]
