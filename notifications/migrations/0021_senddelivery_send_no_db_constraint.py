"""notifications_senddelivery.send_id loses its database foreign key (the field stays a
ForeignKey, on_delete=CASCADE, which Django's collector applies). Django creates the constraint
DEFERRABLE INITIALLY DEFERRED, so each of a send's rows (one per recipient x channel) cost a
FOR KEY SHARE lookup of its send at COMMIT: ~19 ms of a 200-send batch's commit, and 26 vs 31 us
of Postgres time per notification written (bench/send_api.py --scenario pgcost, docs/benchmarks.md).
The send row is written just before its status rows in the same transaction, so the check
guarded nothing. Dropping the constraint scans nothing but takes a brief ACCESS EXCLUSIVE lock on
both notifications_senddelivery and notifications_send (it waits for their open transactions).
Reversing it re-adds the constraint and validates every row.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('notifications', '0020_senddelivery_hot_claim'),
    ]

    operations = [
        migrations.AlterField(
            model_name='senddelivery',
            name='send',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='deliveries', to='notifications.send'),
        ),
    ]
