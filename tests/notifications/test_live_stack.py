"""The live feed on the real stack (Daphne, a Celery worker on every delivery queue, Redis,
Postgres): a Daphne frozen (SIGSTOP) while events fire (the queue layer loses what outlives its
expiry; pub/sub holds it in Redis' output buffer, or drops the subscriber past its limit); once it
runs again every socket still ends with every seq of its organization, in order, exactly once, and
each of its member's notifications once. Bursts a worker publishes to a Daphne whose per-connection
queues hold one message reach every socket complete and in order (the overflow is filled from the
log at once). A member removed while connected receives no further message of that organization."""
import time
import uuid

import pytest

from notifications.models import Notification
from organizations.models import Membership, User
from organizations.services import membership_create, membership_delete, organization_create, user_token_create
from tests.support.liveclient import LiveClient
from tests.support.stack import DELIVERY_QUEUES, Stack
from trackers.models import Tracker
from trackers.services import tracker_create, tracker_start, tracker_stop

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

LAYER_EXPIRY = 3  # seconds a message waits in a connection's queue before Redis drops it
STACK_ENV = {"CHANNEL_LAYER_EXPIRY": str(LAYER_EXPIRY), "LIVE_CHECK_SECONDS": "1"}


@pytest.fixture
def stack(transactional_db):
    with Stack(env=STACK_ENV) as harness:
        harness.start_daphne("web")
        harness.start_worker("orgs", DELIVERY_QUEUES)
        harness.wait_ready(timeout=60)
        with harness.dump_logs_on_failure(lines=60):
            yield harness


def make_org(members: int, trackers: int = 2) -> tuple[int, list[User]]:
    run = uuid.uuid4().hex[:8]
    users = [User.objects.create_user(username=f"live-{run}-{j}", email=f"live-{run}-{j}@example.com",
                                      password="unused-password-123") for j in range(members)]
    org = organization_create(creator=users[0], name=f"Live {run}")
    for user in users[1:]:
        membership_create(organization=org, email=user.email, role="member")
    for k in range(1, trackers):
        tracker_create(organization=org, name=f"Tracker {k}")
    return org.id, users


def toggle(org_id: int, actor: User, count: int, pause: float = 0.0) -> None:
    """`count` starts/stops spread over the org's trackers (each commit kicks the in-app stream)."""
    trackers = list(Tracker.objects.filter(organization_id=org_id).order_by("id"))
    for i in range(count):
        tracker = trackers[i % len(trackers)]
        tracker.refresh_from_db()
        (tracker_stop if tracker.is_running else tracker_start)(tracker_id=tracker.id, actor=actor)
        if pause:
            time.sleep(pause)


def connect_all(stack: Stack, users: list[User]) -> list[LiveClient]:
    clients = []
    for user in users:
        client = LiveClient(stack.ws_url("web"), origin=stack.url("web"), token=user_token_create(user=user))
        client.start()
        clients.append(client)
    for client in clients:
        client.wait_ready()
    return clients


def test_a_frozen_daphne_loses_layer_messages_and_every_socket_still_gets_every_seq(stack):
    orgs = [make_org(members=3) for _ in range(2)]
    clients = {org_id: connect_all(stack, users) for org_id, users in orgs}
    try:
        for org_id, users in orgs:
            toggle(org_id, users[0], 4)
        for org_id, group in clients.items():
            for client in group:
                assert client.wait_for(lambda c, o=org_id: c.seqs(o) == [1, 2, 3, 4], timeout=15), client.seqs(org_id)

        stack.pause("web")
        frozen_at = time.monotonic()
        for org_id, users in orgs:
            toggle(org_id, users[1], 6, pause=0.1)
        time.sleep(max(0.0, LAYER_EXPIRY + 3 - (time.monotonic() - frozen_at)))  # past the expiry
        stack.resume("web")

        for org_id, users in orgs:
            toggle(org_id, users[2], 4, pause=0.1)
        expected = list(range(1, 15))
        for org_id, group in clients.items():
            for client in group:
                assert client.wait_for(lambda c, o=org_id: len(c.seqs(o)) >= len(expected), timeout=30)
        time.sleep(1.5)  # anything extra (a duplicate) would arrive by now
        for (org_id, users), group in zip(orgs, clients.values(), strict=True):
            for user, client in zip(users, group, strict=True):
                assert client.seqs(org_id) == expected, (user.username, client.seqs(org_id))
                inbox = list(Notification.objects.filter(recipient=user).order_by("seq").values_list("id", flat=True))
                assert [f["id"] for f in client.of_type("notification.created")] == inbox
                assert len(inbox) == len(expected)
    finally:
        for group in clients.values():
            for client in group:
                client.stop()


