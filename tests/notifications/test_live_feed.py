"""The lossless live feed (DESIGN.md rule 6) through the real ASGI application, the real Redis
channel layer and Postgres: a connection's gaps (a seq jump, a lost tail, messages that cross,
the window before connect) are filled from the org log in seq order, each seq and each
notification exactly once; too large a gap is a `resync`; groups are re-joined before
channels-redis forgets them; a removed member stops receiving even when the push is lost.

The in-app drain runs in the test (no worker); the channel layer "losing" a message is played by
a publish that drops the chosen seqs, as capacity or expiry would."""
import asyncio
import time
from datetime import datetime, timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from django.db import transaction

from config.admission import LiveLag
from config.asgi import application
from notifications import consumers, publish, realtime
from notifications.models import Channel, Notification
from notifications.delivery.fence import stream_deliver
from organizations import services as org_services
from organizations.models import Membership
from tests.organizations.factories import UserFactory
from trackers import services as tracker_services
from trackers.models import Tracker

pytestmark = pytest.mark.django_db(transaction=True)

HEADERS = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
QUIET = 0.5


@pytest.fixture
def org(transactional_db):
    alice, carol = UserFactory(username="alice"), UserFactory(username="carol")
    organization = org_services.organization_create(creator=alice, name="Live")
    org_services.membership_create(organization=organization, email=carol.email, role="member")
    return organization, alice, carol


@pytest.fixture
def lossy(monkeypatch):
    """Drops group messages whose seq is in `lossy.drop`, holds those in `lossy.hold` until
    `lossy.release()`; everything else is published as usual."""
    real = realtime.publish

    class Lossy:
        drop: set[int] = set()
        hold: set[int] = set()
        held: list = []
        drop_types: set[str] = set()

        def publish(self, messages, timeout: float = 10.0):
            keep = []
            for group, message in messages:
                if message.get("type") in self.drop_types or message.get("seq") in self.drop:
                    continue
                if message.get("seq") in self.hold:
                    self.held.append((group, message))
                    continue
                keep.append((group, message))
            real(keep, timeout)

        def release(self):
            held, self.held = self.held, []
            real(held)

    fake = Lossy()
    fake.drop, fake.hold, fake.held, fake.drop_types = set(), set(), [], set()
    monkeypatch.setattr(realtime, "publish", fake.publish)
    return fake


def run(coro_fn):
    return async_to_sync(coro_fn)()


def token_for(user) -> str:
    return org_services.user_token_create(user=user)


async def connect(user_token: str, query: str = "") -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, f"/ws/?token={user_token}{query}", headers=HEADERS)
    connected, detail = await comm.connect(timeout=3)
    assert connected, detail
    hello = await comm.receive_json_from(timeout=3)
    assert hello["type"] == "hello"
    return comm


def _toggle_and_drain(org_id: int, actor, count: int) -> None:
    """`count` starts/stops of the org's tracker, each drained on its own (one publish per seq)."""
    tracker = Tracker.objects.filter(organization_id=org_id).order_by("id").first()
    for _ in range(count):
        tracker.refresh_from_db()
        change = tracker_services.tracker_stop if tracker.is_running else tracker_services.tracker_start
        change(tracker_id=tracker.id, actor=actor)
        _drain(org_id)


def _drain(org_id: int) -> None:
    for _ in range(5):  # the first drain may only create the stream
        if stream_deliver(org_id=org_id, channel=Channel.INAPP).kind in ("delivered", "idle"):
            if stream_deliver(org_id=org_id, channel=Channel.INAPP).kind == "idle":
                return


toggle_and_drain = sync_to_async(_toggle_and_drain)


async def receive_all(comm: WebsocketCommunicator, quiet: float = QUIET) -> list[dict]:
    """Every frame until none comes for `quiet` seconds (receive_nothing: a timed-out receive would
    cancel the application)."""
    frames = []
    while not await comm.receive_nothing(timeout=quiet, interval=0.02):
        frames.append(await comm.receive_json_from(timeout=1))
    return frames


def seqs(frames: list[dict], type_: str = "tracker.event") -> list[int]:
    return [f["seq"] for f in frames if f["type"] == type_]


