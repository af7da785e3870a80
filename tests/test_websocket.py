"""/ws/ through the real ASGI application and the real Redis channel layer: authentication (token or
session), the hello message, and tenant isolation of org groups."""
from datetime import UTC, datetime

import pytest
import redis
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import transaction
from django.test import Client

from config.asgi import application
from notifications import inbox, kinds, realtime
from notifications import publish as log_publish
from notifications.events import tracker_event_message
from notifications.models import Channel, Notification
from notifications.delivery.fence import stream_deliver
from organizations import services as org_services
from organizations.models import Membership
from tests.notifications.factories import NotificationFactory
from tests.organizations.factories import MembershipFactory, UserFactory
from trackers import services as tracker_services
from trackers.models import Tracker

pytestmark = pytest.mark.django_db(transaction=True)

HEADERS = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
UNAUTHORIZED = 4401
QUIET = 0.5  # seconds to wait for "nothing arrives"


def communicator(query: str = "", cookie: str | None = None) -> WebsocketCommunicator:
    headers = list(HEADERS)
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, f"/ws/{query}", headers=headers)


def token_for(user) -> str:
    return org_services.user_token_create(user=user)


def run(coro_fn):
    """Run an async test body from a sync test; DB calls wrapped in sync_to_async run on this thread."""
    return async_to_sync(coro_fn)()


async def connect_ok(comm: WebsocketCommunicator) -> dict:
    connected, detail = await comm.connect(timeout=3)
    assert connected, f"connection refused with {detail}"
    hello = await comm.receive_json_from(timeout=3)
    assert hello["type"] == "hello"
    return hello


def sample_event(org_id: int, seq: int = 1, notifications: dict | None = None) -> dict:
    return tracker_event_message(
        org_id=org_id, seq=seq, event_id=1000 + seq, tracker_id=7, tracker_name="Main tracker", action="start",
        actor="alice", occurred_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), notifications=notifications,
    )


async def publish(messages):
    # publish() blocks on its own loop thread; keep this loop free meanwhile.
    await sync_to_async(realtime.publish, thread_sensitive=False)(messages)


@pytest.fixture
def two_orgs():
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    org_a = org_services.organization_create(creator=alice, name="A")
    org_b = org_services.organization_create(creator=bob, name="B")
    return org_a, alice, org_b, bob


def test_test_settings_use_a_separate_redis_database():
    assert django_settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] == [django_settings.REDIS_URL]
    assert not django_settings.REDIS_URL.endswith("/0")


def test_anonymous_is_refused():
    async def body():
        comm = communicator()
        connected, code = await comm.connect(timeout=3)
        assert (connected, code) == (False, UNAUTHORIZED)

    run(body)


@pytest.mark.parametrize("token", [
    "garbage",
    "hut_deadbeef_no-such-token",
    "",
    "hut_abcd%00efg_secret",  # a NUL in the prefix must be refused, not crash the handshake
])
def test_bad_token_is_refused(token):
    async def body():
        comm = communicator(f"?token={token}")
        connected, code = await comm.connect(timeout=3)
        assert (connected, code) == (False, UNAUTHORIZED)

    run(body)


def test_token_of_inactive_user_is_refused():
    user = UserFactory(is_active=False)
    token = token_for(user)

    async def body():
        connected, code = await communicator(f"?token={token}").connect(timeout=3)
        assert (connected, code) == (False, UNAUTHORIZED)

    run(body)


def test_valid_token_gets_hello_with_org_ids(two_orgs):
    org_a, alice, org_b, _ = two_orgs
    MembershipFactory(organization=org_b, user=alice, role=Membership.Role.MEMBER)
    token = token_for(alice)

    async def body():
        comm = communicator(f"?token={token}")
        hello = await connect_ok(comm)
        assert set(hello) == {"type", "user_id", "org_ids"}
        assert hello["user_id"] == alice.id
        assert sorted(hello["org_ids"]) == sorted([org_a.id, org_b.id])
        await comm.send_json_to({"type": "ping"})
        assert await comm.receive_json_from(timeout=3) == {"type": "pong"}
        await comm.disconnect()

    run(body)


def test_session_cookie_is_accepted(two_orgs):
    _, alice, _, _ = two_orgs
    browser = Client()
    browser.force_login(alice)
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={browser.cookies[django_settings.SESSION_COOKIE_NAME].value}"

    async def body():
        comm = communicator(cookie=cookie)
        hello = await connect_ok(comm)
        assert hello["user_id"] == alice.id
        await comm.disconnect()

    run(body)


def test_bad_token_does_not_fall_back_to_session(two_orgs):
    _, alice, _, _ = two_orgs
    browser = Client()
    browser.force_login(alice)
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={browser.cookies[django_settings.SESSION_COOKIE_NAME].value}"

    async def body():
        connected, code = await communicator("?token=garbage", cookie=cookie).connect(timeout=3)
        assert (connected, code) == (False, UNAUTHORIZED)

    run(body)