@pytest.fixture
def small_queue_stack(transactional_db):
    # The periodic check far away: only the layer's gap marker can repair an overflow in time.
    with Stack(env={"CHANNEL_LAYER_CAPACITY": "1", "LIVE_CHECK_SECONDS": "60"}) as harness:
        harness.start_daphne("web")
        harness.start_worker("orgs", DELIVERY_QUEUES)
        harness.wait_ready(timeout=60)
        with harness.dump_logs_on_failure(lines=60):
            yield harness


def test_bursts_from_a_worker_to_small_daphne_queues_keep_every_seq_in_order(small_queue_stack):
    orgs = [make_org(members=3) for _ in range(2)]
    clients = {org_id: connect_all(small_queue_stack, users) for org_id, users in orgs}
    try:
        for org_id, users in orgs:
            toggle(org_id, users[0], 12)  # committed faster than drained: the worker publishes runs
        expected = list(range(1, 13))
        for org_id, group in clients.items():
            for client in group:
                assert client.wait_for(lambda c, o=org_id: len(c.seqs(o)) >= len(expected), timeout=30), \
                    client.seqs(org_id)
        time.sleep(1.5)  # anything extra (a duplicate) would arrive by now
        for (org_id, users), group in zip(orgs, clients.values(), strict=True):
            for user, client in zip(users, group, strict=True):
                assert client.seqs(org_id) == expected, (user.username, client.seqs(org_id))
                inbox = list(Notification.objects.filter(recipient=user).order_by("seq").values_list("id", flat=True))
                assert [f["id"] for f in client.of_type("notification.created")] == inbox
    finally:
        for group in clients.values():
            for client in group:
                client.stop()


def _org_frames(client: LiveClient, org_id: int) -> list[dict]:
    return [f for f in client.snapshot() if f.get("org_id") == org_id and f.get("type") != "memberships"]


@pytest.mark.parametrize("how", ["service", "without_push"])
def test_a_member_removed_while_connected_receives_no_further_message(stack, how):
    """`without_push`: the membership row goes away with no push at all (a lost push, a delete in
    the database); entries written after it leave the member out, and the connection re-reads its
    memberships before it would show them."""
    org_id, users = make_org(members=3)
    alice, bob, carol = users
    clients = connect_all(stack, users)
    try:
        toggle(org_id, alice, 2)
        for client in clients:
            assert client.wait_for(lambda c: c.seqs(org_id) == [1, 2], timeout=15), client.seqs(org_id)
        before = len(_org_frames(clients[1], org_id))

        membership = Membership.objects.get(organization_id=org_id, user=bob)
        if how == "service":
            membership_delete(membership=membership)
        else:
            Membership.objects.filter(pk=membership.pk).delete()
        toggle(org_id, carol, 3)

        for client in (clients[0], clients[2]):
            assert client.wait_for(lambda c: c.seqs(org_id) == [1, 2, 3, 4, 5], timeout=15), client.seqs(org_id)
        assert clients[1].wait_for(lambda c: c.of_type("memberships"), timeout=5)
        time.sleep(2)  # two live checks
        assert clients[1].of_type("memberships")[-1] == {"type": "memberships", "org_ids": []}
        after_removal = _org_frames(clients[1], org_id)[before:]
        if how == "service":
            assert after_removal == []
        else:  # no push: at most the bare seq of an entry, within one check interval, never content
            assert all(f.get("private") and set(f) == {"type", "org_id", "seq", "kind", "private"}
                       for f in after_removal), after_removal
        toggle(org_id, carol, 2)  # and nothing at all once the connection has re-read memberships
        assert clients[0].wait_for(lambda c: len(c.seqs(org_id)) == 7, timeout=15)
        time.sleep(1)
        assert _org_frames(clients[1], org_id)[before:] == after_removal
    finally:
        for client in clients:
            client.stop()
