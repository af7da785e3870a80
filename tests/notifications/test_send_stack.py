"""The send API on the real stack (issue 13 #1, #2, #11): Daphne, a Celery worker on every
delivery queue, real Postgres and Redis. Two concurrent requests with one Idempotency-Key (each
its own HTTP connection, web process thread and database session): one 202, one 409
`idempotency_key_in_use`; exactly one inbox row per recipient, `notification.created` live on
the recipient's socket, the replay answered from Postgres with `Idempotent-Replayed: true`; a
killed worker's redelivered drain adds nothing."""
import threading
import time

import httpx
import psycopg
import pytest

from notifications.models import DeliveryStream, Notification, SendDelivery
from organizations.models import Membership
from organizations.services import api_key_create, organization_create, user_token_create
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import MembershipFactory, UserFactory
from tests.support.liveclient import LiveClient
from tests.support.stack import DELIVERY_QUEUES, Stack, database_url

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]


@pytest.fixture
def stack(transactional_db):
    with Stack(env={"SWEEP_INTERVAL_SECONDS": "1", "DELIVERY_STALL_SECONDS": "2"}) as harness:
        harness.start_daphne("web")
        harness.start_worker("orgs", DELIVERY_QUEUES, concurrency=2)
        harness.wait_ready(timeout=60)
        yield harness


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_two_concurrent_requests_with_one_key_one_202_one_409_and_one_notification_each(stack):
    owner = UserFactory()
    org = organization_create(creator=owner, name="Acme")
    members = [UserFactory() for _ in range(3)]
    for user in members:
        MembershipFactory(organization=org, user=user, role=Membership.Role.MEMBER)
    _, key = api_key_create(organization=org, name="integration", created_by=owner)
    send_template(org)
    socket = LiveClient(stack.ws_url("web"), origin=stack.url("web"), token=user_token_create(user=members[0]))
    socket.start()
    socket.wait_ready()
    body = {"recipients": [u.pk for u in members], "kind": "welcome", "data": {"title": "Hello", "body": "there"}}
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-42"}
    answers: dict[str, httpx.Response] = {}

    def post(name: str) -> None:
        with httpx.Client(base_url=stack.url("web"), timeout=30) as client:
            answers[name] = client.post("/api/v1/send", json=body, headers=headers)

    try:
        # Hold the organization's row (the log's seq counter) from another session: the first request
        # takes the key and then waits inside its transaction, in flight, while the second arrives.
        with psycopg.connect(database_url()) as blocker:
            blocker.execute("SELECT 1 FROM organizations_organization WHERE id = %s FOR UPDATE", [org.pk])
            first = threading.Thread(target=post, args=("first",))
            first.start()
            assert _wait(lambda: _waiting_on_lock(org.pk), 15), "the first request never reached the log"
            post("second")
            blocker.rollback()
        first.join(30)
        assert answers["first"].status_code == 202, answers["first"].text
        assert answers["second"].status_code == 409, answers["second"].text
        assert answers["second"].json()["code"] == "idempotency_key_in_use"

        replay = httpx.post(f"{stack.url('web')}/api/v1/send", json=body, headers=headers, timeout=30)
        assert replay.status_code == 202 and replay.json() == answers["first"].json()
        assert replay.headers["Idempotent-Replayed"] == "true"
        changed = httpx.post(f"{stack.url('web')}/api/v1/send", json={**body, "data": {"title": "Other"}},
                             headers=headers, timeout=30)
        assert changed.status_code == 422 and changed.json()["code"] == "idempotency_key_reused"

        send_id = answers["first"].json()["id"]
        assert _wait(lambda: Notification.objects.filter(kind="message").count() == 3, 30)
        assert _wait(lambda: socket.of_type("notification.created"), 15), socket.snapshot()
        created = socket.of_type("notification.created")
        assert len(created) == 1 and created[0]["title"] == "Hello" and created[0]["kind"] == "message"
        assert created[0]["body"] == "there"
        assert sorted(Notification.objects.filter(kind="message").values_list("recipient_id", flat=True)) == \
            sorted(u.pk for u in members)
        assert set(SendDelivery.objects.filter(send_id=send_id).values_list("state", flat=True)) == {"sent"}
        status = httpx.get(f"{stack.url('web')}/api/v1/send/{send_id}", headers={"Authorization": f"Bearer {key}"})
        assert status.json()["counts"] == {"inapp": {"sent": 3}}
    finally:
        socket.stopping.set()
        socket.join(5)


def _waiting_on_lock(org_id: int) -> bool:
    with psycopg.connect(database_url(), autocommit=True) as conn:
        (n,) = conn.execute("""SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                               AND wait_event_type = 'Lock' AND query ILIKE %s""",
                            ["%organizations_organization%"]).fetchone()
    return n > 0


def test_a_batch_arrives_once_per_recipient_in_inboxes_and_live_also_after_a_redelivered_drain(stack):
    """POST /send/batch through Daphne and the partition workers: every inbox row and every
    `notification.created` exactly once, in request order; a drain redelivered from the start of
    the log (the cursor rolled back, the sweeper re-kicks it) adds nothing, on either."""
    owner = UserFactory()
    org = organization_create(creator=owner, name="Acme")
    members = [UserFactory() for _ in range(3)]
    for user in members:
        MembershipFactory(organization=org, user=user, role=Membership.Role.MEMBER)
    _, key = api_key_create(organization=org, name="integration", created_by=owner)
    send_template(org)
    sockets = [LiveClient(stack.ws_url("web"), origin=stack.url("web"), token=user_token_create(user=u))
               for u in members[:2]]
    for socket in sockets:
        socket.start()
        socket.wait_ready()
    sends = [{"recipients": [u.pk for u in members], "kind": "welcome", "data": {"title": f"n{i}", "body": "b"}}
             for i in range(6)]
    try:
        response = httpx.post(f"{stack.url('web')}/api/v1/send/batch", json={"sends": sends}, timeout=30,
                              headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "batch-1"})
        assert response.status_code == 202, response.text
        ids = [r["id"] for r in response.json()["results"]]
        assert _wait(lambda: Notification.objects.filter(kind="message").count() == 18, 30)
        for socket in sockets:
            assert _wait(lambda s=socket: len(s.of_type("notification.created")) >= 6, 15), socket.snapshot()
        # The drain redelivered from the start of the log (as a retried task after a crash between its
        # writes and its cursor would be): the next batch's kick wakes the stream.
        DeliveryStream.objects.filter(organization=org, channel="inapp").update(delivered_seq=0)
        again = httpx.post(f"{stack.url('web')}/api/v1/send/batch", json={"sends": [{**sends[0], "data": {
            "title": "n6", "body": "b"}}]}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert again.status_code == 202, again.text
        ids.append(again.json()["results"][0]["id"])
        org.refresh_from_db()
        assert _wait(lambda: DeliveryStream.objects.get(organization=org, channel="inapp").delivered_seq
                     == org.last_event_seq, 30)
        for socket in sockets:
            assert _wait(lambda s=socket: len(s.of_type("notification.created")) >= 7, 15), socket.snapshot()
        time.sleep(1)
        expected = [f"n{i}" for i in range(7)]
        for user in members:
            titles = list(Notification.objects.filter(recipient=user, kind="message").order_by("seq")
                          .values_list("title", flat=True))
            assert titles == expected
        for socket in sockets:
            assert [m["title"] for m in socket.of_type("notification.created")] == expected
        assert set(SendDelivery.objects.filter(send_id__in=ids).values_list("state", flat=True)) == {"sent"}
    finally:
        for socket in sockets:
            socket.stopping.set()
            socket.join(5)