def test_org_group_message_reaches_members_of_that_org_only(two_orgs):
    org_a, alice, org_b, bob = two_orgs
    carol = MembershipFactory(organization=org_a, role=Membership.Role.MEMBER).user
    tokens = {u.username: token_for(u) for u in (alice, bob, carol)}

    async def body():
        comm_alice = communicator(f"?token={tokens['alice']}")
        comm_carol = communicator(f"?token={tokens[carol.username]}")
        comm_bob = communicator(f"?token={tokens['bob']}")
        for comm in (comm_alice, comm_carol, comm_bob):
            await connect_ok(comm)

        await publish([(f"org.{org_a.id}", sample_event(org_a.id, notifications={alice.id: 555}))])

        expected = {"type": "tracker.event", "org_id": org_a.id, "seq": 1, "event_id": 1001, "tracker_id": 7,
                    "tracker_name": "Main tracker", "action": "start", "actor": "alice",
                    "occurred_at": "2030-01-02T03:04:05+00:00"}
        assert await comm_alice.receive_json_from(timeout=3) == expected
        # Only the member the notification belongs to gets notification.created for it.
        created = await comm_alice.receive_json_from(timeout=3)
        assert created["type"] == "notification.created"
        assert (created["id"], created["org_id"], created["seq"]) == (555, org_a.id, 1)
        assert await comm_carol.receive_json_from(timeout=3) == expected
        assert await comm_carol.receive_nothing(timeout=QUIET)
        # Tenant isolation: org B's member hears nothing.
        assert await comm_bob.receive_nothing(timeout=QUIET)

        for comm in (comm_alice, comm_carol, comm_bob):
            await comm.disconnect()

    run(body)


def test_messages_arrive_in_published_order(two_orgs):
    org_a, alice, _, _ = two_orgs
    token = token_for(alice)

    async def body():
        comm = communicator(f"?token={token}")
        await connect_ok(comm)
        await publish([(f"org.{org_a.id}", sample_event(org_a.id, seq=s)) for s in range(1, 21)])
        seqs = [(await comm.receive_json_from(timeout=3))["seq"] for _ in range(20)]
        assert seqs == list(range(1, 21))
        await comm.disconnect()

    run(body)


def test_disconnected_socket_leaves_its_groups(two_orgs):
    """Pub/sub layer: the process subscribes to a group while one of its connections is in it."""
    org_a, alice, _, _ = two_orgs
    token = token_for(alice)
    prefix = django_settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    db = django_settings.REDIS_URL.rsplit("/", 1)[1]
    groups = [f"{prefix}.{db}.__group__org.{org_a.id}", f"{prefix}.{db}.__group__user.{alice.id}"]

    def subscribers() -> list[int]:
        client = redis.Redis.from_url(django_settings.REDIS_URL)
        try:
            return [count for _, count in client.pubsub_numsub(*groups)]
        finally:
            client.close()

    async def body():
        local = get_channel_layer()._get_layer().channels  # this process' connections' queues
        before = set(local)
        comm = communicator(f"?token={token}")
        await connect_ok(comm)
        assert await sync_to_async(subscribers)() == [1, 1]
        assert len(set(local) - before) == 1
        await comm.disconnect()
        assert await sync_to_async(subscribers)() == [0, 0]
        assert set(local) == before  # its own channel closed and unsubscribed too

    run(body)


def test_disconnected_socket_leaves_its_groups_on_the_queue_layer(two_orgs, queue_layer):
    org_a, alice, _, _ = two_orgs
    token = token_for(alice)
    layer = get_channel_layer()
    groups = [layer._group_key(f"org.{org_a.id}"), layer._group_key(f"user.{alice.id}")]

    def members() -> list[int]:
        client = redis.Redis.from_url(django_settings.REDIS_URL)
        try:
            return [client.zcard(key) for key in groups]
        finally:
            client.close()

    async def body():
        comm = communicator(f"?token={token}")
        await connect_ok(comm)
        assert await sync_to_async(members)() == [1, 1]
        await comm.disconnect()
        assert await sync_to_async(members)() == [0, 0]

    run(body)


def test_tracker_start_is_delivered_live_through_the_inapp_stream(two_orgs):
    """End to end without a worker: the service commits the event, the in-app drain fans it out."""
    org_a, alice, _, bob = two_orgs
    tracker = Tracker.objects.get(organization=org_a)
    token_a, token_b = token_for(alice), token_for(bob)

    def start_and_drain():
        event = tracker_services.tracker_start(tracker_id=tracker.id, actor=alice)
        for _ in range(3):  # the first drain may only create the stream
            if stream_deliver(org_id=org_a.id, channel=Channel.INAPP).kind == "delivered":
                break
        return event

    async def body():
        comm_a, comm_b = communicator(f"?token={token_a}"), communicator(f"?token={token_b}")
        await connect_ok(comm_a)
        await connect_ok(comm_b)

        event = await sync_to_async(start_and_drain)()

        message = await comm_a.receive_json_from(timeout=3)
        assert message["type"] == "tracker.event"
        assert (message["org_id"], message["seq"], message["event_id"], message["action"], message["actor"]) == (
            org_a.id, 1, event.id, "start", "alice")
        created = await comm_a.receive_json_from(timeout=3)
        assert created["type"] == "notification.created"
        assert created["title"] == "alice started Main tracker"
        assert await comm_b.receive_nothing(timeout=QUIET)
        await comm_a.disconnect()
        await comm_b.disconnect()

    run(body)
    notification = Notification.objects.get(recipient=alice)
    assert notification.seq == 1
    assert not Notification.objects.filter(recipient=bob).exists()


