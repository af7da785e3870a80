"""The vocabulary shared by the fence and the channels: the failures a send raises, what a
gate answers, and what a drain reports. Imports nothing of Herald's, so channels and the fence
can both depend on it."""
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class DeliveryFailure(Exception):
    """Base: a provider call that did not deliver."""

    retry_after: float | None = None


class RateLimitedFailure(DeliveryFailure):
    """The provider said 429. `scope` names which of the channel's limiter scopes the provider
    limited ("channel": this destination, "global": the whole provider): that scope is paused
    for every worker for `retry_after` seconds. No attempt is spent."""

    def __init__(self, message: str, retry_after: float, scope: str = "channel"):
        super().__init__(message)
        self.retry_after = retry_after
        self.scope = scope


class TransientFailure(DeliveryFailure):
    """5xx, connection refused, a provider down: retry with backoff until the channel's retry
    window closes. `outage`: nothing says this message is at fault (e.g. only half-open breaker
    probes failed), so no attempt is spent."""

    def __init__(self, message: str, *, outage: bool = False, wait: float | None = None):
        super().__init__(message)
        self.outage = outage
        self.wait = wait


class UncertainFailure(TransientFailure):
    """The request may have been delivered (a timeout after it was sent, a broken response). The
    next attempt asks the channel to verify before sending again."""


class PermanentFailure(DeliveryFailure):
    """The request can never succeed as is (bad channel, revoked token): dead-letter at once."""


@dataclass(frozen=True)
class Gate:
    """A channel's answer before a send: go (with whatever the send needs, e.g. the SMTP route
    chosen), wait `wait` seconds without spending an attempt, or defer until `until` (a
    recipient's daily cap) with a recorded reason."""

    allowed: bool
    wait: float = 0.0
    reason: str = ""
    until: datetime | None = None
    context: Any = None

    @classmethod
    def go(cls, context: Any = None) -> "Gate":
        return cls(True, context=context)


@dataclass
class DrainResult:
    kind: str  # delivered | idle | busy | wait | held | missing | more
    count: int = 0
    wait: float = 0.0
    notes: dict = field(default_factory=dict)
    # delivered: the run reached the end of the log as this step read it under the lock, so the
    # drain stops without a second look (an entry committed later was kicked after the drain
    # cleared its flag, and gets a drain of its own).
    drained: bool = False
