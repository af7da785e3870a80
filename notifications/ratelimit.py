"""One rate limiter for every provider: GCRA in a single Redis Lua script, several scopes at once.

A request names the scopes it needs (e.g. Slack global + Slack channel #ops); the script either
grants all of them together or grants none and says how long to wait. Scopes are declared in
settings.HERALD_RATE_LIMITS: {name: {"rate": per_second, "burst": n, "headroom": f, "tag": t}};
a new provider declares its scopes there, with no new limiter code.

Redis Cluster: every key of one script call carries the same hash tag, the scope's provider
(`tag`, default the name up to its first dot: "slack.channel" -> `herald:rl:{slack}:...`), so
scopes checked together must share it (acquire raises ValueError otherwise).

Lost history: each provider tag has an epoch key without expiry, `herald:rl:{<tag>}:epoch`. When
it is missing (Redis restarted empty, FLUSHDB, failover to an empty replica) the script records
the time and treats every bucket missing from then on as if its burst had been spent at that
moment, so no window of the provider's period holds more than rate*period + burst grants across
the loss. A brand-new Redis known to hold no history (tests, first deployment) may call
`RateLimiter.start_fresh()` to grant full bursts at once.

429s: a provider's Retry-After pauses the scope(s) it names, for every worker:

    scopes = [Scope("slack.global"), Scope("slack.channel", channel)]   # what the request acquired
    except RateLimitedFailure as exc:                                   # exc.scope: "global" | "channel"
        limiter.pause(scopes_named(scopes, exc.scope), exc.retry_after)

`scopes_named(scopes, "global")` is the shared scope (scopes[0]), "channel" / "destination" the
request's own (scopes[1:]), "all" every one, a declared name ("slack.channel") that scope; a name
it does not know pauses every scope (the safe side). A paused global scope blocks every channel.
"""
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis
from django.conf import settings
from redis.commands.core import Script

logger = logging.getLogger("herald.delivery")

# Every script starts with this: Redis's clock, the provider's epoch (KEYS[#KEYS]) and the bucket
# reader. A missing bucket is "as if its burst was spent at the epoch": harmless long after the
# epoch (the tat is in the past, i.e. a full burst), conservative right after lost history.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local epoch_key = KEYS[#KEYS]
local epoch = tonumber(redis.call('GET', epoch_key) or -1)
if epoch < 0 then
  epoch = now
  redis.call('SET', epoch_key, now)
end
local function bucket_tat(key, interval, burst)
  local v = redis.call('GET', key)
  local tat
  if v then tat = tonumber(v) else tat = epoch + burst * interval end
  if tat < now then tat = now end
  return tat
end
"""

# KEYS = scope keys..., epoch. ARGV = interval/burst pairs.
_ACQUIRE = _PRELUDE + """
local n = #KEYS - 1
local wait = 0
local blocker = 0
local new_tats = {}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local new_tat = bucket_tat(KEYS[i], interval, burst) + interval
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

# Fair variant: KEYS = scope keys..., queue zset, seen zset, epoch. ARGV = interval/burst pairs..., member,
# stale_us, lookahead, grace_us, priority_us (0: none). Waiters join a queue ordered by when they
# first waited, or by the caller's priority (e.g. when its oldest pending message was created); only the
# first `lookahead` of them may take a grant, and the one at rank r only once the slot has been free
# for r * grace, so the longest waiter gets first claim and a late head wastes at most a little.
# Waiters that stop polling for stale_us are dropped from the queue.
_ACQUIRE_FAIR = _PRELUDE + """
local n = #KEYS - 3
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
  new_tats[i] = bucket_tat(KEYS[i], interval, burst) + interval
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
new_tats[1] = bucket_tat(KEYS[1], interval, burst) + interval
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

# KEYS = scope keys..., epoch. ARGV = interval/burst pairs..., pause_us. Every scope: nobody is
# granted before now + pause; a shorter pause never shortens a longer one.
_PAUSE = _PRELUDE + """
local n = #KEYS - 1
local pause = tonumber(ARGV[2 * n + 1])
for i = 1, n do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local target = now + pause + (burst - 1) * interval
  if target > bucket_tat(KEYS[i], interval, burst) then
    redis.call('SET', KEYS[i], target, 'PX', math.ceil((target - now) / 1000) + 1000)
  end
end
return 1
"""


# Checks run before a grant in the same call (a breaker's allow: one Redis round trip per gate, not
# one per breaker plus the limiter's). Each check is a script body run as function(KEYS, ARGV); the
# limiter's own script runs the same way after them, on the keys and arguments that follow the
# checks'. ARGV starts with the number of checks c, then per check: its function's index, how many
# keys and how many arguments it takes. A check answering {0, ...} stops the call with
# {0, <check number>, <its answer>}; else the reply is {1, <limiter answer>, {<check answers>}}.
_CHECKED = """
local c = tonumber(ARGV[1])
local ki, ai = 1, 2 + 3 * c
local answers = {}
for i = 1, c do
  local fn, nk, na = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local k, a = {}, {}
  for j = 1, nk do k[j] = KEYS[ki]; ki = ki + 1 end
  for j = 1, na do a[j] = ARGV[ai]; ai = ai + 1 end
  local answer = checks[fn](k, a)
  if tonumber(answer[1]) == 0 then return {0, i, answer} end
  answers[i] = answer
