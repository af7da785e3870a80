"""The Channels layers of the live feed.

`HeraldPubSubChannelLayer` (the default): Redis pub/sub, one message per web process. A group
send is one PUBLISH to the group's Redis channel; each web process subscribes once to every group
one of its connections is in, decodes each message once and hands the same (read-only) dict to
each local member, so the cost per event grows with web processes, not with sockets. Pub/sub is
lossy: a message published while a process is disconnected from Redis is never delivered to it,
and a connection whose local queue is full (a slow socket) is not given more. That is acceptable
only because the live consumer repairs loss from Postgres (DESIGN.md rule 6): every org message
carries its seq and a jump is filled from the log, and the layer tells a connection what it may
have missed: when its queue overflows, and for every connection of a process after the process
reconnected to Redis, the connection receives one `{"type": "live.gap"}` in the place of what was
dropped (the consumer then reads the log up to the current published seq at once).

Ordering: Redis delivers pub/sub messages in the order it received the PUBLISH commands, on one
subscription connection per process, so a publisher that publishes in order (the fence, then
realtime.publish awaiting each batch) is received in that order everywhere; there is no publisher
clock involved (the reason for ServerClockRedisChannelLayer below). A group join returns once Redis
has confirmed the subscription, so what is published after it reaches the connection. Group
membership is local to the process and lives as long as its subscription connection: there is no
group expiry to refresh, and a dead process leaves no stale members behind.

`ServerClockRedisChannelLayer` (CHANNEL_LAYER_BACKEND=config.channel_layer.ServerClockRedisChannelLayer):
channels-redis' queue layer, one copy per member channel in a Redis sorted set, with messages
ordered and groups aged by the Redis server's clock. channels-redis scores each queue by the
*publisher's* time.time(), and a consumer reads the lowest score first. Two workers whose clocks
disagree can therefore reorder messages that were published in order (the fence guarantees publish
order, not clock agreement). Scoring with Redis' own TIME inside the script gives every publisher
one clock. Group membership ages the same way: a member is stamped with Redis TIME when it joins
(or re-joins: the live consumer re-adds itself well before `group_expiry`, see consumers.py), and a
publisher drops members older than `group_expiry` by that same clock, so a web host and a worker
host with different clocks cannot expire a live connection early.
"""
import asyncio
import logging
import uuid
from collections import deque
from urllib.parse import urlsplit

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _consistent_hash, _wrap_close, create_pool, decode_hosts
import redis
from redis import asyncio as aioredis
from redis.asyncio.client import PubSub

logger = logging.getLogger("herald.realtime")

