"""The organization's row as a HOT update (heap-only tuple: no index entry written) on every event.

Each entry of the org log UPDATEs its organization's row (last_event_seq, last_event_at). The
index org_recent_activity is on last_event_at, so every event wrote a new entry into each of the
table's four indexes and left the old ones for vacuum: 0 HOT updates of 3,786 in
`bench/capacity.py` (pg_stat_user_tables, 2026-12-04). last_event_at now moves only when it is a
minute old (notifications.publish, Organization.LAST_EVENT_AT_SQL): the sweeper and the backlog
metric look back days, and an UPDATE that leaves every indexed column as it was can be HOT.
fillfactor 70 keeps a third of each page free for those versions (pages written from now on;
`VACUUM FULL organizations_organization` rewrites the existing ones).
"""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('organizations', '0009_fk_indexes_covered'),
    ]

    operations = [
        migrations.RunSQL("ALTER TABLE organizations_organization SET (fillfactor = 70)",
                          reverse_sql="ALTER TABLE organizations_organization RESET (fillfactor)"),
    ]
