"""Circuit breaker per provider, its state in Redis so every worker shares it.

closed -> open when, over the last `window` seconds, at least `min_calls` calls were made and the
failure ratio reached `failure_ratio`. While open, `allow` answers "wait N s" and deliveries wait
without spending attempts. After `open_seconds` one caller at a time gets a half-open probe; a
successful probe closes the breaker, a failed one re-opens it (for twice as long, up to
`max_open_seconds`). Only transient failures (5xx, timeouts, connection errors) count: a permanent
error of one destination or a 429 says nothing about the provider's health.
Breakers are declared in settings.HERALD_BREAKERS.
"""
from dataclasses import dataclass

import redis
from django.conf import settings

from notifications import metrics

STATE_CODES = {"closed": 0, "half_open": 1, "open": 2}

# KEYS: state hash, calls zset. ARGV: now_ms, probe_ms. Returns {allowed, wait_ms, state}.
_ALLOW = """
local now = tonumber(ARGV[1])
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

# KEYS: state hash, calls zset. ARGV: now_ms, ok(1/0), window_ms, min_calls, ratio, open_ms, max_open_ms, member
_RECORD = """
local now = tonumber(ARGV[1])
local ok = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local st = redis.call('HGET', KEYS[1], 'state') or 'closed'
if st == 'half_open' then
  if ok == 1 then
    redis.call('DEL', KEYS[1], KEYS[2])
    return 'closed'
  end
  local last = tonumber(redis.call('HGET', KEYS[1], 'open_ms') or ARGV[6])
  local next_open = math.min(last * 2, tonumber(ARGV[7]))
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + next_open, 'open_ms', next_open, 'probe_until', 0)
  return 'open'
end
if st == 'open' then return 'open' end
redis.call('ZADD', KEYS[2], now, ARGV[8] .. ':' .. ok)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('PEXPIRE', KEYS[2], window * 2)
local calls = redis.call('ZRANGEBYSCORE', KEYS[2], now - window, '+inf')
local total, failed = #calls, 0
for _, m in ipairs(calls) do
  if string.sub(m, -2) == ':0' then failed = failed + 1 end
end
if total >= tonumber(ARGV[4]) and failed / total >= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[6]), 'open_ms', ARGV[6], 'probe_until', 0)
  redis.call('DEL', KEYS[2])
  return 'open'
end
return 'closed'
"""


@dataclass(frozen=True)
class BreakerDecision:
    allowed: bool
    wait: float
    state: str


class CircuitBreaker:
    def __init__(self, name: str, client: redis.Redis | None = None):
        self.name = name
        self._client = client

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        return self._client

    @property
    def config(self) -> dict:
        defaults = {"window": 30.0, "min_calls": 10, "failure_ratio": 0.5, "open_seconds": 5.0,
                    "max_open_seconds": 60.0, "probe_seconds": 10.0}
        return {**defaults, **settings.HERALD_BREAKERS.get(self.name, {})}

    def _keys(self) -> list[str]:
        return [f"herald:cb:{self.name}:state", f"herald:cb:{self.name}:calls"]

    def _now_ms(self) -> int:
        seconds, micros = self.client.time()
        return seconds * 1000 + micros // 1000

    def allow(self) -> BreakerDecision:
        cfg = self.config
        allowed, wait_ms, state = self.client.eval(_ALLOW, 2, *self._keys(), self._now_ms(),
                                                   int(cfg["probe_seconds"] * 1000))
        state = state.decode() if isinstance(state, bytes) else state
        metrics.BREAKER_STATE.labels(provider=self.name).set(STATE_CODES[state])
        return BreakerDecision(bool(allowed), wait_ms / 1000, state)

    def record(self, *, ok: bool) -> str:
        import uuid

        cfg = self.config
        state = self.client.eval(
            _RECORD, 2, *self._keys(), self._now_ms(), 1 if ok else 0, int(cfg["window"] * 1000),
            int(cfg["min_calls"]), float(cfg["failure_ratio"]), int(cfg["open_seconds"] * 1000),
            int(cfg["max_open_seconds"] * 1000), uuid.uuid4().hex[:12],
        )
        state = state.decode() if isinstance(state, bytes) else state
        metrics.BREAKER_STATE.labels(provider=self.name).set(STATE_CODES[state])
        return state

    def state(self) -> dict:
        raw = self.client.hgetall(self._keys()[0])
        data = {k.decode(): v.decode() for k, v in raw.items()}
        return {"state": data.get("state", "closed"), **data}

    def reset(self) -> None:
        self.client.delete(*self._keys())
