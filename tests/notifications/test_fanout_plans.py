"""The fan-outs' statements (the in-app inbox INSERT, the send API's status rows) take array or JSON
parameters, for which Postgres makes a custom plan on every execution: a generic plan, costed for
arrays of unknown length, never looks cheaper. Planning is then paid per drain and per send, and it
grows with the relations in the join search (pg_stat_statements under bench/capacity.py: 2.5 ms of
planning per in-app INSERT with the member and three preference tables joined, more than its
execution). These tests hold the statements to their shape: the per-row lookups (member active,
preferences, digests, streams) are subqueries probed per row, not relations of the join search."""
import json

import pytest
from django.db import connection

from notifications.channels import inapp
from notifications.send import services as send_services

pytestmark = pytest.mark.django_db

LOOKUP_TABLES = {"organizations_user", "notifications_notificationpreference",
                 "notifications_organizationpreference", "notifications_deliverystream"}


def _plan(sql: str, params: dict) -> dict:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        document = cursor.fetchone()[0]
    return (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]


def _joined_relations(node: dict, *, in_subplan: bool = False, out: set | None = None) -> set[str]:
    """Relations scanned by the statement's own join tree (not inside a SubPlan or InitPlan)."""
    out = set() if out is None else out
    sub = in_subplan or node.get("Parent Relationship") in ("SubPlan", "InitPlan")
    if not sub and "Relation Name" in node and node.get("Node Type") != "ModifyTable":
        out.add(node["Relation Name"])
    for child in node.get("Plans", []):
        _joined_relations(child, in_subplan=sub, out=out)
    return out


def _subplan_relations(node: dict, *, in_subplan: bool = False, out: set | None = None) -> set[str]:
    out = set() if out is None else out
    sub = in_subplan or node.get("Parent Relationship") in ("SubPlan", "InitPlan")
    if sub and "Relation Name" in node:
        out.add(node["Relation Name"])
    for child in node.get("Plans", []):
        _subplan_relations(child, in_subplan=sub, out=out)
    return out


def test_inapp_fanout_joins_only_the_log_and_probes_members_and_preferences_per_row():
    plan = _plan(inapp._FANOUT_SQL, {"ids": [1, 2], "titles": ["a", "b"], "bodies": ["", ""],
                                     "categories": ["tracker", "tracker"], "locked": [False, False],
                                     "channel": "inapp"})
    assert _joined_relations(plan) <= {"notifications_logentry", "notifications_digestitem"}
    assert {"organizations_user", "notifications_notificationpreference",
            "notifications_organizationpreference"} <= _subplan_relations(plan)


def test_send_status_rows_probe_preferences_per_row():
    plan = _plan(send_services._ROWS_SQL, {
        "org": 1, "recipients": json.dumps([[0, 1, "en", None]]), "sends": json.dumps([[0, 1, 1, "product", False]]),
        "channels": json.dumps([[0, "inapp", False, "", True, False]]),
    })
    assert not (_joined_relations(plan) & LOOKUP_TABLES)
    assert {"notifications_notificationpreference", "notifications_organizationpreference"} <= _subplan_relations(plan)
