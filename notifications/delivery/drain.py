"""The drain policy: run fence steps until the budget is spent, then say what to do next. The
task (notifications.tasks.deliver_stream) only applies the answer."""
import time
from dataclasses import dataclass

from django.conf import settings

from notifications.delivery.fence import stream_deliver
from notifications.delivery.kicks import stream_kick_clear, stream_retry_token
from notifications.delivery.types import DrainResult

BUSY_RETRY_SECONDS = 0.2


def stream_drain(*, org_id: int, channel: str, destination: str = "", budget_seconds: float = 5.0) -> DrainResult:
    """Drain as much as the budget allows; the result says what to do next (retry, wait, stop)."""
    stream_kick_clear(org_id=org_id, channel=channel, destination=destination)
    deadline = time.monotonic() + budget_seconds
    total = 0
    while True:
        result = stream_deliver(org_id=org_id, channel=channel, destination=destination)
        total += result.count
        if result.kind == "delivered" and result.drained:
            # The flag was cleared before the step read the log, so whatever committed after that
            # read has kicked again: looking once more (a lock, a read, a commit) would find nothing.
            return DrainResult("idle", count=total)
        if result.kind == "delivered" and time.monotonic() < deadline:
            continue
        if result.kind == "delivered":
            return DrainResult("more", count=total)
        result.count = total
        return result


@dataclass(frozen=True)
class Next:
    """What the task does after a drain: enqueue again now, later (countdown), or stop."""

    again: bool = False
    countdown: float | None = None
    retry: bool = False


def drain_next(*, org_id: int, channel: str, destination: str, retry: bool, result: DrainResult) -> Next:
    token = {"org_id": org_id, "channel": channel, "destination": destination, "owner": retry}
    if result.kind == "more":  # budget used up with work left: continue at once, same role
        return Next(again=True, retry=retry)
    if result.kind in ("busy", "wait"):
        # busy: another worker holds the stream and may have read the pending set before our entry.
        # wait: backoff, limiter, breaker or a deferral. A wait longer than the sweeper's reach is
        # left to the sweeper (it finds the stream once next_attempt_at has passed).
        delay = BUSY_RETRY_SECONDS if result.kind == "busy" else max(0.05, result.wait)
        if delay > settings.DELIVERY_MAX_RETRY_COUNTDOWN:
            stream_retry_token(**token, delay=None)
            return Next()
        if stream_retry_token(**token, delay=delay):
            return Next(again=True, countdown=delay, retry=True)
        return Next()
    if stream_retry_token(**token, delay=None):
        return Next(again=True)  # an entry arrived while this chain was waiting
    return Next()