def notification_ids(user) -> list[int]:
    return list(Notification.objects.filter(recipient=user).order_by("seq").values_list("id", flat=True))


def test_a_seq_jump_is_filled_from_the_log_in_order(org, lossy):
    organization, alice, carol = org
    lossy.drop = {2, 3}

    async def body():
        comm = await connect(await sync_to_async(token_for)(carol))
        await toggle_and_drain(organization.id, alice, 4)
        frames = await receive_all(comm)
        assert seqs(frames) == [1, 2, 3, 4]
        # carol's own inbox rows, each announced once, right after its entry
        created = [f for f in frames if f["type"] == "notification.created"]
        assert [f["id"] for f in created] == await sync_to_async(notification_ids)(carol)
        assert [f["seq"] for f in created] == [1, 2, 3, 4]
        assert created[1]["title"] == "alice stopped Main tracker"
        assert [f["type"] for f in frames] == ["tracker.event", "notification.created"] * 4
        await comm.disconnect()

    run(body)


def test_messages_that_cross_are_forwarded_once_in_seq_order(org, lossy):
    """Two drains publish after their commits, so the second's message can arrive first."""
    organization, alice, carol = org
    lossy.hold = {2}

    async def body():
        comm = await connect(await sync_to_async(token_for)(carol))
        await toggle_and_drain(organization.id, alice, 3)
        await sync_to_async(lossy.release)()  # seq 2's message arrives after 3's
        frames = await receive_all(comm)
        assert seqs(frames) == [1, 2, 3]
        assert seqs(frames, "notification.created") == [1, 2, 3]
        await comm.disconnect()

    run(body)


def test_a_lost_tail_is_filled_by_the_periodic_check(org, lossy, settings):
    settings.LIVE_CHECK_SECONDS = 0.2
    organization, alice, carol = org
    lossy.drop = {2, 3}  # nothing after them reveals the gap

    async def body():
        comm = await connect(await sync_to_async(token_for)(carol))
        await toggle_and_drain(organization.id, alice, 3)
        frames = await receive_all(comm, quiet=1.5)
        assert seqs(frames) == [1, 2, 3]
        assert seqs(frames, "notification.created") == [1, 2, 3]
        await comm.disconnect()

    run(body)


def test_a_gap_larger_than_the_limit_asks_the_client_to_resync(org, lossy, settings):
    settings.LIVE_GAP_MAX = 2
    organization, alice, carol = org
    lossy.drop = {2, 3, 4}

    async def body():
        comm = await connect(await sync_to_async(token_for)(carol))
        await toggle_and_drain(organization.id, alice, 5)
        frames = [f for f in await receive_all(comm) if f["type"] != "notification.created"]
        assert frames[0]["seq"] == 1
        assert frames[1] == {"type": "resync", "org_id": organization.id}
        assert [f["seq"] for f in frames[2:]] == [5]
        await comm.disconnect()

    run(body)


def test_connect_with_after_replays_what_happened_since_before_any_live_message(org):
    organization, alice, carol = org

    async def body():
        await toggle_and_drain(organization.id, alice, 3)  # while the page was loading
        comm = await connect(await sync_to_async(token_for)(carol), f"&after={organization.id}:1,999999:5,bad")
        await toggle_and_drain(organization.id, alice, 1)
        frames = await receive_all(comm)
        assert seqs(frames) == [2, 3, 4]
        assert seqs(frames, "notification.created") == [2, 3, 4]
        await comm.disconnect()

    run(body)


def test_a_resume_frame_replays_from_the_given_seq(org):
    organization, alice, carol = org

    async def body():
        await toggle_and_drain(organization.id, alice, 2)
        comm = await connect(await sync_to_async(token_for)(carol))
        assert await comm.receive_nothing(timeout=QUIET)  # no after: live from now on
        await comm.send_json_to({"type": "resume", "after": {str(organization.id): 0}})
        frames = await receive_all(comm)
        assert seqs(frames) == [1, 2]
        await comm.disconnect()

    run(body)


