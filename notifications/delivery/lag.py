"""How late the fan-out is running, for the web's admission control (config/admission.py).

The in-app drains observe the age of the entries they deliver (now - occurred_at of each run's
first entry) and publish the largest age seen in the last moment to Redis, in one of LAG_SLOTS
keys by organization (`herald:lag:<org id % LAG_SLOTS>`, a 1 s life: drain processes serving
other organizations rarely write the same key, and a lagging partition's many organizations fill
many keys). The web reads every key in one MGET at most every LAG_READ_SECONDS, takes the median
of those present (one slow organization alone does not close the door), and refuses new
log entries (tracker events, sends) while the fan-out is further behind than
WEB_MAX_DELIVERY_LAG_SECONDS: accepting more would only lengthen the queue that every accepted
event waits in. The values live 1 s, so the door opens as soon as the drains catch up (refusing
means no new entries, and no new observations). A drain that stopped (no worker) lets its value
expire: the guard then says nothing, and the sweeper and the operators' alerts take over.

A split web tier (config.serve --ws-processes: the sockets in Daphne processes of their own) has
no sockets in the processes that take the writes, so each socket process publishes its own
forwarding lag too (config.admission.LiveLag: `herald:lag:live:<WEB_WS_INDEX>`, same life), and the
HTTP processes read those keys in the same MGET and refuse while the largest is over the budget.

Costs: one pipelined SET per drain process per LAG_FLUSH_SECONDS while it delivers (and one SET
per socket process of a split tier while its sockets get messages); one MGET per web process per
LAG_READ_SECONDS while it receives writes.
"""
import asyncio
import logging
import time

import redis
import redis.asyncio as aioredis
from django.conf import settings

logger = logging.getLogger("herald.delivery")

LAG_FLUSH_SECONDS = 0.25
LAG_READ_SECONDS = 0.25
LAG_TTL_SECONDS = 1.0
LAG_SLOTS = 32


def lag_key(slot: int) -> str:
    return f"herald:lag:{slot}"


def live_lag_key(index: int) -> str:
    return f"herald:lag:live:{index}"


_redis: redis.Redis | None = None


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    return _redis


class LagRecorder:
    """Per drain process: the largest age observed since the last flush, flushed every
    LAG_FLUSH_SECONDS (a value older than LAG_TTL_SECONDS expires: a stopped drain reads as no lag)."""

    def __init__(self, client_factory=_client):
        self.client_factory = client_factory
        self.pending: dict[int, float] = {}
        self.flushed_at = 0.0

    def observe(self, *, organization_id: int, occurred_at: float) -> None:
        age = max(0.0, time.time() - occurred_at)
        slot = organization_id % LAG_SLOTS
        if age > self.pending.get(slot, -1.0):
            self.pending[slot] = age
        now = time.monotonic()
        if now - self.flushed_at >= LAG_FLUSH_SECONDS:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        pending, self.pending = self.pending, {}
        self.flushed_at = time.monotonic() if now is None else now
        if not pending:
            return
        try:
            pipe = self.client_factory().pipeline(transaction=False)
            for slot, age in pending.items():
                pipe.set(lag_key(slot), f"{age:.3f}", px=int(LAG_TTL_SECONDS * 1000))
            pipe.execute()
        except redis.RedisError:
            logger.warning("delivery lag not recorded (Redis unavailable)")


class LiveLagPublisher:
    """In a socket process of a split web tier: SETs this process's forwarding lag at most every
    LAG_FLUSH_SECONDS, from the event loop (a task; a failure only loses that value)."""

    def __init__(self, index: int):
        self.key = live_lag_key(index)
        self.client: aioredis.Redis | None = None
        self.loop = None
        self.published_at = float("-inf")
        self.tasks: set[asyncio.Task] = set()

    def offer(self, value: float) -> None:
        now = time.monotonic()
        if now - self.published_at < LAG_FLUSH_SECONDS:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.published_at = now
        if self.client is None or self.loop is not loop:
            self.client, self.loop = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.2,
                                                             socket_connect_timeout=0.2), loop
        task = loop.create_task(self._set(self.client, value))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _set(self, client, value: float) -> None:
        try:
            await client.set(self.key, f"{value:.3f}", px=int(LAG_TTL_SECONDS * 1000))
        except (redis.RedisError, OSError):
            logger.warning("live lag not recorded (Redis unavailable)")


class LagReader:
    """Per web process (async): the fan-out's lag in seconds, the median over the keys written in
    the last LAG_TTL_SECONDS, read at most every LAG_READ_SECONDS; 0 when nothing is recorded or
    Redis cannot be read."""

    def __init__(self):
        self.client: aioredis.Redis | None = None
        self.loop = None
        self.value = 0.0
        self.read_at = float("-inf")

    async def lag(self) -> float:
        now = time.monotonic()
        if now - self.read_at < LAG_READ_SECONDS:
            return self.value
        self.read_at = now
        try:
            loop = asyncio.get_running_loop()
            if self.client is None or self.loop is not loop:  # one client per event loop (tests run several)
                self.client, self.loop = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.2,
                                                                 socket_connect_timeout=0.2), loop
            keys = [lag_key(slot) for slot in range(LAG_SLOTS)]
            keys += [live_lag_key(i) for i in range(settings.WEB_WS_PROCESSES)]
            found = await self.client.mget(keys)
            values = sorted(float(v) for v in found[:LAG_SLOTS] if v is not None)
            # The median of the keys written in the last second: the fan-out as a whole is late (one
            # slow organization alone does not close the door for every other).
            self.value = values[(len(values) - 1) // 2] if values else 0.0
            # A split tier's socket processes: the largest (each serves every organization's sockets).
            self.value = max([self.value] + [float(v) for v in found[LAG_SLOTS:] if v is not None])
        except (redis.RedisError, OSError, ValueError):
            self.value = 0.0  # never refuse on a guess
        return self.value
