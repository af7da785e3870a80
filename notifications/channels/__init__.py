"""Channels: one module per way of reaching people (in-app + WebSocket, Slack, email, webhooks,
...), each a `Channel` subclass listed in settings.HERALD_CHANNELS (see `registry`). The failures
a send raises live in notifications.delivery.types and are re-exported here for channel modules."""
from notifications.delivery.types import (  # noqa: F401
    DeliveryFailure,
    PermanentFailure,
    RateLimitedFailure,
    TransientFailure,
    UncertainFailure,
)
