"""No Herald table keeps a plain btree index whose columns (with their operator classes) lead another
btree index of the same table.

Django gives every foreign key a single-column index; where a composite index or unique constraint
already starts with that column, the narrow one is an index insert per row written and nothing
more, and a plan hazard: a statement prepared while its table is small (new tables, or Postgres with
no statistics yet) gets a generic plan that picks the narrow index and filters every row of the
organization. The idempotency lookup did that, reading all of an organization's keys on each send.
"""
import json

import pytest
from django.db import connection, transaction

from notifications.checks import autovacuum_check
from notifications.send import idempotency

pytestmark = pytest.mark.django_db

APPS = ("organizations_", "trackers_", "notifications_", "reports_")
# The many-to-many tables Django's AbstractUser brings (groups, permissions): not Herald's schema
# to shape, and off every hot path.
DJANGO_OWNED = {"organizations_user_groups", "organizations_user_user_permissions"}

_COVERED_SQL = """
WITH idx AS (
    SELECT i.indexrelid, i.indrelid, c.relname AS tbl,
           string_to_array(i.indkey::text, ' ')::int[] AS cols,
           string_to_array(i.indclass::text, ' ')::oid[] AS opclasses,
           string_to_array(i.indcollation::text, ' ')::oid[] AS collations,
           i.indisunique AS uniq, i.indpred IS NULL AS whole, i.indexprs IS NULL AS plain
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
)
SELECT a.tbl, a.indexrelid::regclass::text, b.indexrelid::regclass::text
FROM idx a
JOIN idx b ON b.indrelid = a.indrelid AND b.indexrelid <> a.indexrelid
WHERE NOT a.uniq AND a.whole AND a.plain AND b.whole AND b.plain
  AND cardinality(a.cols) < cardinality(b.cols) AND b.cols[1:cardinality(a.cols)] = a.cols
  AND b.opclasses[1:cardinality(a.cols)] = a.opclasses AND b.collations[1:cardinality(a.cols)] = a.collations
ORDER BY 1, 2
"""


def test_no_plain_index_is_the_leading_columns_of_another_on_the_same_table():
    with connection.cursor() as cursor:
        cursor.execute(_COVERED_SQL)
        covered = [row for row in cursor.fetchall() if row[0].startswith(APPS) and row[0] not in DJANGO_OWNED]
    assert covered == [], f"(table, redundant index, the index that covers it): {covered}"


def _generic_plan(sql: str, types: str, args: str) -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        # Which index, not whether an index: a table vacuumed empty (autovacuum after earlier tests'
        # rollbacks) is planned as 0 pages, where a sequential scan is cheapest.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute(f"PREPARE herald_plan_probe ({types}) AS {sql}")
        try:
            cursor.execute(f"EXPLAIN (FORMAT JSON) EXECUTE herald_plan_probe ({args})")
            plan = cursor.fetchone()[0]
        finally:
            cursor.execute("DEALLOCATE herald_plan_probe")
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return plan[0]["Plan"]


def test_an_idempotency_lookup_prepared_on_an_empty_table_reads_its_key_not_the_organizations_keys():
    """The plan a pooled connection keeps after its first executions, made while the table had no
    rows (as on a new database): it must look the key up, whatever the table grows to."""
    assert idempotency.LOOKUP_SQL.count("%s") == 2
    sql = idempotency.LOOKUP_SQL.replace("%s", "$1", 1).replace("%s", "$2", 1)
    with transaction.atomic():
        plan = _generic_plan(sql, "smallint, text", "1, 'a-key'")  # psycopg sends a small int as smallint
    assert plan["Node Type"] == "Index Scan", plan
    assert plan["Index Name"] == "idempotency_unique", plan
    assert "key" in plan["Index Cond"], plan


def test_the_database_check_warns_when_autovacuum_is_off():
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('autovacuum'), current_setting('track_counts')")
        settings = cursor.fetchone()
    found = autovacuum_check(databases=["default"])
    if settings == ("on", "on"):
        assert found == []
    else:
        assert [w.id for w in found] == ["herald.W010"]
        assert "autovacuum is off" in found[0].msg
    assert autovacuum_check(databases=None) == []  # plain `check` (no --database) reads no database


def test_the_autovacuum_check_skips_a_database_it_cannot_reach(monkeypatch):
    """A real connection attempt, to a port where nothing listens."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    from tests.support.stack import free_port

    unreachable = DatabaseWrapper({**connection.settings_dict, "HOST": "127.0.0.1", "PORT": free_port(),
                                   "OPTIONS": {"connect_timeout": 2}}, alias="unreachable")
    monkeypatch.setattr("notifications.checks.connections", {"unreachable": unreachable})
    try:
        assert autovacuum_check(databases=["unreachable"]) == []
    finally:
        unreachable.close()