end
local lk, la = {}, {}
for j = ki, #KEYS do lk[#lk + 1] = KEYS[j] end
for j = ai, #ARGV do la[#la + 1] = ARGV[j] end
return {1, grant(lk, la), answers}
"""

_scripts: dict[str, Script] = {}
_checked_sources: dict[tuple[str, tuple[str, ...]], str] = {}


def _run(client: redis.Redis, source: str, keys: list, args: list):
    """EVALSHA of a script (loaded on first use, again after a Redis restart): the script's text
    is not sent, nor hashed by Redis, on every call."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = client.register_script(source)
    return script(keys=keys, args=args, client=client)


@dataclass(frozen=True)
class Check:
    """A script body run before the limiter's grant in the same call, as function(KEYS, ARGV); it
    answers a table whose first item is 1 (go on) or 0 (stop: no grant is taken)."""

    source: str
    keys: list
    args: list


def _run_checked(client: redis.Redis, grant_source: str, checks: Sequence[Check], keys: list, args: list):
    """The grant script after `checks`, in one call: (None, check answers, grant answer) or
    (number of the check that stopped it, its answer, None)."""
    sources = tuple(dict.fromkeys(c.source for c in checks))
    source = _checked_sources.get((grant_source, sources))
    if source is None:
        functions = "".join(f"checks[{i}] = function(KEYS, ARGV)\n{body}\nend\n" for i, body in enumerate(sources, 1))
        source = _checked_sources[(grant_source, sources)] = (
            f"local checks = {{}}\n{functions}local function grant(KEYS, ARGV)\n{grant_source}\nend\n{_CHECKED}")
    header: list = [len(checks)]
    for check in checks:
        header += [sources.index(check.source) + 1, len(check.keys), len(check.args)]
    reply = _run(client, source, [k for c in checks for k in c.keys] + keys,
                 header + [a for c in checks for a in c.args] + args)
    if reply[0] == 0:
        return reply[1], reply[2], None
    return None, reply[2], reply[1]


@dataclass(frozen=True)
class Scope:
    """A named limit applied to one key, e.g. Scope("slack.channel", "C123")."""

    name: str
    key: str = ""

    @property
    def spec(self) -> dict:
        return settings.HERALD_RATE_LIMITS[self.name]

    @property
    def tag(self) -> str:
        """The Redis Cluster hash tag: the provider, shared by every scope checked with this one."""
        return str(self.spec.get("tag") or self.name.split(".", 1)[0])

    @property
    def redis_key(self) -> str:
        return f"herald:rl:{{{self.tag}}}:{self.name}:{self.key}"

    @property
    def config(self) -> tuple[float, int]:
        """(rate actually granted, burst). The rate keeps RATE_LIMIT_HEADROOM below the provider's
        figure so network jitter between our grant and the provider's clock never looks like a breach."""
        spec = self.spec
        headroom = float(spec.get("headroom", settings.RATE_LIMIT_HEADROOM))
        return float(spec["rate"]) * (1.0 - headroom), int(spec.get("burst", 1))

    def interval_us(self) -> int:
        rate, _ = self.config
        return max(1, int(round(1_000_000 / rate)))


def epoch_key(tag: str) -> str:
    """The provider's epoch marker (no expiry): when it is missing, the limiter's history was lost."""
    return f"herald:rl:{{{tag}}}:epoch"


def scopes_named(scopes: Sequence[Scope], name: str) -> list[Scope]:
    """The scopes of a request (shared scope first, as acquired) that a provider's 429 names:
    "global" -> [scopes[0]]; "channel" / "destination" -> scopes[1:] (scopes[0] if it is the only
    one); "all" -> every scope; a declared scope name ("slack.channel") -> that scope. Anything
    else pauses every scope: a limit we cannot place is safer held everywhere."""
    scopes = list(scopes)
    if not scopes:
        return []
    if name == "global":
        return scopes[:1]
    if name in ("channel", "destination"):
        return scopes[1:] or scopes[:1]
    by_name = [s for s in scopes if s.name == name]
    return by_name or scopes


@dataclass(frozen=True)
class Decision:
    allowed: bool
    wait: float  # seconds until the blocking scope would allow
    blocked_by: Scope | None = None
    # With checks: every check's answer (in order) when none said no; else `stopped_by` is the
    # number (from 1) of the one that did, and `checks` holds only its answer.
    checks: tuple = ()
    stopped_by: int | None = None


