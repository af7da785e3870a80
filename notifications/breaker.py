"""Circuit breaker per provider, its state in Redis so every worker shares it.

closed -> open when, over the last `window` seconds, at least `min_calls` calls were made and the
failure ratio reached `failure_ratio`, or when `consecutive_failures` calls in a row failed (each
within `consecutive_window` of the previous one), whatever the traffic: a provider called once every
few seconds opens it too. While open, `allow` answers "wait N s" and deliveries wait without
spending attempts. After `open_seconds` one caller at a time gets a half-open probe
(`BreakerDecision.probe`); a successful probe closes the breaker, a failed one re-opens it (for
twice as long, up to `max_open_seconds`). `record()` returns the new state and whether the recorded
call was that probe (`BreakerRecord.probe`), so a caller does not spend a delivery attempt on a
failed probe. Only transient failures (5xx, timeouts, connection errors) count: a permanent error of
one destination or a 429 says nothing about the provider's health.

Redis unavailable: `record()` never raises (it runs after the provider answered; the outcome is
recorded in Postgres whatever happens here): it logs and returns "unknown". `allow()` fails closed:
it answers "wait `unavailable_wait` s" with state "unknown" (without Redis the limiter cannot vouch
for the provider's limits either). `state()` and `reset()` raise as any Redis call does.

Breakers are declared in settings.HERALD_BREAKERS. Keys carry the breaker's name as a Redis Cluster
hash tag (`herald:cb:{slack}:state|calls|failures`), so each script call stays in one slot.
"""
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis
from django.conf import settings
from redis.commands.core import Script

from notifications import metrics

logger = logging.getLogger("herald.delivery")

STATE_CODES = {"closed": 0, "half_open": 1, "open": 2}
UNKNOWN = "unknown"  # Redis did not answer: the state could not be read or written

DEFAULTS = {"window": 30.0, "min_calls": 10, "failure_ratio": 0.5, "open_seconds": 5.0,
            "max_open_seconds": 60.0, "probe_seconds": 10.0, "consecutive_failures": 5,
            "consecutive_window": 300.0, "unavailable_wait": 5.0}

# KEYS: state hash, calls zset, failures zset. ARGV: now_ms ("": Redis TIME), probe_ms.
# Returns {allowed, wait_ms, state}.
_ALLOW = """
local now = tonumber(ARGV[1])
if now == nil then  -- no clock given: Redis TIME, read here rather than in a round trip of its own
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local st = redis.call('HGET', KEYS[1], 'state') or 'closed'
if st == 'closed' then return {1, 0, 'closed'} end
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or 0)
if st == 'open' and now < until_ms then return {0, until_ms - now, 'open'} end
-- open and due, or half-open: one probe at a time
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or 0)
if probe_until > now then return {0, probe_until - now, 'half_open'} end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', now + tonumber(ARGV[2]))
return {1, 0, 'half_open'}
"""

# KEYS: state hash, calls zset, failures zset. ARGV: now_ms ("": Redis TIME), ok(1/0), window_ms, min_calls, ratio,
# open_ms, max_open_ms, member, consecutive_failures, consecutive_window_ms. Returns {state, probe(1/0)}.
# Calls and failures of the window are two sorted sets counted with ZCARD (O(log n) a call, not a
# scan of the window). The state hash also counts consecutive failures while closed (field
# `fails`, the hash expiring consecutive_window after the last one); any success clears it.
_RECORD = """
local now = tonumber(ARGV[1])
if now == nil then  -- no clock given: Redis TIME, read here rather than in a round trip of its own
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local ok = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local st = redis.call('HGET', KEYS[1], 'state') or 'closed'
local function open_for(ms)
  redis.call('HDEL', KEYS[1], 'fails')
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + ms, 'open_ms', ms, 'probe_until', 0)
  redis.call('PERSIST', KEYS[1])
  redis.call('DEL', KEYS[2], KEYS[3])
end
if st == 'half_open' then
  if ok == 1 then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    return {'closed', 1}
  end
  local last = tonumber(redis.call('HGET', KEYS[1], 'open_ms') or ARGV[6])
  open_for(math.min(last * 2, tonumber(ARGV[7])))
  return {'open', 1}
end
if st == 'open' then return {'open', 0} end
if ok == 1 then
  redis.call('HDEL', KEYS[1], 'fails')
else
  local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
  if fails >= tonumber(ARGV[9]) then
    open_for(tonumber(ARGV[6]))
    return {'open', 0}
  end
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[10]))
  redis.call('ZADD', KEYS[3], now, ARGV[8])
  redis.call('PEXPIRE', KEYS[3], window * 2)
end
redis.call('ZADD', KEYS[2], now, ARGV[8])
redis.call('PEXPIRE', KEYS[2], window * 2)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
local total = redis.call('ZCARD', KEYS[2])
local failed = redis.call('ZCARD', KEYS[3])
if total >= tonumber(ARGV[4]) and failed / total >= tonumber(ARGV[5]) then
  open_for(tonumber(ARGV[6]))
  return {'open', 0}
end
return {'closed', 0}
"""


