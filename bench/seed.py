"""Set-based seeding of a benchmark database: organizations, members, trackers, Slack settings.

Everything is INSERT ... SELECT generate_series (no per-row round trips), so a million
organizations take tens of seconds, not hours."""
import hashlib
import time

from django.db import connection

from organizations import secrets as herald_secrets


def _written_tables(cur) -> list[str]:
    # Plain tables, partitions included; not a partitioned parent (VACUUM on one goes through every
    # partition, the empty ones too, and the seeding writes none of them).
    cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r' ORDER BY 1")
    tables = [row[0] for row in cur.fetchall()]
    return [t for t in tables if cur.execute(f'SELECT EXISTS (SELECT 1 FROM "{t}")').fetchone()[0]]


def seed(*, active_orgs: int, members: int, total_orgs: int, inactive_members: int, slack_token: str) -> dict:
    """Create `total_orgs` organizations; the first `active_orgs` get `members` members, a tracker
    and Slack settings; the rest get `inactive_members` members and a tracker."""
    started = time.monotonic()
    token_cipher = herald_secrets.encrypt(slack_token)
    with connection.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
        cur.execute(
            """
            INSERT INTO organizations_organization (name, slug, time_zone, last_event_seq, created_at)
            SELECT 'Bench ' || g, 'bench-' || g, 'UTC', 0, now() FROM generate_series(1, %s) g
            """, [total_orgs])
        # Users: active orgs' members first, then the inactive orgs' members.
        active_users = active_orgs * members
        total_users = active_users + (total_orgs - active_orgs) * inactive_members
        cur.execute(
            """
            INSERT INTO organizations_user (password, is_superuser, username, first_name, last_name, email,
                is_staff, is_active, date_joined, time_zone, phone, postal_code, slack_user_id)
            SELECT '!', false, 'bu' || g, '', '', 'bu' || g || '@bench.invalid', false, true, now(), 'UTC',
                   '', '', ''
            FROM generate_series(1, %s) g
            """, [total_users])
        cur.execute("SELECT min(id) FROM organizations_organization")
        org0 = cur.fetchone()[0]
        cur.execute("SELECT min(id) FROM organizations_user")
        user0 = cur.fetchone()[0]
        cur.execute(
            """
            INSERT INTO organizations_membership (organization_id, user_id, role, created_at)
            SELECT %(org0)s + (g / %(m)s), %(user0)s + g,
                   CASE WHEN g %% %(m)s = 0 THEN 'owner' ELSE 'member' END, now()
            FROM generate_series(0, %(n)s - 1) g
            """, {"org0": org0, "user0": user0, "m": members, "n": active_users})
        if inactive_members and total_orgs > active_orgs:
            cur.execute(
                """
                INSERT INTO organizations_membership (organization_id, user_id, role, created_at)
                SELECT %(org0)s + %(a)s + (g / %(m)s), %(user0)s + %(au)s + g, 'member', now()
                FROM generate_series(0, %(n)s - 1) g
                """, {"org0": org0, "a": active_orgs, "m": inactive_members, "user0": user0, "au": active_users,
                      "n": (total_orgs - active_orgs) * inactive_members})
        cur.execute(
            """
            INSERT INTO trackers_tracker (organization_id, name, is_running, created_at)
            SELECT id, 'Main tracker', false, now() FROM organizations_organization
            """)
        cur.execute(
            """
            INSERT INTO organizations_slackintegration (organization_id, channel, token_encrypted, enabled, updated_at)
            SELECT id, 'C' || id, %s, true, now() FROM organizations_organization ORDER BY id LIMIT %s
            """, [token_cipher, active_orgs])
        cur.execute(
            """
            INSERT INTO notifications_deliverystream (organization_id, channel, destination, delivered_seq,
                head_attempts, last_error, on_dead_letter, held, active, updated_at)
            SELECT o.id, c.channel, '', 0, 0, '', 'skip', false, true, now()
            FROM (SELECT id FROM organizations_organization ORDER BY id LIMIT %s) o
            CROSS JOIN (VALUES ('inapp'), ('slack')) c(channel)
            ON CONFLICT (organization_id, channel, destination) DO NOTHING
            """, [active_orgs])
        # One API token per active member, stored hashed exactly as the app stores them.
        tokens: list[tuple[int, int, str]] = []  # (org_id, user_id, token)
        rows = []
        # Bound to the seeded password ('!') exactly as organizations.services binds a token.
        auth_hash = hashlib.sha256(b"!").hexdigest()[:32]
        for i in range(active_users):
            full, prefix, key_hash = herald_secrets.new_key("hut")
            rows.append((user0 + i, prefix, key_hash))
            tokens.append((org0 + i // members, user0 + i, full))
        with cur.copy("COPY organizations_usertoken (user_id, prefix, key_hash, auth_hash, name, created_at) "
                      "FROM STDIN") as copy:
            for user_id, prefix, key_hash in rows:
                copy.write_row((user_id, prefix, key_hash, auth_hash, "bench", "now"))
    # Measure the steady state, not the aftermath of a bulk load: vacuum what was just written (else
    # autovacuum's insert threshold fires on the new million-row tables during the run) and flush it.
    # Only the tables that were written: a deployment's empty tables have never been analyzed, and
    # Postgres plans a never-analyzed table as at least 10 pages. Analyzed empty, it is planned as
    # empty, and a statement prepared then keeps a generic plan of sequential scans while the table
    # grows (with autovacuum off, as on the development machine, nothing analyzes it again).
    with connection.cursor() as cur:
        for table in _written_tables(cur):
            cur.execute(f'VACUUM (ANALYZE) "{table}"')
        cur.execute("CHECKPOINT")
    trackers = dict(
        connection.cursor().execute(
            "SELECT organization_id, id FROM trackers_tracker WHERE organization_id < %s", [org0 + active_orgs]
        ).fetchall()
    )
    return {
        "active_org_ids": list(range(org0, org0 + active_orgs)),
        "trackers": trackers,
        "tokens": tokens,
        "seconds": round(time.monotonic() - started, 1),
        "users": total_users,
        "orgs": total_orgs,
    }