class RateLimiter:
    def __init__(self, client: redis.Redis | None = None):
        self._client = client

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        return self._client

    @staticmethod
    def _tag_of(scopes: Sequence[Scope]) -> str:
        tags = {scope.tag for scope in scopes}
        if len(tags) != 1:
            raise ValueError(f"scopes checked together must share one provider tag (Redis Cluster slot), got {tags}")
        return tags.pop()

    @staticmethod
    def _limits(scopes: Sequence[Scope]) -> list[int]:
        args: list[int] = []
        for scope in scopes:
            args += [scope.interval_us(), scope.config[1]]
        return args

    def acquire(self, scopes: list[Scope]) -> Decision:
        """Take one request from every scope, or from none; never blocks."""
        if not scopes:
            return Decision(True, 0.0)
        tag = self._tag_of(scopes)
        allowed, wait_us, blocker = _run(self.client, _ACQUIRE, [*[s.redis_key for s in scopes], epoch_key(tag)],
                                         self._limits(scopes))
        if allowed:
            return Decision(True, 0.0)
        return Decision(False, wait_us / 1_000_000, scopes[blocker - 1])

    def acquire_fair(self, scopes: list[Scope], *, member: str, stale: float = 10.0,
                     lookahead: int = 4, grace: float | None = None, since: float | None = None,
                     checks: Sequence[Check] = ()) -> Decision:
        """Like acquire, but callers waiting on scopes[0] (the shared one, e.g. a provider's global
        limit) are served in the order they started waiting, or oldest `since` first when the
        caller gives one (epoch seconds: when its oldest pending message was created, so a caller
        whose send failed keeps its place instead of queueing again). A caller told to wait must come back
        within `stale` seconds to keep its place (the wait it is given is never longer than half of
        that); a waiter that vanished (killed worker) is dropped after `stale` seconds. A caller
        blocked by its own scopes (scopes[1:], e.g. its channel) is told to wait for those and
        takes no place in the queue, so it never holds back callers that could go.

        `checks` (e.g. the provider's breakers, keys of the same hash tag) run first in the same
        call; one that says no ends it with `stopped_by` set and nothing granted or queued."""
        tag = self._tag_of(scopes)
        queue = scopes[0].redis_key + ":queue"
        keys = [*[s.redis_key for s in scopes], queue, queue + ":seen", epoch_key(tag)]
        args = [*self._limits(scopes), member, int(stale * 1_000_000), lookahead,
                int(grace * 1_000_000) if grace is not None else scopes[0].interval_us() // 4,
                int(since * 1_000_000) if since else 0]
        answers: tuple = ()
        if checks:
            stopped_by, answered, grant = _run_checked(self.client, _ACQUIRE_FAIR, checks, keys, args)
            if stopped_by is not None:
                return Decision(False, 0.0, None, checks=(answered,), stopped_by=stopped_by)
            answers = tuple(answered)
            allowed, wait_us, blocker, _rank = grant
        else:
            allowed, wait_us, blocker, _rank = _run(self.client, _ACQUIRE_FAIR, keys, args)
        if allowed:
            return Decision(True, 0.0, checks=answers)
        blocked_by = scopes[0] if blocker == -1 else scopes[blocker - 1]
        return Decision(False, min(wait_us / 1_000_000, stale / 2), blocked_by, checks=answers)

    def pause(self, scope: Scope | Sequence[Scope], seconds: float) -> bool:
        """Nobody gets this scope (or these scopes, one provider's) for `seconds`: a provider's
        Retry-After. Runs after the provider answered, so a Redis error is logged, not raised
        (the next acquire meets the same error and waits); returns whether the pause was stored."""
        scopes = [scope] if isinstance(scope, Scope) else list(scope)
        if not scopes:
            return True
        tag = self._tag_of(scopes)
        try:
            _run(self.client, _PAUSE, [*[s.redis_key for s in scopes], epoch_key(tag)],
                 [*self._limits(scopes), int(seconds * 1_000_000)])
        except redis.RedisError as exc:
            logger.warning("rate-limit pause not stored (Redis unavailable)",
                           extra={"scopes": [s.name for s in scopes], "seconds": seconds, "error": repr(exc)})
            return False
        return True

    def start_fresh(self, tags: Iterable[str] | None = None) -> None:
        """Declare that this Redis holds no history for these provider tags (default: every tag in
        HERALD_RATE_LIMITS) and none was lost: missing buckets grant full bursts at once. For a
        brand-new Redis (tests, a first deployment), never after a restart."""
        if tags is None:
            tags = {Scope(name).tag for name in settings.HERALD_RATE_LIMITS}
        for tag in tags:
            self.client.set(epoch_key(tag), 0)


limiter = RateLimiter()
