"""The drain policy: run fence steps until the budget is spent, then say what to do next. The
tasks (notifications.tasks.deliver_stream, drain_partition) only apply the answer.

`stream_drain` drains one stream; `partition_drain` drains every kicked local stream of one org
partition (notifications.delivery.kicks: a dirty set per partition), stream by stream through the
same fence, with one publish per batch of streams (Announcements: no run waits longer than
about DELIVERY_ANNOUNCE_HOLD_SECONDS after its commit for the others of its batch)."""
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import OperationalError

from notifications.delivery.fence import stream_deliver
from notifications.delivery.kicks import (
    drain_enqueue,
    member_stream,
    partition_ack,
    partition_claim,
    partition_queue_waiting,
    partition_release,
    partition_wait,
    stream_kick_clear,
    stream_kick_set,
    stream_retry_token,
)
from notifications.delivery.types import DrainResult

logger = logging.getLogger("herald.delivery")

BUSY_RETRY_SECONDS = 0.2
# One stream's turn within a partition task before the next dirty stream's (a long backlog goes
# back to the end of the set and continues on its next turn).
PARTITION_STREAM_BUDGET_SECONDS = 0.5


class Announcements:
    """The committed runs of a partition task not yet announced (the fence appends each after its
    commit). Announced together, one publish per channel, so many streams' small runs cost one Redis
    round trip; but a run held should not wait longer than `hold` seconds after its commit: a batch
    of streams with long runs (a send batch: several runs of 50 entries per stream) would otherwise
    keep the first run's sockets waiting for the last stream's commit, and that wait is the
    fan-out's lag (admission control's signal, notifications.delivery.lag). Before each step the
    drain asks `before_step()`: the runs held go out now if they would pass the hold by the end of
    the next step, taken to last as long as the previous one."""

    def __init__(self, hold: float | None = None, clock=time.monotonic):
        self.hold = settings.DELIVERY_ANNOUNCE_HOLD_SECONDS if hold is None else hold
        self.clock = clock
        self.runs: list = []
        self.since = 0.0
        self.last_step = 0.0

    def append(self, run) -> None:
        if not self.runs:
            self.since = self.clock()
        self.runs.append(run)

    def before_step(self) -> None:
        if self.runs and self.clock() + self.last_step - self.since >= self.hold:
            self.flush()

    def step_took(self, seconds: float) -> None:
        self.last_step = seconds

    def flush(self) -> None:
        runs, self.runs = self.runs, []
        if runs:
            _announce(runs)


def stream_drain(*, org_id: int, channel: str, destination: str = "", budget_seconds: float = 5.0,
                 clear_kick: bool = True, published: list | Announcements | None = None) -> DrainResult:
    """Drain as much as the budget allows; the result says what to do next (retry, wait, stop).
    `clear_kick`: clear the stream's kick flag first (a partition drain has no flag to clear: its
    claim on the dirty set plays that part). `published`: see fence.stream_deliver."""
    if clear_kick:
        stream_kick_clear(org_id=org_id, channel=channel, destination=destination)
    deadline = time.monotonic() + budget_seconds
    total = 0
    while True:
        pacing = isinstance(published, Announcements)
        if pacing:
            published.before_step()
        started = time.monotonic()
        result = stream_deliver(org_id=org_id, channel=channel, destination=destination, published=published)
        if pacing:
            published.step_took(time.monotonic() - started)
        total += result.count
        if result.kind == "delivered" and result.drained:
            # The flag was cleared (or the stream claimed) before the step read the log, so whatever
            # committed after that read has kicked again: looking once more (a lock, a read, a
            # commit) would find nothing.
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


# --- partitions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PartitionResult:
    """idle: nothing dirty, the partition's flag released; more: the budget ran out (the task
    hands over to a new one, so other tasks of the queue get a turn)."""

    kind: str
    streams: int = 0
    count: int = 0


