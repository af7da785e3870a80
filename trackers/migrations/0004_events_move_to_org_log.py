"""Tracker events live in the org log now (notifications 0005 copied them): drop the table."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("trackers", "0003_comments_and_entry_notes"),
        ("notifications", "0005_org_log"),
    ]

    operations = [migrations.DeleteModel(name="TrackerEvent")]
