"""Waking streams: at most one drain queued per stream, one delayed-retry chain per stream.

Drains are enqueued by task name (no import of the worker module), and routed by config.routing:
local channels to the organization's partition queue, provider channels to the provider queue.
Which streams an organization has is read from Postgres (active streams), so this module names
no channel.
"""
import logging

import redis
from celery import current_app
from django.conf import settings
from django.db import connection

logger = logging.getLogger("herald.delivery")

DRAIN_TASK = "notifications.tasks.deliver_stream"
KICK_TTL_SECONDS = 60
_redis: redis.Redis | None = None


def redis_client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    return _redis


def _kick_key(org_id: int, channel: str, destination: str = "") -> str:
    # One hash tag per stream: the flag and the retry token are used together in one script.
    return f"herald:kick:{{{org_id}:{channel}:{destination}}}"


# KEYS: kick flag, retry token. 1 = enqueue a drain; 0 = one is already queued; 2 = a retry chain is
# waiting and will see the event (the flag tells it so when it releases the token, atomically).
_KICK = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
  return 2
end
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then return 1 end
return 0
"""
# KEYS: retry token, kick flag. Releases the token; 1 if a kick arrived meanwhile (drain again).
_RELEASE = """
redis.call('DEL', KEYS[1])
return redis.call('EXISTS', KEYS[2])
"""


def drain_enqueue(*, org_id: int, channel: str, destination: str = "", retry: bool = False,
                  countdown: float | None = None) -> None:
    kwargs = {"org_id": org_id, "channel": channel}
    if destination:
        kwargs["destination"] = destination
    if retry:
        kwargs["retry"] = True
    current_app.send_task(DRAIN_TASK, kwargs=kwargs, countdown=countdown)


def stream_kick(*, org_id: int, channel: str, destination: str = "", force: bool = False) -> bool:
    """Enqueue a drain of the stream unless one is already queued or a retry chain is waiting.

    The drain clears the flag before it reads, so an entry committed after that read sets the flag
    again and gets its own drain; one committed before is seen by the read. While a retry chain
    holds the token, a kick only sets the flag: the chain sees the entry on its next poll, and if
    it goes idle first, releasing the token reports the flag and it drains once more."""
    key = _kick_key(org_id, channel, destination)
    try:
        fresh = redis_client().eval(_KICK, 2, key, key + ":retry", KICK_TTL_SECONDS) == 1
    except redis.RedisError:
        logger.warning("kick flag unavailable; enqueueing anyway", extra={"org_id": org_id})
        fresh = True
    if fresh or force:
        drain_enqueue(org_id=org_id, channel=channel, destination=destination)
    return bool(fresh or force)


def stream_kick_clear(*, org_id: int, channel: str, destination: str = "") -> None:
    try:
        redis_client().delete(_kick_key(org_id, channel, destination))
    except redis.RedisError:
        pass


def stream_retry_token(*, org_id: int, channel: str, destination: str = "", delay: float | None,
                       owner: bool) -> bool:
    """At most one delayed-retry chain per stream. A drain that must wait claims the token (NX) and
    schedules the retry; other drains (kicks that arrived meanwhile) stop, since that retry will see
    their entries too. The chain that owns the token refreshes it while it keeps waiting and releases
    it (delay=None) when the stream is idle. The TTL outlives a lost retry only briefly."""
    key = _kick_key(org_id, channel, destination) + ":retry"
    try:
        if delay is None:  # idle: release; True means a kick arrived meanwhile and must be served
            if owner:
                return bool(redis_client().eval(_RELEASE, 2, key, _kick_key(org_id, channel, destination)))
            return False
        ttl_ms = int(delay * 1000) + 5000
        return bool(redis_client().set(key, 1, px=ttl_ms, nx=not owner))
    except redis.RedisError:
        return True


def streams_kick_all(*, org_id: int, streams: list[tuple[str, str]] | None = None) -> None:
    """Wake every active stream of the organization (after a log entry committed). `streams`: the
    (channel, destination) pairs if the caller read them already (publish does, with the entry),
    else one query. The kick flags are set in one Redis round trip (a pipeline), then a drain is
    enqueued for each stream that had none queued."""
    if streams is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT channel, destination FROM notifications_deliverystream "
                           "WHERE organization_id = %s AND active AND NOT held", [org_id])
            streams = cursor.fetchall()
    if not streams:
        return
    keys = [_kick_key(org_id, channel, destination) for channel, destination in streams]
    try:
        pipe = redis_client().pipeline(transaction=False)
        for key in keys:
            pipe.eval(_KICK, 2, key, key + ":retry", KICK_TTL_SECONDS)
        fresh = [answer == 1 for answer in pipe.execute()]
    except redis.RedisError:
        logger.warning("kick flags unavailable; enqueueing anyway", extra={"org_id": org_id})
        fresh = [True] * len(keys)
    for (channel, destination), enqueue in zip(streams, fresh, strict=True):
        if enqueue:
            drain_enqueue(org_id=org_id, channel=channel, destination=destination)
