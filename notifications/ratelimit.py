"""One rate limiter for every provider: GCRA in a single Redis Lua script, several scopes at once.

A request names the scopes it needs (e.g. Slack global + Slack channel #ops); the script either
grants all of them together or grants none and says how long to wait. A provider's 429 with
Retry-After pauses a scope for every worker by pushing its theoretical arrival time forward.
Scopes are declared in settings.HERALD_RATE_LIMITS: {name: {"rate": per_second, "burst": n}};
a new provider declares its scopes there, with no new limiter code.
"""
from dataclasses import dataclass

import redis
from django.conf import settings

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local wait = 0
local blocker = 0
local new_tats = {}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at > now and allow_at - now > wait then
    wait = allow_at - now
    blocker = i
  end
  new_tats[i] = new_tat
end
if wait > 0 then return {0, wait, blocker} end
for i = 1, n do
  redis.call('SET', KEYS[i], new_tats[i], 'PX', math.max(1, math.ceil((new_tats[i] - now) / 1000)) + 1000)
end
return {1, 0, 0}
"""

# Fair variant: KEYS = scope keys..., queue zset, seen zset. ARGV = interval/burst pairs..., member,
# stale_us, lookahead, grace_us, priority_us (0: none). Waiters join a queue ordered by when they
# first waited, or by the caller's priority (e.g. when its oldest pending message was created); only the
# first `lookahead` of them may take a grant, and the one at rank r only once the slot has been free
# for r * grace, so the longest waiter gets first claim and a late head wastes at most a little.
# Waiters that stop polling for stale_us are dropped from the queue.
_ACQUIRE_FAIR = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS - 2
local q, seen = KEYS[n + 1], KEYS[n + 2]
local member = ARGV[2 * n + 1]
local stale = tonumber(ARGV[2 * n + 2])
local lookahead = tonumber(ARGV[2 * n + 3])
local grace = tonumber(ARGV[2 * n + 4])
local priority = tonumber(ARGV[2 * n + 5])
for _, m in ipairs(redis.call('ZRANGEBYSCORE', seen, '-inf', now - stale)) do
  redis.call('ZREM', q, m)
  redis.call('ZREM', seen, m)
end
-- The caller's own scopes first (e.g. its channel): a caller they block is not waiting for the
-- shared scope, so it takes no place in the queue (it would hold back callers that could go).
local new_tats = {}
local wait, blocker = 0, 0
for i = 2, n do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  new_tats[i] = tat + interval
  local allow_at = new_tats[i] - burst * interval
  if allow_at > now and allow_at - now > wait then
    wait = allow_at - now
    blocker = i
  end
end
if wait > 0 then
  redis.call('ZREM', q, member)
  redis.call('ZREM', seen, member)
  return {0, wait, blocker, -1}
end
if priority > 0 then
  redis.call('ZADD', q, priority, member)
else
  redis.call('ZADD', q, 'NX', now, member)
end
redis.call('ZADD', seen, now, member)
redis.call('PEXPIRE', q, math.ceil(stale / 1000) * 4)
redis.call('PEXPIRE', seen, math.ceil(stale / 1000) * 4)
local rank = redis.call('ZRANK', q, member)
local interval = tonumber(ARGV[1])
if rank >= lookahead then  -- come back about when its turn is due, not every slot
  return {0, rank * interval, -1, rank}
end
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
new_tats[1] = tat + interval
local allow_at = new_tats[1] - burst * interval + rank * grace  -- the head gets first claim on a free slot
if allow_at > now then
  return {0, allow_at - now + rank * interval, 1, rank}  -- the slots ahead go to lower ranks
end
for i = 1, n do
  redis.call('SET', KEYS[i], new_tats[i], 'PX', math.max(1, math.ceil((new_tats[i] - now) / 1000)) + 1000)
end
redis.call('ZREM', q, member)
redis.call('ZREM', seen, member)
return {1, 0, 0, rank}
"""

_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local pause = tonumber(ARGV[3])
local target = now + pause + (burst - 1) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if target > tat then
  redis.call('SET', KEYS[1], target, 'PX', math.ceil((target - now) / 1000) + 1000)
end
return 1
"""


@dataclass(frozen=True)
class Scope:
    """A named limit applied to one key, e.g. Scope("slack.channel", "C123")."""

    name: str
    key: str = ""

    @property
    def redis_key(self) -> str:
        return f"herald:rl:{self.name}:{self.key}"

    @property
    def config(self) -> tuple[float, int]:
        """(rate actually granted, burst). The rate keeps RATE_LIMIT_HEADROOM below the provider's
        figure so network jitter between our grant and the provider's clock never looks like a breach."""
        spec = settings.HERALD_RATE_LIMITS[self.name]
        headroom = float(spec.get("headroom", settings.RATE_LIMIT_HEADROOM))
        return float(spec["rate"]) * (1.0 - headroom), int(spec.get("burst", 1))

    def interval_us(self) -> int:
        rate, _ = self.config
        return max(1, int(round(1_000_000 / rate)))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    wait: float  # seconds until the blocking scope would allow
    blocked_by: Scope | None = None


class RateLimiter:
    def __init__(self, client: redis.Redis | None = None):
        self._client = client

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        return self._client

    def acquire(self, scopes: list[Scope]) -> Decision:
        """Take one request from every scope, or from none; never blocks."""
        args: list[int] = []
        for scope in scopes:
            args += [scope.interval_us(), scope.config[1]]
        allowed, wait_us, blocker = self.client.eval(_ACQUIRE, len(scopes), *[s.redis_key for s in scopes], *args)
        if allowed:
            return Decision(True, 0.0)
        return Decision(False, wait_us / 1_000_000, scopes[blocker - 1])

    def acquire_fair(self, scopes: list[Scope], *, member: str, stale: float = 10.0,
                     lookahead: int = 4, grace: float | None = None, since: float | None = None) -> Decision:
        """Like acquire, but callers waiting on scopes[0] (the shared one, e.g. a provider's global
        limit) are served in the order they started waiting, or oldest `since` first when the
        caller gives one (epoch seconds: when its oldest pending message was created, so a caller
        whose send failed keeps its place instead of queueing again). A caller told to wait must come back
        within `stale` seconds to keep its place (the wait it is given is never longer than half of
        that); a waiter that vanished (killed worker) is dropped after `stale` seconds. A caller
        blocked by its own scopes (scopes[1:], e.g. its channel) is told to wait for those and
        takes no place in the queue, so it never holds back callers that could go."""
        args: list[int] = []
        for scope in scopes:
            args += [scope.interval_us(), scope.config[1]]
        queue = scopes[0].redis_key + ":queue"
        allowed, wait_us, blocker, _rank = self.client.eval(
            _ACQUIRE_FAIR, len(scopes) + 2, *[s.redis_key for s in scopes], queue, queue + ":seen",
            *args, member, int(stale * 1_000_000), lookahead,
            int(grace * 1_000_000) if grace is not None else scopes[0].interval_us() // 4,
            int(since * 1_000_000) if since else 0,
        )
        if allowed:
            return Decision(True, 0.0)
        blocked_by = scopes[0] if blocker == -1 else scopes[blocker - 1]
        return Decision(False, min(wait_us / 1_000_000, stale / 2), blocked_by)

    def pause(self, scope: Scope, seconds: float) -> None:
        """Nobody gets this scope for `seconds` (a provider's Retry-After)."""
        self.client.eval(_PAUSE, 1, scope.redis_key, scope.interval_us(), scope.config[1], int(seconds * 1_000_000))


limiter = RateLimiter()
