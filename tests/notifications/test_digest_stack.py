"""A digest window on the real stack (issue 13 #8): Celery beat and workers against the test
database. A member who digests a kind gets none of its sends in their inbox while the window is
open; when it ends, beat's task publishes one digest entry and the in-app worker writes exactly one
inbox row listing the held sends in order; beat's later runs and another publisher add nothing."""
import time

import pytest

from notifications import digests
from notifications.models import Digest, DigestItem, Notification, SendDelivery
from notifications.preferences import digest_set
from notifications.send.services import send_create
from organizations.models import Membership
from organizations.services import organization_create
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import MembershipFactory, UserFactory
from tests.support.stack import DELIVERY_QUEUES, Stack

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]


@pytest.fixture
def stack(transactional_db):
    env = {"SWEEP_INTERVAL_SECONDS": "1", "DELIVERY_STALL_SECONDS": "2", "DIGEST_INTERVAL_SECONDS": "1"}
    with Stack(env=env) as harness:
        harness.start_worker("orgs", DELIVERY_QUEUES)
        harness.start_worker("default", ["default", "maintenance"])
        harness.start_beat()
        harness.wait_ready(timeout=60)
        with harness.dump_logs_on_failure(lines=60):
            yield harness


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_a_digest_window_goes_out_once_through_beat_and_the_workers(stack):
    owner = UserFactory()
    org = organization_create(creator=owner, name="Acme")
    member, colleague = UserFactory(), UserFactory()
    for user in (member, colleague):
        MembershipFactory(organization=org, user=user, role=Membership.Role.MEMBER)
    send_template(org, kind="nudge", category="reminders")
    digest_set(user=member, organization=org, kind="nudge", window="hourly")

    sends = [send_create(organization_id=org.id, recipients=[member.pk, colleague.pk], topic=None, kind="nudge",
                         data={"title": f"nudge {n}", "body": ""}, channels=["inapp"]) for n in (1, 2, 3)]

    assert _wait(lambda: Notification.objects.filter(recipient=colleague, kind="message").count() == 3, 30)
    time.sleep(1.0)  # the member's rows are not sent meanwhile
    assert not Notification.objects.filter(recipient=member).exists()
    assert set(SendDelivery.objects.filter(user=member).values_list("state", flat=True)) == {"digested"}

    DigestItem.objects.update(due_at=DigestItem.objects.first().due_at.replace(year=2020))  # the window ends

    assert _wait(lambda: Notification.objects.filter(recipient=member, kind="digest").exists(), 30)
    assert "notifications.tasks.publish_due_digests" in stack.log("default")  # beat's task published it
    assert digests.digests_publish_due() == 0  # another publisher finds nothing left to send
    time.sleep(2.0)  # beat runs every second: a second digest would arrive now
    [row] = Notification.objects.filter(recipient=member)
    assert row.kind == "digest" and row.title == "3 notifications: nudge"
    assert [line.split(" (#")[0] for line in row.body.splitlines()] == ["• nudge 1", "• nudge 2", "• nudge 3"]
    assert Digest.objects.count() == 1 and not DigestItem.objects.filter(digest__isnull=True).exists()
    assert not Notification.objects.filter(recipient=colleague, kind="digest").exists()
    assert len(sends) == 3