def test_groups_are_rejoined_before_channels_redis_expires_them(org, settings, queue_layer):
    """Defect 6: channels-redis drops a group member `group_expiry` after it joined, and the
    consumer never re-joined, so a tab open longer went deaf."""
    settings.LIVE_CHECK_SECONDS = 0.2
    settings.LIVE_GROUP_REFRESH_SECONDS = 0.5
    organization, alice, carol = org
    layer = get_channel_layer()
    saved = layer.group_expiry
    layer.group_expiry = 2
    try:
        async def body():
            comm = await connect(await sync_to_async(token_for)(carol))
            await asyncio.sleep(3.5)  # well past the group expiry
            for group in (realtime.org_group(organization.id), realtime.user_group(carol.id)):
                # still a member (layer-side: what group_send would keep)
                members = await layer.connection(layer.consistent_hash(group)).eval(
                    "local t = redis.call('TIME') "
                    "return redis.call('ZRANGEBYSCORE', KEYS[1], tonumber(t[1]) - tonumber(ARGV[1]), '+inf')",
                    1, layer._group_key(group), 2)
                assert len(members) == 1, group
            started = time.monotonic()
            await toggle_and_drain(organization.id, alice, 1)
            frame = await comm.receive_json_from(timeout=3)
            assert frame["seq"] == 1
            assert time.monotonic() - started < 1.0  # by the group, not a later check's fill
            await comm.disconnect()

        run(body)
    finally:
        layer.group_expiry = saved


def test_a_removed_member_whose_push_was_lost_stops_receiving(org, lossy, settings):
    """Defect 6: membership pushes that failed were swallowed, and the connection kept receiving
    the organization's events."""
    settings.LIVE_CHECK_SECONDS = 0.3
    organization, alice, carol = org
    lossy.drop_types = {"membership.changed"}

    async def body():
        comm = await connect(await sync_to_async(token_for)(carol))
        await toggle_and_drain(organization.id, alice, 1)
        assert seqs(await receive_all(comm)) == [1]
        membership = await sync_to_async(Membership.objects.get)(organization=organization, user=carol)
        await sync_to_async(org_services.membership_delete)(membership=membership)
        await asyncio.sleep(1.0)  # the push is lost; the periodic check re-reads memberships
        assert await comm.receive_json_from(timeout=1) == {"type": "memberships", "org_ids": []}
        await toggle_and_drain(organization.id, alice, 2)
        assert await comm.receive_nothing(timeout=QUIET)
        await comm.disconnect()

    run(body)


def test_a_removed_member_receives_nothing_after_the_push(org):
    organization, alice, carol = org

    async def body():
        comm = await connect(await sync_to_async(token_for)(carol))
        membership = await sync_to_async(Membership.objects.get)(organization=organization, user=carol)
        await sync_to_async(org_services.membership_delete)(membership=membership)
        await toggle_and_drain(organization.id, alice, 2)
        assert await receive_all(comm) == [{"type": "memberships", "org_ids": []}]
        await comm.disconnect()

    run(body)


def _publish_private(org_id: int, actor, audience: list[int]) -> int:
    with transaction.atomic():
        entry = publish.publish(organization_id=org_id, kind="tracker.event", actor=actor, audience=audience,
                                payload={"tracker_id": 0, "tracker_name": "Private", "action": "start"})
    _drain(org_id)
    return entry.seq


def test_members_outside_an_entrys_audience_get_its_seq_only_live_and_in_fills(org, lossy):
    organization, alice, carol = org
    lossy.drop = {3}

    async def body():
        comm_alice = await connect(await sync_to_async(token_for)(alice))
        comm_carol = await connect(await sync_to_async(token_for)(carol))
        await toggle_and_drain(organization.id, alice, 1)
        for seq in (2, 3):  # 2 arrives live, 3 is lost and filled when 4 reveals it
            assert await sync_to_async(_publish_private)(organization.id, alice, [alice.id]) == seq
        await toggle_and_drain(organization.id, alice, 1)

        carol_frames = await receive_all(comm_carol)
        private = [{"type": "log.entry", "org_id": organization.id, "seq": s, "kind": "tracker.event",
                    "private": True} for s in (2, 3)]
        assert [f for f in carol_frames if f.get("private")] == private
        assert [f["seq"] for f in carol_frames if f["type"] in ("tracker.event", "log.entry")] == [1, 2, 3, 4]
        assert seqs(carol_frames, "notification.created") == [1, 4]
        alice_frames = await receive_all(comm_alice)
        assert seqs(alice_frames) == [1, 2, 3, 4]
        assert seqs(alice_frames, "notification.created") == [1, 2, 3, 4]
        assert not any(f.get("private") for f in alice_frames)
        await comm_alice.disconnect()
        await comm_carol.disconnect()

    run(body)