def test_read_sync_reaches_other_devices_but_not_the_origin(two_orgs):
    org_a, alice, _, _ = two_orgs
    notification = NotificationFactory(organization=org_a, recipient=alice)
    NotificationFactory(organization=org_a, recipient=alice)
    token = token_for(alice)

    async def body():
        phone = communicator(f"?token={token}&client_id=phone")
        laptop = communicator(f"?token={token}&client_id=laptop")
        await connect_ok(phone)
        await connect_ok(laptop)

        await sync_to_async(inbox.notification_mark_read)(notification=notification, origin="phone")

        message = await laptop.receive_json_from(timeout=3)
        assert message == {"type": "notification.read", "ids": [notification.id], "all": False,
                           "unread_count": 1, "origin": "phone"}
        assert await phone.receive_nothing(timeout=QUIET)
        await phone.disconnect()
        await laptop.disconnect()

    run(body)


def test_membership_added_or_removed_takes_effect_on_open_connections(two_orgs):
    org_a, alice, org_b, bob = two_orgs
    token = token_for(bob)

    async def body():
        comm = communicator(f"?token={token}")
        hello = await connect_ok(comm)
        assert hello["org_ids"] == [org_b.id]

        await sync_to_async(org_services.membership_create)(organization=org_a, email=bob.email, role="member")
        assert await comm.receive_json_from(timeout=3) == {"type": "memberships",
                                                            "org_ids": sorted([org_a.id, org_b.id])}
        await publish([(f"org.{org_a.id}", sample_event(org_a.id, seq=1))])
        assert (await comm.receive_json_from(timeout=3))["seq"] == 1

        membership = await sync_to_async(Membership.objects.get)(organization=org_a, user=bob)
        await sync_to_async(org_services.membership_delete)(membership=membership)
        assert await comm.receive_json_from(timeout=3) == {"type": "memberships", "org_ids": [org_b.id]}
        await publish([(f"org.{org_a.id}", sample_event(org_a.id, seq=2))])
        assert await comm.receive_nothing(timeout=QUIET)  # tenant isolation holds without a reconnect
        await comm.disconnect()

    run(body)


def test_an_entry_of_another_kind_reaches_its_audience_and_only_its_seq_reaches_the_others(two_orgs, monkeypatch):
    """Every socket of the organization sees every seq (continuity); only the audience sees the
    entry and gets `notification.created`; server-side fields (audience, ids) never leave."""
    monkeypatch.setitem(kinds.KINDS, "test.note", kinds.Kind(name="test.note", category="tracker_event",
                                                             title=lambda e: f"note {e.payload['n']}"))
    org_a, alice, _, _ = two_orgs
    carol = MembershipFactory(organization=org_a).user
    token_a, token_c = token_for(alice), token_for(carol)

    def publish_and_drain():
        with transaction.atomic():
            entry = log_publish.publish(organization_id=org_a.id, kind="test.note", payload={"n": 7},
                                        audience=[alice.id])
        for _ in range(3):
            if stream_deliver(org_id=org_a.id, channel=Channel.INAPP).kind == "delivered":
                break
        return entry

    async def body():
        comm_a, comm_c = communicator(f"?token={token_a}"), communicator(f"?token={token_c}")
        await connect_ok(comm_a)
        await connect_ok(comm_c)
        entry = await sync_to_async(publish_and_drain)()

        seen = await comm_a.receive_json_from(timeout=3)
        assert (seen["type"], seen["kind"], seen["seq"], seen["payload"]) == ("log.entry", "test.note", entry.seq,
                                                                              {"n": 7})
        assert not {"audience", "notifications"} & set(seen)
        created = await comm_a.receive_json_from(timeout=3)
        assert (created["type"], created["title"]) == ("notification.created", "note 7")
        other = await comm_c.receive_json_from(timeout=3)
        assert other == {"type": "log.entry", "org_id": org_a.id, "seq": entry.seq, "kind": "test.note",
                         "private": True}
        assert await comm_c.receive_nothing(timeout=QUIET)
        await comm_a.disconnect()
        await comm_c.disconnect()

    run(body)
    assert list(Notification.objects.values_list("recipient_id", flat=True)) == [alice.id]
