"""The Channels layer, with messages ordered and groups aged by the Redis server's clock.

channels-redis queues each consumer's messages in a sorted set scored by the *publisher's*
time.time(), and a consumer reads the lowest score first. Two workers whose clocks disagree can
therefore reorder messages that were published in order (the fence guarantees publish order, not
clock agreement). Scoring with Redis' own TIME inside the script gives every publisher one clock.

Group membership ages the same way: a member is stamped with Redis TIME when it joins (or
re-joins: the live consumer re-adds itself well before `group_expiry`, see consumers.py), and a
publisher drops members older than `group_expiry` by that same clock, so a web host and a worker
host with different clocks cannot expire a live connection early.
"""
import logging

from channels_redis.core import RedisChannelLayer

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
