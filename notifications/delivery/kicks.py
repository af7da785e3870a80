"""Waking streams.

Local streams (in-app) are woken per partition: a kick adds the stream to its partition's dirty
set and enqueues one `drain_partition` task unless one is queued or running already (one script);
that task drains every dirty stream of the partition (notifications.delivery.drain). External
streams keep one drain queued per stream (a flag) and one delayed-retry chain per stream (a
token); a local stream that finds its lock busy gets such a chain too.

Drains are enqueued by task name (no import of the worker module), with the message's argument
reprs given (Celery's saferepr of them was a quarter of send_task's CPU in the web processes, which
enqueue a provider drain per event; py-spy --gil under bench/capacity.py), and routed by config.routing:
partition tasks and local streams to the organization's partition queue, provider channels to the
provider queue. Which streams an organization has is read from Postgres (active streams), and
whether a channel is local from the registry, so this module names no channel.
"""
import logging

import redis
from celery import current_app
from django.conf import settings
from django.db import connection

from config.routing import org_partition, partition_queue
from notifications.channels import registry

logger = logging.getLogger("herald.delivery")

DRAIN_TASK = "notifications.tasks.deliver_stream"
PARTITION_TASK = "notifications.tasks.drain_partition"
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


def _send(task: str, kwargs: dict, countdown: float | None) -> None:
    """One drain message. Its argument reprs are given (Celery's saferepr); `declare=[]`: Celery
    declares the message's queue on every publish otherwise (kombu's maybe_declare, cached but
    wrapped in a retry closure each time: 4.6 % of the web's CPU under bench/capacity.py, py-spy
    --gil). Nothing needs it: the message goes to the anonymous exchange with the queue's name as
    its routing key (Celery does so for direct queues), which the Redis transport delivers to that
    list without looking up a binding, and each queue is declared by the worker consuming it."""
    current_app.send_task(task, kwargs=kwargs, countdown=countdown, argsrepr="()", kwargsrepr=repr(kwargs),
                          declare=[])


def drain_enqueue(*, org_id: int, channel: str, destination: str = "", retry: bool = False,
                  countdown: float | None = None) -> None:
    kwargs = {"org_id": org_id, "channel": channel}
    if destination:
        kwargs["destination"] = destination
    if retry:
        kwargs["retry"] = True
    _send(DRAIN_TASK, kwargs, countdown)


def stream_kick(*, org_id: int, channel: str, destination: str = "", force: bool = False) -> bool:
    """Wake one stream. A local stream joins its partition's dirty set (see partition_kick); an
    external one gets a drain enqueued unless one is already queued or a retry chain is waiting.

    The drain clears the flag before it reads, so an entry committed after that read sets the flag
    again and gets its own drain; one committed before is seen by the read. While a retry chain
    holds the token, a kick only sets the flag: the chain sees the entry on its next poll, and if
    it goes idle first, releasing the token reports the flag and it drains once more."""
    if is_partitioned(channel):
        return partition_kick(partition=org_partition(org_id), members=[stream_member(org_id, channel, destination)],
                              force=force, fallback=[(org_id, channel, destination)])
    key = _kick_key(org_id, channel, destination)
    try:
        fresh = redis_client().eval(_KICK, 2, key, key + ":retry", KICK_TTL_SECONDS) == 1
    except redis.RedisError:
        logger.warning("kick flag unavailable; enqueueing anyway", extra={"org_id": org_id})
        fresh = True
    if fresh or force:
        drain_enqueue(org_id=org_id, channel=channel, destination=destination)
    return bool(fresh or force)


def streams_kick_swept(streams: list[tuple[int, str, str]]) -> None:
    """The sweeper's kicks (stalled streams): each external stream gets a drain, the local ones
    join their partitions' dirty sets with one task enqueued per partition whatever its flag says
    (the task that set it may have died with its lease still running)."""
    by_partition: dict[int, list[tuple[int, str, str]]] = {}
    for org_id, channel, destination in streams:
        if is_partitioned(channel):
            by_partition.setdefault(org_partition(org_id), []).append((org_id, channel, destination))
        else:
            stream_kick(org_id=org_id, channel=channel, destination=destination, force=True)
    for partition, local in by_partition.items():
        partition_kick(partition=partition, members=[stream_member(*stream) for stream in local], force=True,
                       fallback=local)


