"""The log's clock (notifications.publish): an entry's occurred_at is read when the organization's
row lock is granted, so within one organization it grows with seq even when a later writer's
statement started first and waited for the lock (real Postgres, two connections, commits
included)."""
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction

from notifications.models import LogEntry
from notifications.publish import publish, publish_many
from organizations.models import Organization
from tests.organizations.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _hold_the_lock_then_publish(org_id: int, member_id: int, started: threading.Event, seconds: float) -> None:
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:  # take the row lock first, as a writer ahead would
                cursor.execute("SELECT 1 FROM organizations_organization WHERE id = %s FOR UPDATE", [org_id])
            started.set()
            time.sleep(seconds)
            publish(organization_id=org_id, kind="message", payload={"n": "first"}, audience=[member_id])
    finally:
        connections.close_all()


@pytest.mark.parametrize("many", [True, False])
def test_a_writer_that_waited_for_the_lock_gets_a_later_time_with_its_later_seq(many):
    org = OrganizationFactory()
    member = MembershipFactory(organization=org).user_id
    started = threading.Event()
    ahead = threading.Thread(target=_hold_the_lock_then_publish, args=(org.pk, member, started, 0.3))
    ahead.start()
    assert started.wait(10)
    with transaction.atomic():  # begins (and its statement starts) while the other holds the lock
        if many:
            publish_many(organization_id=org.pk, kind="message", payloads=[{"n": "second"}, {"n": "third"}],
                         audiences=[[member], [member]])
        else:
            publish(organization_id=org.pk, kind="message", payload={"n": "second"}, audience=[member])
    ahead.join(10)
    entries = list(LogEntry.objects.filter(organization=org, kind="message").order_by("seq"))
    assert entries[0].payload == {"n": "first"}
    times = [e.occurred_at for e in entries]
    assert times == sorted(times) and times[0] < times[-1]
    # last_event_at moves at most once a minute (Organization.LAST_EVENT_AT_SQL): the first entry set it
    last_event_at = Organization.objects.get(pk=org.pk).last_event_at
    assert times[0] - timedelta(seconds=1) < last_event_at <= times[0]