def test_a_membership_added_while_connecting_is_not_missed(org, monkeypatch):
    """Defect 6 (the race): memberships were read before the user group was joined, so a change
    committed in between was pushed to nobody and the connection never joined that org."""
    organization, alice, carol = org
    dave = UserFactory(username="dave")
    other = org_services.organization_create(creator=dave, name="Other")
    real = consumers._org_ids

    async def read_then_membership_added(user_id):
        found = await real(user_id)
        # committed after the read, before the connection is in its groups
        await sync_to_async(org_services.membership_create)(organization=organization, email=dave.email,
                                                            role="member")
        return found

    monkeypatch.setattr(consumers, "_org_ids", read_then_membership_added)

    async def body():
        comm = await connect(await sync_to_async(token_for)(dave))
        await asyncio.sleep(0.3)
        await toggle_and_drain(organization.id, alice, 1)
        frames = await receive_all(comm)
        assert seqs(frames) == [1], frames
        assert other.id  # dave's own organization stays joined too
        await comm.disconnect()

    run(body)


def _layer_with_capacity(settings, capacity: int) -> None:
    layers = {**settings.CHANNEL_LAYERS}
    layers["default"] = {**layers["default"], "CONFIG": {**layers["default"]["CONFIG"], "capacity": capacity}}
    settings.CHANNEL_LAYERS = layers


def test_an_overflowing_local_queue_is_filled_from_the_log_at_once(org, lossy, settings):
    """The pub/sub layer bounds each connection's queue in its process: a burst past it is dropped
    and the connection gets a gap marker, so it reads the log now (the periodic check is far)."""
    settings.LIVE_CHECK_SECONDS = 60
    _layer_with_capacity(settings, 2)
    organization, alice, carol = org
    lossy.hold = set(range(1, 7))

    async def body():
        comm = await connect(await sync_to_async(token_for)(carol))
        await toggle_and_drain(organization.id, alice, 6)
        layer = get_channel_layer()
        inner = layer._get_layer()
        group_channel = inner._get_group_channel_name(realtime.org_group(organization.id))
        held, lossy.held = lossy.held, []
        for _, message in held:  # what the receiver reads in one go, before the consumer runs
            inner._shards[0]._receive_message({"type": "message", "channel": group_channel.encode(),
                                               "data": layer.serialize(message)})
        assert sum(q.dropped for q in inner.channels.values()) == 4
        frames = await receive_all(comm)
        assert seqs(frames) == [1, 2, 3, 4, 5, 6]
        assert [f["id"] for f in frames if f["type"] == "notification.created"] == \
            await sync_to_async(notification_ids)(carol)
        await comm.disconnect()

    run(body)


def test_messages_lost_while_the_process_reconnects_to_redis_are_filled_at_once(org, settings):
    """Pub/sub keeps nothing for a subscriber that is away: after its subscription connection
    drops, every connection of the process is told and reads the log (not at the next check)."""
    settings.LIVE_CHECK_SECONDS = 60
    organization, alice, carol = org

    async def body():
        comm = await connect(await sync_to_async(token_for)(carol))
        await toggle_and_drain(organization.id, alice, 1)
        assert seqs(await receive_all(comm)) == [1]
        shard = get_channel_layer()._get_layer()._shards[0]
        await shard._pubsub.connection.disconnect()  # the network dropped it
        await toggle_and_drain(organization.id, alice, 3)  # published while nobody listens
        frames = await receive_all(comm, quiet=2.5)
        assert seqs(frames) == [2, 3, 4]
        assert seqs(frames, "notification.created") == [2, 3, 4]
        await toggle_and_drain(organization.id, alice, 1)  # and live again
        assert seqs(await receive_all(comm)) == [5]
        await comm.disconnect()

    run(body)