def _partition_stream(org_id: int, channel: str, destination: str,
                      published: Announcements) -> tuple[bool, int]:
    """One dirty stream's turn: (again, entries delivered). again: its budget ran out with work
    left. A stream that is busy (another worker holds its lock) or must wait gets the stream's
    delayed-retry chain as a deliver_stream drain would (drain_next); its kick flag is set first,
    so a chain already waiting that goes idle drains once more."""
    try:
        result = stream_drain(org_id=org_id, channel=channel, destination=destination, clear_kick=False,
                              budget_seconds=PARTITION_STREAM_BUDGET_SECONDS, published=published)
    except OperationalError:
        raise  # the task retries; the stream was not acknowledged and stays dirty
    except Exception:
        # Not this task's to retry forever: the stream leaves the set and the sweeper re-kicks it.
        logger.exception("partition drain of a stream failed", extra={"org_id": org_id, "channel": channel})
        return False, 0
    if result.kind == "more":
        return True, result.count
    if result.kind in ("busy", "wait"):
        stream_kick_set(org_id=org_id, channel=channel, destination=destination)
        step = drain_next(org_id=org_id, channel=channel, destination=destination, retry=False, result=result)
        if step.again:
            drain_enqueue(org_id=org_id, channel=channel, destination=destination, retry=step.retry,
                          countdown=step.countdown)
    return False, result.count


def _announce(published: list) -> None:
    """The committed runs of a batch, one publish per channel (commit order kept within it)."""
    by_channel: dict[str, tuple] = {}
    for ch, outcome in published:
        by_channel.setdefault(ch.name, (ch, []))[1].append(outcome)
    for ch, outcomes in by_channel.values():
        try:
            ch.published_batch(outcomes)
        except Exception:  # committed already; the live feed catches up from the log
            logger.warning("partition batch not announced", extra={"channel": ch.name}, exc_info=True)


def partition_drain(*, partition: int, budget_seconds: float | None = None, linger_seconds: float | None = None,
                    batch: int | None = None) -> PartitionResult:
    """Drain the partition's dirty streams, oldest kick first, `batch` at a time, until none is
    left (then wait up to `linger_seconds` for more kicks before releasing the partition's flag),
    the budget is spent, or other messages wait on the partition's queue (checked about once a
    second; then the task hands over, and they run before its successor). Each stream is drained
    by the fence, so two tasks on one partition (a re-delivered message, a sweeper's kick) cannot
    reorder anything: one finds the lock busy."""
    budget = settings.DELIVERY_PARTITION_BUDGET_SECONDS if budget_seconds is None else budget_seconds
    linger = settings.DELIVERY_PARTITION_LINGER_SECONDS if linger_seconds is None else linger_seconds
    batch = batch or settings.DELIVERY_PARTITION_BATCH
    started = time.monotonic()
    deadline, looked = started + budget, started
    streams = count = 0

    def yield_turn() -> bool:
        nonlocal looked
        now = time.monotonic()
        if now >= deadline:
            return True
        if now - looked < 1.0:
            return False
        looked = now
        return partition_queue_waiting(partition=partition)

    claimed = partition_claim(partition=partition, count=batch)
    idle_since = None
    while True:
        if not claimed:
            now = time.monotonic()
            idle_since = idle_since or now
            wait = min(idle_since + linger - now, deadline - now, 1.0)  # slices: the queue is looked at
            if wait > 0 and not yield_turn():
                partition_wait(partition=partition, timeout=wait)  # woken by a kick, or a slice passed
                claimed = partition_claim(partition=partition, count=batch)
                continue
            if partition_release(partition=partition):
                return PartitionResult("idle", streams=streams, count=count)
            if yield_turn():
                return PartitionResult("more", streams=streams, count=count)
            claimed = partition_claim(partition=partition, count=batch)  # kicked just before the release
            continue
        idle_since = None
        done: list[tuple[str, int, bool]] = []
        published = Announcements()
        try:
            for member, score in claimed:
                org_id, channel, destination = member_stream(member)
                again, delivered = _partition_stream(org_id, channel, destination, published)
                done.append((member, score, again))
                streams, count = streams + 1, count + delivered
                if time.monotonic() >= deadline:
                    break  # the rest stay dirty for the next task
        except BaseException:
            published.flush()
            partition_ack(partition=partition, done=done)
            raise
        published.flush()
        if yield_turn():
            partition_ack(partition=partition, done=done)
            return PartitionResult("more", streams=streams, count=count)
        claimed = partition_ack(partition=partition, done=done, claim=batch)
