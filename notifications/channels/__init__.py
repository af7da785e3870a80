"""Dispatchers for external channels. Each turns a run of events into one provider request and
classifies failures as rate-limited, transient (retry) or permanent (dead letter)."""


class DeliveryFailure(Exception):
    """Base: a provider call that did not deliver."""

    retry_after: float | None = None


class RateLimitedFailure(DeliveryFailure):
    def __init__(self, message: str, retry_after: float, scope: str = "channel"):
        super().__init__(message)
        self.retry_after = retry_after
        self.scope = scope


class TransientFailure(DeliveryFailure):
    """5xx, timeout, connection refused: retry with backoff."""


class PermanentFailure(DeliveryFailure):
    """The request can never succeed as is (bad channel, revoked token): dead-letter at once."""