def test_a_burst_from_one_drain_reaches_a_small_queue_in_order_and_complete(org, settings):
    """Real Redis, no injection: a drain's run is one pipelined publish, read by the process
    faster than the socket takes it; whatever overflows is filled, in seq order, exactly once."""
    settings.LIVE_CHECK_SECONDS = 60
    _layer_with_capacity(settings, 1)
    organization, alice, carol = org

    def toggle_then_drain_once(count: int) -> None:
        tracker = Tracker.objects.filter(organization_id=organization.id).order_by("id").first()
        for _ in range(count):
            tracker.refresh_from_db()
            change = tracker_services.tracker_stop if tracker.is_running else tracker_services.tracker_start
            change(tracker_id=tracker.id, actor=alice)
        _drain(organization.id)  # one run: every entry in one publish

    async def body():
        comms = [await connect(await sync_to_async(token_for)(user)) for user in (carol, alice)]
        await sync_to_async(toggle_then_drain_once)(12)
        for comm in comms:
            frames = await receive_all(comm)
            assert seqs(frames) == list(range(1, 13))
            assert seqs(frames, "notification.created") == list(range(1, 13))
            await comm.disconnect()

    run(body)


@pytest.mark.parametrize("how", ["token_revoked", "password_changed"])
def test_a_gap_closes_a_socket_whose_access_ended_while_the_revocation_was_lost(org, lossy, settings, how, client):
    """access.revoked is not in the log: when the layer reports a gap (here: the process lost
    Redis), the connection re-checks its credential and closes if it ended meanwhile."""
    settings.LIVE_CHECK_SECONDS = 60
    organization, alice, carol = org
    lossy.drop_types = {"access.revoked"}
    client.force_login(carol)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"

    def end_access():
        if how == "token_revoked":
            token = carol.api_tokens.filter(revoked_at__isnull=True).get()
            org_services.user_token_revoke(user=carol, token_id=token.id)
        else:
            org_services.user_password_change(user=carol, password="another-long-password-42")

    async def body():
        if how == "token_revoked":
            comm = await connect(await sync_to_async(token_for)(carol))
        else:
            comm = WebsocketCommunicator(application, "/ws/", headers=HEADERS + [(b"cookie", cookie.encode())])
            assert (await comm.connect(timeout=3))[0]
            assert (await comm.receive_json_from(timeout=3))["type"] == "hello"
        await sync_to_async(end_access)()
        assert await comm.receive_nothing(timeout=0.5)  # the revocation was lost: still open
        await get_channel_layer()._get_layer()._shards[0]._pubsub.connection.disconnect()
        output = await comm.receive_output(timeout=5)
        assert output == {"type": "websocket.close", "code": 4401}

    run(body)


def test_how_late_the_sockets_get_org_messages_feeds_the_admission_control(org, lossy):
    """The consumer reports the age of each org message it forwards (config.admission.LiveLag): the
    web's own end of the fan-out, which refuses new events while its sockets are served late."""
    organization, alice, carol = org
    lossy.hold = {2}
    for name in ("current", "previous", "started"):
        setattr(LiveLag, name, 0.0)

    async def body():
        comm = await connect(await sync_to_async(token_for)(carol))
        await toggle_and_drain(organization.id, alice, 1)
        assert seqs(await receive_all(comm)) == [1]
        assert 0 <= LiveLag.value() < 2.0  # delivered at once
        await toggle_and_drain(organization.id, alice, 1)
        (group, message), = lossy.held
        late = datetime.fromisoformat(message["occurred_at"]) - timedelta(seconds=3)
        lossy.held = [(group, {**message, "occurred_at": late.isoformat()})]  # as if it waited 3 s
        await sync_to_async(lossy.release)()
        assert seqs(await receive_all(comm)) == [2]
        assert 3.0 <= LiveLag.value() < 10.0
        await comm.disconnect()

    run(body)
