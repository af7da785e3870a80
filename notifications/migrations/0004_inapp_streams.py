"""Every organization has its in-app stream from the start (organization_create makes it), so the
sweeper can find events whose kick was lost. Existing organizations get theirs here."""
from django.db import migrations

SQL = """
INSERT INTO notifications_deliverystream
    (organization_id, channel, destination, delivered_seq, head_attempts, last_error, on_dead_letter, held,
     updated_at)
SELECT o.id, 'inapp', '', 0, 0, '', 'skip', false, now() FROM organizations_organization o
ON CONFLICT (organization_id, channel, destination) DO NOTHING
"""


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0003_email"),
        ("organizations", "0001_initial"),
    ]

    operations = [migrations.RunSQL(SQL, reverse_sql=migrations.RunSQL.noop)]