@dataclass(frozen=True)
class BreakerDecision:
    allowed: bool
    wait: float
    state: str
    probe: bool = False  # this call is the half-open probe: its outcome decides the breaker


class BreakerRecord(str):
    """What record() returns: the new state ("closed", "open", "half_open" or "unknown"), as a str
    so `record(ok=False) == "open"` keeps working, plus `probe`: the recorded call was the
    half-open probe (a failed probe is the breaker's business, not a delivery attempt)."""

    probe: bool

    def __new__(cls, state: str, *, probe: bool = False) -> "BreakerRecord":
        record = super().__new__(cls, state)
        record.probe = probe
        return record

    @property
    def state(self) -> str:
        return str(self)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


_clients: dict[str, redis.Redis] = {}
_scripts: dict[str, Script] = {}


def _run(client: redis.Redis, source: str, keys: list, args: list):
    """EVALSHA of a script (loaded on first use, again after a Redis restart), not its text per call."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = client.register_script(source)
    return script(keys=keys, args=args, client=client)


def _shared_client() -> redis.Redis:
    """One client (one connection pool) per process and Redis URL: the fence makes a breaker per
    call, and a client per breaker opened and closed a TCP connection for every allow() and
    record() (two per provider send)."""
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return client


class CircuitBreaker:
    def __init__(self, name: str, client: redis.Redis | None = None, *, clock: Callable[[], float] | None = None):
        """`clock`: seconds since the epoch; default Redis TIME, the one clock every worker shares
        (tests pass their own to replay minutes of traffic in milliseconds)."""
        self.name = name
        self._client = client
        self._clock = clock

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = _shared_client()
        return self._client

    @property
    def config(self) -> dict:
        return {**DEFAULTS, **settings.HERALD_BREAKERS.get(self.name, {})}

    def _keys(self) -> list[str]:
        return [f"herald:cb:{{{self.name}}}:{part}" for part in ("state", "calls", "failures")]

    def _now_ms(self) -> int | str:
        """The clock the scripts use: the test's, else "" (the script reads Redis TIME itself)."""
        if self._clock is not None:
            return int(self._clock() * 1000)
        return ""

    # allow() as a part of a bigger script (notifications.ratelimit.Check: the limiter runs it before
    # its grant, in the same Redis call): its body, keys and arguments, and what its answer means.
    ALLOW_SOURCE = _ALLOW

    @property
    def keys(self) -> list[str]:
        return self._keys()

    def allow_args(self) -> list:
        return [self._now_ms(), int(self.config["probe_seconds"] * 1000)]

    def allow_answer(self, answer) -> BreakerDecision:
        """The decision an _ALLOW answer ({allowed, wait_ms, state}) stands for."""
        allowed, wait_ms, state = answer
        state = _text(state)
        metrics.BREAKER_STATE.labels(provider=self.name).set(STATE_CODES[state])
        return BreakerDecision(bool(allowed), wait_ms / 1000, state, probe=bool(allowed) and state == "half_open")

    def unavailable(self, exc: Exception) -> BreakerDecision:
        """Redis did not answer: fail closed for a short wait."""
        logger.warning("breaker unavailable (Redis): calls wait", extra={"breaker": self.name, "error": repr(exc)})
        return BreakerDecision(False, float(self.config["unavailable_wait"]), UNKNOWN)

    def allow(self) -> BreakerDecision:
        """May a call go now? Fails closed (wait `unavailable_wait`, state "unknown") when Redis errs."""
        try:
            answer = _run(self.client, _ALLOW, self._keys(), self.allow_args())
        except redis.RedisError as exc:
            return self.unavailable(exc)
        return self.allow_answer(answer)

    def record(self, *, ok: bool) -> BreakerRecord:
        """Count one call's outcome. Never raises on a Redis error (logs, returns "unknown")."""
        cfg = self.config
        try:
            state, probe = _run(self.client, _RECORD, self._keys(), [
                self._now_ms(), 1 if ok else 0, int(cfg["window"] * 1000),
                int(cfg["min_calls"]), float(cfg["failure_ratio"]), int(cfg["open_seconds"] * 1000),
                int(cfg["max_open_seconds"] * 1000), uuid.uuid4().hex[:12], int(cfg["consecutive_failures"]),
                int(cfg["consecutive_window"] * 1000),
            ])
        except redis.RedisError as exc:
            logger.warning("breaker outcome not recorded (Redis unavailable)",
                           extra={"breaker": self.name, "ok": ok, "error": repr(exc)})
            return BreakerRecord(UNKNOWN)
        state = _text(state)
        metrics.BREAKER_STATE.labels(provider=self.name).set(STATE_CODES[state])
        return BreakerRecord(state, probe=bool(probe))

    def state(self) -> dict:
        raw = self.client.hgetall(self._keys()[0])
        data = {k.decode(): v.decode() for k, v in raw.items()}
        return {"state": data.get("state", "closed"), **data}

    def reset(self) -> None:
        self.client.delete(*self._keys())
