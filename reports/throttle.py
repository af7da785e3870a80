"""Rate limit of the stats endpoint: per caller (user or API key) and per organization, across
every web process, with the shared Redis limiter (notifications.ratelimit, scopes "stats.caller"
and "stats.org" in settings.HERALD_RATE_LIMITS). Also works out the RateLimit-* headers."""
import math
from dataclasses import dataclass

from notifications.ratelimit import Scope, limiter
from organizations.selectors import ApiKeyPrincipal


@dataclass(frozen=True)
class Quota:
    allowed: bool
    limit: int        # requests allowed in a burst (RateLimit-Limit)
    remaining: int    # requests that would be granted now (RateLimit-Remaining)
    reset: int        # seconds until the quota is whole again (RateLimit-Reset)
    retry_after: float = 0.0

    def headers(self) -> dict[str, str]:
        out = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
               "RateLimit-Reset": str(self.reset)}
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out


def caller_key(user) -> str:
    if isinstance(user, ApiKeyPrincipal):
        return f"key:{user.api_key.pk}"
    return f"user:{user.pk}"


def stats_scopes(*, user, organization_id: int) -> list[Scope]:
    return [Scope("stats.caller", caller_key(user)), Scope("stats.org", str(organization_id))]


def stats_quota_take(*, user, organization_id: int) -> Quota:
    """Take one request from both scopes (both or neither, atomically in Redis), then read both
    buckets to fill the headers; the tighter scope is the one reported. The read is a second
    round trip, so under concurrency Remaining is a close estimate, never a promise."""
    scopes = stats_scopes(user=user, organization_id=organization_id)
    decision = limiter.acquire(scopes)
    pipe = limiter.client.pipeline(transaction=False)
    pipe.time()
    pipe.mget([s.redis_key for s in scopes])
    (seconds, micros), tats = pipe.execute()
    now = seconds * 1_000_000 + micros
    tightest = None
    for scope, raw in zip(scopes, tats, strict=True):
        interval, burst = scope.interval_us(), scope.config[1]
        backlog = max(0, int(raw or 0) - now)  # how far the bucket's arrival time runs ahead of now
        remaining = max(0, min(burst, (burst * interval - backlog) // interval))
        candidate = (remaining, burst, math.ceil(backlog / 1_000_000))
        if tightest is None or candidate[0] < tightest[0]:
            tightest = candidate
    remaining, limit, reset = tightest
    if not decision.allowed:
        remaining = 0  # a slot may have freed between the refusal and the read: the refusal stands
    return Quota(allowed=decision.allowed, limit=limit, remaining=remaining, reset=reset,
                 retry_after=decision.wait)
