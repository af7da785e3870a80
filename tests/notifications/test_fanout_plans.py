"""The fan-outs' statements (the in-app inbox INSERT, the send API's status rows) take array or JSON
parameters, for which Postgres makes a custom plan on every execution: a generic plan, costed for
arrays of unknown length, never looks cheaper. Planning is then paid per drain and per send, and it
grows with the relations in the join search (pg_stat_statements under bench/capacity.py: 2.5 ms of
planning per in-app INSERT with the member and three preference tables joined, more than its
execution). These tests hold the statements to their shape: the per-row lookups (member active,
preferences, digests, streams) are subqueries probed per row, not relations of the join search.

Statements whose parameters need not change the plan are written so that Postgres takes a generic
plan after psycopg prepared them (DB_PREPARE_THRESHOLD executions on a connection): the log append
of publish() with an audience, and the members a send names by id."""
import json

import pytest
from django.conf import settings
from django.db import connection, transaction

from notifications import publish
from notifications.channels import inapp
from notifications.models import Notification
from notifications.send import services as send_services
from organizations.models import Membership, User

pytestmark = pytest.mark.django_db

LOOKUP_TABLES = {"organizations_user", "notifications_notificationpreference",
                 "notifications_organizationpreference", "notifications_deliverystream"}


def _plan(sql: str, params: dict) -> dict:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        document = cursor.fetchone()[0]
    return (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]


def _relations(node: dict, *, in_subplan: bool = False, out: tuple[set, set] | None = None) -> tuple[set, set]:
    """(relations scanned by the statement's own join tree, relations scanned inside a SubPlan or
    InitPlan)."""
    out = (set(), set()) if out is None else out
    sub = in_subplan or node.get("Parent Relationship") in ("SubPlan", "InitPlan")
    if "Relation Name" in node and node.get("Node Type") != "ModifyTable":
        out[1 if sub else 0].add(node["Relation Name"])
    for child in node.get("Plans", []):
        _relations(child, in_subplan=sub, out=out)
    return out


def test_inapp_fanout_joins_only_the_log_and_probes_members_and_preferences_per_row():
    plan = _plan(inapp._FANOUT_SQL, {"ids": [1, 2], "titles": ["a", "b"], "bodies": ["", ""],
                                     "categories": ["tracker", "tracker"], "locked": [False, False],
                                     "channel": "inapp"})
    joined, probed = _relations(plan)
    assert joined <= {"notifications_logentry", "notifications_digestitem"}
    assert {"organizations_user", "notifications_notificationpreference",
            "notifications_organizationpreference"} <= probed


def test_send_status_rows_probe_preferences_per_row():
    plan = _plan(send_services._ROWS_SQL, {
        "org": 1, "recipients": json.dumps([[0, 1, "en", None]]), "sends": json.dumps([[0, 1, 1, "product", False]]),
        "channels": json.dumps([[0, "inapp", False, "", True, False]]),
    })
    joined, probed = _relations(plan)
    assert not (joined & LOOKUP_TABLES)
    assert {"notifications_notificationpreference", "notifications_organizationpreference"} <= probed