def stream_kick_set(*, org_id: int, channel: str, destination: str = "") -> None:
    """Set the stream's kick flag without enqueueing: a retry chain that releases its token sees it
    and drains once more (a partition drain that found the stream busy leaves it so)."""
    try:
        redis_client().set(_kick_key(org_id, channel, destination), 1, ex=KICK_TTL_SECONDS)
    except redis.RedisError:
        pass


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
    else one query. One Redis round trip (a pipeline): the local streams join the partition's dirty
    set in one script, each external stream's flag is set by its own; then at most one partition
    task and one drain per external stream that had none queued are enqueued."""
    if streams is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT channel, destination FROM notifications_deliverystream "
                           "WHERE organization_id = %s AND active AND NOT held", [org_id])
            streams = cursor.fetchall()
    if not streams:
        return
    local = [(channel, destination) for channel, destination in streams if is_partitioned(channel)]
    external = [(channel, destination) for channel, destination in streams if not is_partitioned(channel)]
    partition = org_partition(org_id)
    keys = [_kick_key(org_id, channel, destination) for channel, destination in external]
    try:
        pipe = redis_client().pipeline(transaction=False)
        if local:
            _partition_kick_call(pipe, partition, [stream_member(org_id, c, d) for c, d in local], force=False)
        for key in keys:
            pipe.eval(_KICK, 2, key, key + ":retry", KICK_TTL_SECONDS)
        answers = pipe.execute()
    except redis.RedisError:
        logger.warning("kick flags unavailable; enqueueing anyway", extra={"org_id": org_id})
        for channel, destination in streams:
            drain_enqueue(org_id=org_id, channel=channel, destination=destination)
        return
    if local and answers.pop(0) == 1:
        partition_enqueue(partition=partition)
    for (channel, destination), answer in zip(external, answers, strict=True):
        if answer == 1:
            drain_enqueue(org_id=org_id, channel=channel, destination=destination)


# --- partitions: one task drains every kicked local stream of its partition ---------------------
#
# Per partition k, four keys under one hash tag (one slot: every script below passes them together):
#   dirty  a sorted set of the kicked streams ("org:channel:destination"), scored by the kick's
#          number (seq, a counter): a stream kicked again moves to the end with a new score;
#   wake   the flag "a drain_partition task is queued or running" (a lease: the task refreshes it,
#          so a task that died frees the partition after _lease() seconds);
#   note   at most one element: "something was kicked while the task runs", which a task waiting
#          for more work blocks on (BLPOP);
#   seq    the counter.
# A stream stays in `dirty` until a task has drained it and acknowledged it with the score it
# claimed: a kick that arrives during the drain changes the score, so the stream stays and is
# drained again; a task killed mid-batch acknowledged nothing, so the next task (the re-delivered
# message, a later kick's, or the sweeper's) finds the stream still there.

def _lease() -> int:
    """The partition flag's lifetime: longer than a task's gap between two claims (its budget, one
    stream's turn, a linger), short enough that a dead task's partition is free again soon."""
    return int(settings.DELIVERY_PARTITION_BUDGET_SECONDS + settings.DELIVERY_PARTITION_LINGER_SECONDS) + 10

# KEYS: dirty, wake, note, seq. ARGV: lease, force (1/0), members... 1 = enqueue a partition task.
_PARTITION_KICK = """
local n = redis.call('INCR', KEYS[4])
local args = {}
for i = 3, #ARGV do args[#args + 1] = n; args[#args + 1] = ARGV[i] end
redis.call('ZADD', KEYS[1], unpack(args))
local fresh = redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[1])
if fresh then return 1 end
if redis.call('LLEN', KEYS[3]) == 0 then redis.call('RPUSH', KEYS[3], 1) end
if ARGV[2] == '1' then redis.call('EXPIRE', KEYS[2], ARGV[1]) return 1 end
return 0
"""
# KEYS: dirty, wake. ARGV: count, lease. The oldest kicked streams with their scores; renews the lease.
_PARTITION_CLAIM = """
redis.call('EXPIRE', KEYS[2], ARGV[2])
return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
"""
# KEYS: dirty, seq, wake. ARGV: claim count (0: none), lease, then (member, score, again 1/0)... A
# stream whose score is still the claimed one leaves the set, or (again) moves to its end; a stream
# kicked meanwhile stays as the kick left it. Then, like _PARTITION_CLAIM, the next batch.
_PARTITION_ACK = """
local n = nil
for i = 3, #ARGV, 3 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    if ARGV[i + 2] == '1' then
      if not n then n = redis.call('INCR', KEYS[2]) end
      redis.call('ZADD', KEYS[1], n, ARGV[i])
    else
      redis.call('ZREM', KEYS[1], ARGV[i])
    end
  end
end
if tonumber(ARGV[1]) == 0 then return {} end
redis.call('EXPIRE', KEYS[3], ARGV[2])
return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
"""
# KEYS: dirty, wake, note. 1 = released (nothing dirty: the next kick enqueues a task); 0 = work left.
_PARTITION_RELEASE = """
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""