# KEYS: channel keys. ARGV: messages..., capacities..., expiry. Returns how many were over capacity.
_GROUP_SEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expiry = tonumber(ARGV[#ARGV])
local over_capacity = 0
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, now - expiry)
  if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
    redis.call('ZADD', KEYS[i], now, ARGV[i])
    redis.call('EXPIRE', KEYS[i], expiry)
  else
    over_capacity = over_capacity + 1
  end
end
return over_capacity
"""

_SEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expiry = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, now - expiry)
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], expiry)
return 1
"""


# KEYS: group key. ARGV: channel name, group expiry. Stamps the member with Redis TIME.
_GROUP_ADD = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]), ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS: group key. ARGV: group expiry. Drops members not re-added within the expiry; returns the rest.
_GROUP_MEMBERS = """
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, tonumber(t[1]) - tonumber(ARGV[1]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class ServerClockRedisChannelLayer(RedisChannelLayer):
    async def group_send_many(self, messages: list[tuple[str, dict]]) -> None:
        for group, message in messages:  # sequential: order within a group is the order given
            await self.group_send(group, message)
    async def group_add(self, group, channel):
        """Join, or refresh an existing membership (the stamp moves to now)."""
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        connection = self.connection(self.consistent_hash(group))
        await connection.eval(_GROUP_ADD, 1, self._group_key(group), channel, int(self.group_expiry))

    async def send(self, channel, message):
        from channels.exceptions import ChannelFull

        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        channel_non_local_name = channel
        if "!" in channel:
            message = dict(message.items())
            message["__asgi_channel__"] = channel
            channel_non_local_name = self.non_local_name(channel)
        channel_key = self.prefix + channel_non_local_name
        index = self.consistent_hash(channel) if "!" in channel else next(self._send_index_generator)
        connection = self.connection(index)
        added = await connection.eval(_SEND, 1, channel_key, self.serialize(message),
                                      self.get_capacity(channel), int(self.expiry))
        if not added:
            raise ChannelFull()

    async def group_send(self, group, message):
        assert self.require_valid_group_name(group), "Group name not valid"
        key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        channel_names = [x.decode("utf8") for x in await connection.eval(_GROUP_MEMBERS, 1, key,
                                                                          int(self.group_expiry))]
        by_connection, messages, capacities = self._map_channel_keys_to_connection(channel_names, message)
        for index, keys in by_connection.items():
            over = await self.connection(index).eval(
                _GROUP_SEND, len(keys), *keys, *[messages[k] for k in keys], *[capacities[k] for k in keys],
                int(self.expiry),
            )
            if over:
                logger.info("channels over capacity", extra={"group": group, "count": over})


# --- pub/sub -----------------------------------------------------------------------------------

GAP = {"type": "live.gap"}  # what a connection receives in the place of messages it was not given
SUBSCRIBE_CONFIRM_SECONDS = 5.0  # a join waits at most this long for Redis to confirm


class LocalQueue:
    """The messages of one connection of this process, at most `capacity`: past it, messages are
    dropped and one GAP takes their place (a connection that falls behind learns it, in order)."""

    __slots__ = ("capacity", "items", "waiter", "dropped")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.items: deque = deque()
        self.waiter: asyncio.Future | None = None
        self.dropped = 0

    def put(self, message: dict) -> None:
        items = self.items
        if len(items) >= self.capacity:
            self.dropped += 1
            if not items or items[-1] is not GAP:
                items.append(GAP)  # one past capacity: the marker, never more
            return
        items.append(message)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def put_gap(self) -> None:
        if not self.items or self.items[-1] is not GAP:
            self.items.append(GAP)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self) -> dict:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class _ReconnectingPubSub(PubSub):
    """redis-py re-subscribes on reconnect (on_connect, registered after the first connect, so
    called for reconnects only); what was published meanwhile is lost, so every connection of the
    process is told (GAP)."""

    def __init__(self, *args, on_reconnect=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_reconnect = on_reconnect

    async def on_connect(self, connection):
        await super().on_connect(connection)
        if self._on_reconnect is not None:
            self._on_reconnect()


class _Shard(RedisSingleShardConnection):
    """One Redis host: one connection for the subscriptions (read by one task), a pool for
    publishing. Messages are decoded once and the same dict goes to every local member."""

    def __init__(self, host, channel_layer):
        super().__init__(host, channel_layer)
        self._confirmations: dict[str, asyncio.Future] = {}

    def _ensure_redis(self):
        if self._redis is None:
            self._redis = aioredis.Redis(connection_pool=create_pool(self.host))
            self._pubsub = _ReconnectingPubSub(connection_pool=self._redis.connection_pool,
                                               on_reconnect=self.channel_layer.mark_gap_all)

    async def subscribe(self, channel):
        async with self._lock:
            if channel not in self._subscribed_to:
                self._ensure_redis()
                self._ensure_receiver()
                self._confirmations[channel] = asyncio.get_running_loop().create_future()
                await self._pubsub.subscribe(channel)
                self._subscribed_to.add(channel)
            confirmed = self._confirmations.get(channel)
        if confirmed is not None and not confirmed.done():
            try:  # what is published after the join must reach us: wait until Redis subscribed
                await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_CONFIRM_SECONDS)
            except TimeoutError:
                logger.warning("subscription not confirmed", extra={"channel": channel})

    async def unsubscribe(self, channel):
        await super().unsubscribe(channel)
        self._confirmations.pop(channel, None)

    async def publish_many(self, pairs: list[tuple[str, bytes]]) -> None:
        """PUBLISH each (channel, data) in order, in one round trip."""
        async with self._lock:
            self._ensure_redis()
            redis = self._redis
        async with redis.pipeline(transaction=False) as pipe:
            for channel, data in pairs:
                pipe.publish(channel, data)
            await pipe.execute()

    async def flush(self):
        await super().flush()
        self._confirmations.clear()

    async def _do_receiving(self):
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception:  # Redis away: redis-py reconnects and re-subscribes (-> GAP)
                logger.exception("pub/sub receive failed; resubscribing")
                await asyncio.sleep(1)

    def _receive_message(self, message):
        kind = message["type"]
        name = message["channel"]
        if isinstance(name, bytes):
            name = name.decode()
        if kind == "subscribe":
            confirmed = self._confirmations.get(name)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind != "message":
            return
        layer = self.channel_layer
        queue = layer.channels.get(name)
        members = None if queue is not None else layer.groups.get(name)
        if queue is None and not members:
            return
        data = layer.channel_layer.deserialize(message["data"])
        if queue is not None:
            queue.put(data)
            return
        for channel_name in members:
            queue = layer.channels.get(channel_name)
            if queue is not None:
                queue.put(data)


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(self, hosts=None, prefix="asgi", capacity=100, channel_layer=None, **kwargs):
        super().__init__(hosts=hosts, prefix=prefix, channel_layer=channel_layer, **kwargs)
        self.capacity = capacity
        self._shards = [_Shard(host, self) for host in decode_hosts(hosts)]

    async def _subscribe_to_channel(self, channel):
        self.channels[channel] = LocalQueue(self.capacity)
        await self._get_shard(channel).subscribe(channel)

    async def new_channel(self, prefix="specific."):
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        await self._subscribe_to_channel(channel)
        return channel

    async def receive(self, channel):
        """The next message of the channel (already decoded; shared with the process' other
        members of its groups: read it, never change it)."""
        if channel not in self.channels:
            await self._subscribe_to_channel(channel)
        try:
            return await self.channels[channel].get()
        except (asyncio.CancelledError, TimeoutError, GeneratorExit):
            # The consumer is exiting (as in channels-redis): leave the channel's subscription.
            if channel in self.channels:
                del self.channels[channel]
                try:
                    await self._get_shard(channel).unsubscribe(channel)
                except BaseException:
                    logger.exception("unsubscribe failed while closing a channel")
            raise

    async def group_send_many(self, messages: list[tuple[str, dict]]) -> None:
        """Publish (group, message) pairs in the order given; one round trip per Redis host."""
        by_shard: dict[int, list[tuple[str, bytes]]] = {}
        serialize = self.channel_layer.serialize
        for group, message in messages:
            group_channel = self._get_group_channel_name(group)
            by_shard.setdefault(id(shard := self._get_shard(group_channel)), [shard, []])[1].append(
                (group_channel, serialize(message)))
        for shard, pairs in by_shard.values():
            await shard.publish_many(pairs)

    def mark_gap_all(self) -> None:
        for queue in self.channels.values():
            queue.put_gap()


def _scoped_prefix(prefix: str, hosts) -> str:
    """Redis pub/sub channels are server-wide, not per database: the prefix gets the database
    number of the first host, so deployments (or test runs) on one Redis server with different
    databases do not hear each other."""
    host = (decode_hosts(hosts) or [{}])[0]
    db = host.get("db")
    if db is None and "address" in host:
        path = urlsplit(str(host["address"])).path.strip("/")
        db = int(path) if path.isdigit() else 0
    return f"{prefix}.{int(db or 0)}."


class HeraldPubSubChannelLayer(RedisPubSubChannelLayer):
    """channels-redis' pub/sub layer with messages decoded once per process, bounded local queues
    that say when they dropped (GAP), joins that wait for Redis' confirmation, a GAP to every
    connection after a reconnect, and batched publishing (see the module docstring).

    CONFIG: hosts, prefix, capacity (messages queued per connection in this process); `expiry` and
    `group_expiry` of the queue layer mean nothing here and are ignored."""

    def __init__(self, hosts=None, prefix="asgi", capacity=100, expiry=None, group_expiry=None, **kwargs):
        super().__init__(hosts=hosts, prefix=_scoped_prefix(prefix, hosts), capacity=capacity, **kwargs)

    def _get_layer(self):
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer

    async def group_send_many(self, messages: list[tuple[str, dict]]) -> None:
        await self._get_layer().group_send_many(messages)

    def group_send_many_sync(self, messages: list[tuple[str, dict]], timeout: float = 10.0) -> None:
        """The same PUBLISHes from sync code (Celery workers, services) with a blocking client: no
        event loop and no thread hop per call. Returns once Redis has them, in the order given."""
        hosts = decode_hosts(self._kwargs.get("hosts"))
        by_host: dict[int, list[tuple[str, bytes]]] = {}
        for group, message in messages:
            channel = f"{self._kwargs['prefix']}__group__{group}"  # as RedisPubSubLoopLayer names it
            by_host.setdefault(_consistent_hash(channel, len(hosts)), []).append((channel, self.serialize(message)))
        for index, pairs in by_host.items():
            pipe = self._sync_client(index, hosts[index], timeout).pipeline(transaction=False)
            for channel, data in pairs:
                pipe.publish(channel, data)
            pipe.execute()

    def _sync_client(self, index: int, host: dict, timeout: float) -> redis.Redis:
        clients = self.__dict__.setdefault("_sync_clients", {})  # redis-py pools survive a fork
        client = clients.get(index)
        if client is None:
            options = {k: v for k, v in host.items() if k != "address"}
            options.setdefault("socket_timeout", timeout)
            options.setdefault("socket_connect_timeout", timeout)
            client = clients[index] = (redis.Redis.from_url(host["address"], **options) if "address" in host
                                       else redis.Redis(**options))
        return client