def _plans(fragment: str) -> tuple[int, int]:
    """(generic, custom) plans so far of this connection's prepared statement containing `fragment`."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
                       [f"%{fragment}%"])
        rows = cursor.fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def _threshold() -> int:
    threshold = settings.DATABASES["default"].get("OPTIONS", {}).get("prepare_threshold")
    if not threshold:
        pytest.skip("statements are not prepared (DB_PREPARE_THRESHOLD empty)")
    return threshold


@pytest.fixture
def populated(org_with_members):
    """Tables with the statistics of a deployment: many members, analyzed (on an empty, never
    analyzed table the planner guesses, and either plan looks alike)."""
    users = User.objects.bulk_create([User(username=f"bulk{i}", email=f"bulk{i}@example.com") for i in range(600)])
    Membership.objects.bulk_create([Membership(organization=org_with_members.org, user=u) for u in users])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE organizations_user, organizations_membership")
    return org_with_members


def test_publish_with_an_audience_gets_a_generic_plan(populated):
    org_with_members = populated
    runs = _threshold() + 8
    audience = [org_with_members.admin.pk, org_with_members.member.pk]
    with transaction.atomic():
        for _ in range(runs):
            publish.publish(organization_id=org_with_members.org.id, kind="tracker.event", audience=audience,
                            payload={"tracker_id": 1, "tracker_name": "Main", "action": "start"})
    generic, custom = _plans("INSERT INTO notifications_logentry")
    assert generic >= 3, (generic, custom)


def test_members_named_by_id_get_a_generic_plan(populated):
    org_with_members = populated
    runs = _threshold() + 8
    # Ten recipients, as the benchmark's sends: Postgres costs a generic plan's array as ten elements,
    # so with far fewer a custom plan can look cheaper (this statement's is cheap to make: 0.13 ms).
    ids = sorted(Membership.objects.filter(organization=org_with_members.org).values_list("user_id", flat=True))[:10]
    for _ in range(runs):
        rows = send_services._members_read(organization_id=org_with_members.org.id, everyone=False, ids=ids, emails=[])
        assert [row[0] for row in rows] == ids
    generic, custom = _plans("lower(u.email), u.time_zone")
    assert generic >= 3, (generic, custom)


def test_inapp_fanout_of_one_entry_gets_a_generic_plan(populated):
    """A drain of one entry (the usual run under load) passes it as scalars: Postgres keeps the
    generic plan and stops planning the INSERT per drain (0.5 ms of planning per call, 2026-12-04)."""
    org_with_members = populated
    runs = _threshold() + 8
    audience = [org_with_members.admin.pk, org_with_members.member.pk]
    channel = inapp.InAppChannel("inapp", {})
    with transaction.atomic():
        for _ in range(runs):
            entry = publish.publish(organization_id=org_with_members.org.id, kind="tracker.event", audience=audience,
                                    payload={"tracker_id": 1, "tracker_name": "Main", "action": "start"})
            published = channel.apply(organization_id=org_with_members.org.id, entries=[entry])
            assert published.rows == 2
            assert set(published.messages[0][1]["notifications"]) == {str(pk) for pk in audience}
    generic, custom = _plans("::boolean) AS v(entry_id")
    assert generic >= 3, (generic, custom)


def test_inapp_fanout_of_one_entry_and_of_several_write_the_same_rows(org_with_members):
    audience = [org_with_members.admin.pk, org_with_members.member.pk, org_with_members.owner.pk]
    channel = inapp.InAppChannel("inapp", {})
    with transaction.atomic():
        entries = [publish.publish(organization_id=org_with_members.org.id, kind="tracker.event", audience=audience,
                                   payload={"tracker_id": 1, "tracker_name": "Main", "action": action})
                   for action in ("start", "stop", "start")]
        one = channel.apply(organization_id=org_with_members.org.id, entries=entries[:1])
        several = channel.apply(organization_id=org_with_members.org.id, entries=entries[1:])
        again = channel.apply(organization_id=org_with_members.org.id, entries=entries[:1])  # idempotent
    assert (one.rows, several.rows, again.rows) == (3, 6, 0)
    rows = Notification.objects.filter(entry_id__in=[e.id for e in entries]).values_list(
        "entry_id", "recipient_id", "seq", "title")
    titles = {message["event_id"]: message["title"] for _, message in one.messages + several.messages}
    assert sorted(rows) == sorted((e.id, pk, e.seq, titles[e.id]) for e in entries for pk in audience)
    assert {message["notifications"][str(audience[0])] for _, message in several.messages} == set(
        Notification.objects.filter(entry_id__in=[e.id for e in entries[1:]], recipient_id=audience[0])
        .values_list("id", flat=True))