def is_partitioned(channel: str) -> bool:
    """Local channels are drained by their partition's task; external ones stream by stream."""
    try:
        return not registry.get(channel).external
    except registry.UnknownChannel:
        return False


def stream_member(org_id: int, channel: str, destination: str = "") -> str:
    return f"{org_id}:{channel}:{destination}"


def member_stream(member: str | bytes) -> tuple[int, str, str]:
    if isinstance(member, bytes):
        member = member.decode()
    org_id, channel, destination = member.split(":", 2)
    return int(org_id), channel, destination


def partition_keys(partition: int) -> list[str]:
    """dirty, wake, note, seq (one hash tag)."""
    tag = f"herald:part:{{p{partition}}}"
    return [f"{tag}:dirty", f"{tag}:wake", f"{tag}:note", f"{tag}:seq"]


def _partition_kick_call(client, partition: int, members: list[str], *, force: bool):
    return client.eval(_PARTITION_KICK, 4, *partition_keys(partition), _lease(),
                       1 if force else 0, *members)


def partition_enqueue(*, partition: int, countdown: float | None = None) -> None:
    kwargs = {"partition": partition}
    _send(PARTITION_TASK, kwargs, countdown)


def partition_kick(*, partition: int, members: list[str], force: bool = False,
                   fallback: list[tuple[int, str, str]] = ()) -> bool:
    """Add the streams to the partition's dirty set; enqueue a partition task unless one is queued
    or running (it sees them: it drains until the set is empty and releases the flag atomically
    with finding it so). `force` (the sweeper) enqueues one anyway. With Redis unavailable, the
    `fallback` streams get a drain of their own (the sweeper finds them otherwise)."""
    try:
        fresh = _partition_kick_call(redis_client(), partition, members, force=force) == 1
    except redis.RedisError:
        logger.warning("partition kick unavailable; enqueueing the streams", extra={"partition": partition})
        for org_id, channel, destination in fallback:
            drain_enqueue(org_id=org_id, channel=channel, destination=destination)
        return bool(fallback)
    if fresh:
        partition_enqueue(partition=partition)
    return fresh


def _claimed(flat: list) -> list[tuple[str, int]]:
    return [(member.decode() if isinstance(member, bytes) else member, int(float(score)))
            for member, score in zip(flat[0::2], flat[1::2], strict=True)]


def partition_claim(*, partition: int, count: int) -> list[tuple[str, int]]:
    """The `count` oldest dirty streams of the partition as (member, score); they stay in the set
    until acknowledged. Renews the partition task's lease."""
    dirty, wake, _note, _seq = partition_keys(partition)
    return _claimed(redis_client().eval(_PARTITION_CLAIM, 2, dirty, wake, count, _lease()))


def partition_ack(*, partition: int, done: list[tuple[str, int, bool]], claim: int = 0) -> list[tuple[str, int]]:
    """Acknowledge drained streams (member, claimed score, again): each leaves the set, or moves to
    its end (again: its budget ran out with work left), unless a kick changed its score since the
    claim. With `claim`, claims the next batch in the same round trip (see partition_claim)."""
    if not done:
        return partition_claim(partition=partition, count=claim) if claim else []
    dirty, wake, _note, seq = partition_keys(partition)
    args = [value for member, score, again in done for value in (member, score, 1 if again else 0)]
    return _claimed(redis_client().eval(_PARTITION_ACK, 3, dirty, seq, wake, claim, _lease(), *args))


_broker: redis.Redis | None = None


def partition_queue_waiting(*, partition: int) -> bool:
    """Are other messages waiting on the partition's Celery queue (a stream's retry chain, a send
    routed there)? A long-running partition task then hands over, so they get their turn. Only
    with a Redis broker (elsewhere: False, and the task's budget bounds the wait)."""
    global _broker
    url = settings.CELERY_BROKER_URL or ""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return False
    try:
        if _broker is None:
            _broker = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return bool(_broker.llen(partition_queue(partition)))
    except redis.RedisError:
        return False


def partition_wait(*, partition: int, timeout: float) -> bool:
    """Block up to `timeout` s for a kick that arrived while this task runs; True if one did."""
    _dirty, _wake, note, _seq = partition_keys(partition)
    return redis_client().blpop([note], timeout=min(4.0, max(0.01, timeout))) is not None  # < socket_timeout


def partition_release(*, partition: int) -> bool:
    """Clear the partition's flag if nothing is dirty (then the next kick enqueues a task)."""
    dirty, wake, note, _seq = partition_keys(partition)
    return bool(redis_client().eval(_PARTITION_RELEASE, 3, dirty, wake, note))
