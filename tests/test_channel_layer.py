"""The pub/sub channel layer (config/channel_layer.py) on the real test Redis: one decode per
process, publish order kept, a bounded local queue that reports what it dropped (GAP), a GAP to
every connection after the subscription connection was lost, joins confirmed by Redis, and the
prefix scoped to the Redis database."""
import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings as django_settings

from config.channel_layer import GAP, HeraldPubSubChannelLayer, LocalQueue


def run(coro_fn):
    return async_to_sync(coro_fn)()


def test_a_full_local_queue_drops_and_leaves_one_gap_in_their_place():
    async def body():
        queue = LocalQueue(capacity=2)
        for n in range(1, 6):
            queue.put({"n": n})
        assert queue.dropped == 3
        assert [await queue.get() for _ in range(3)] == [{"n": 1}, {"n": 2}, GAP]
        queue.put({"n": 6})
        assert await queue.get() == {"n": 6}
        assert not queue.items

    run(body)


def test_a_queue_of_no_capacity_still_reports_the_gap():
    async def body():
        queue = LocalQueue(capacity=0)
        queue.put({"n": 1})
        queue.put({"n": 2})
        assert list(queue.items) == [GAP]

    run(body)


def test_the_prefix_is_scoped_to_the_redis_database():
    one = HeraldPubSubChannelLayer(hosts=["redis://127.0.0.1:6379/3"], prefix="herald:asgi")
    other = HeraldPubSubChannelLayer(hosts=["redis://127.0.0.1:6379/4"], prefix="herald:asgi")
    default = HeraldPubSubChannelLayer(hosts=["redis://127.0.0.1:6379"], prefix="herald:asgi")
    assert one._kwargs["prefix"] == "herald:asgi.3."
    assert other._kwargs["prefix"] == "herald:asgi.4."
    assert default._kwargs["prefix"] == "herald:asgi.0."


def test_group_members_of_one_process_share_one_decoded_message_in_publish_order():
    layer = get_channel_layer()

    async def body():
        a, b = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("org.1", a)
        await layer.group_add("org.1", b)
        await layer.group_send_many([("org.1", {"type": "x", "seq": s}) for s in range(1, 21)])
        got_a = [await asyncio.wait_for(layer.receive(a), 3) for _ in range(20)]
        got_b = [await asyncio.wait_for(layer.receive(b), 3) for _ in range(20)]
        assert [m["seq"] for m in got_a] == list(range(1, 21))
        assert all(x is y for x, y in zip(got_a, got_b, strict=True))  # decoded once, shared
        await layer.flush()

    run(body)


def test_a_join_waits_until_redis_has_subscribed():
    """What is published right after group_add returns reaches the member (no lost head)."""
    layer = get_channel_layer()

    async def body():
        for n in range(20):
            channel = await layer.new_channel()
            await layer.group_add(f"org.{100 + n}", channel)
            await layer.group_send(f"org.{100 + n}", {"type": "x", "n": n})
            assert (await asyncio.wait_for(layer.receive(channel), 3))["n"] == n
        await layer.flush()

    run(body)


def test_a_lost_subscription_connection_tells_every_connection_of_the_gap():
    layer = get_channel_layer()

    async def body():
        a, b = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("org.1", a)
        await layer.group_add("org.2", b)
        shard = layer._get_layer()._shards[0]
        await shard._pubsub.connection.disconnect()  # the network dropped it
        assert await asyncio.wait_for(layer.receive(a), 5) == GAP
        assert await asyncio.wait_for(layer.receive(b), 5) == GAP
        # ... and the process is subscribed again
        for _ in range(50):
            await layer.group_send("org.1", {"type": "x", "after": "reconnect"})
            try:
                message = await asyncio.wait_for(layer.receive(a), 0.2)
                break
            except TimeoutError:
                continue
        assert message == {"type": "x", "after": "reconnect"}
        await layer.flush()

    run(body)


def test_test_runs_use_the_pub_sub_layer():
    assert django_settings.CHANNEL_LAYERS["default"]["BACKEND"] == "config.channel_layer.HeraldPubSubChannelLayer"
    assert isinstance(get_channel_layer(), HeraldPubSubChannelLayer)


@pytest.mark.parametrize("capacity", [1, 3])
def test_a_burst_past_a_small_capacity_gives_one_gap_per_episode(settings, capacity):
    layers = {**settings.CHANNEL_LAYERS}
    layers["default"] = {**layers["default"], "CONFIG": {**layers["default"]["CONFIG"], "capacity": capacity}}
    settings.CHANNEL_LAYERS = layers
    layer = get_channel_layer()

    async def body():
        channel = await layer.new_channel()
        await layer.group_add("org.1", channel)
        inner = layer._get_layer()
        shard = inner._shards[0]
        group_channel = inner._get_group_channel_name("org.1")
        for n in range(10):  # what the receiver reads in one go, faster than the consumer takes it
            shard._receive_message({"type": "message", "channel": group_channel.encode(),
                                    "data": layer.serialize({"type": "x", "n": n})})
        got = [await layer.receive(channel) for _ in range(capacity + 1)]
        assert got == [{"type": "x", "n": n} for n in range(capacity)] + [GAP]
        assert inner.channels[channel].dropped == 10 - capacity
        await layer.flush()

    run(body)
