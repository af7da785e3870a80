"""One task per partition wake (notifications.delivery.kicks / drain.partition_drain): a kick adds the
stream to its partition's dirty set and enqueues a task only when none is queued or running; the
task drains every dirty stream through the fence. Nothing kicked is lost: not a kick that arrives
while the task runs, not a stream of a task killed mid-batch; two tasks on one partition do not
reorder anything (real Postgres and Redis, commits included)."""
import threading
import time

import pytest
from django.db import connection

from config.routing import partition_queue, route_task
from notifications.channels import inapp, registry
from notifications.delivery import drain, kicks
from notifications.delivery.streams import stream_ensure
from notifications.models import DeliveryStream, Notification
from tests.organizations.factories import MembershipFactory
from tests.trackers.factories import TrackerEventFactory, TrackerFactory

pytestmark = pytest.mark.django_db(transaction=True)

PARTITION = 0


@pytest.fixture(autouse=True)
def one_partition(settings, monkeypatch):
    """Every organization in partition 0; enqueues recorded, not sent (the test runs the drains)."""
    settings.ORG_QUEUE_PARTITIONS = 1
    settings.DELIVERY_PARTITION_LINGER_SECONDS = 0.0
    settings.DELIVERY_ANNOUNCE_HOLD_SECONDS = 60.0  # one publish per batch, however slow the box
    enqueued = {"partition": [], "stream": []}
    monkeypatch.setattr(kicks, "partition_enqueue", lambda **kw: enqueued["partition"].append(kw))
    monkeypatch.setattr(kicks, "drain_enqueue", lambda **kw: enqueued["stream"].append(kw))
    monkeypatch.setattr(drain, "drain_enqueue", lambda **kw: enqueued["stream"].append(kw))
    return enqueued


class Sent(list):
    """(org id, seq) of every live message; `calls`: messages per publish call."""

    calls: list[int]


@pytest.fixture
def published(monkeypatch):
    """Every live message the in-app channel publishes."""
    sent = Sent()
    lock = threading.Lock()
    calls: list[int] = []

    def publish(messages):
        with lock:
            calls.append(len(messages))
            sent.extend((message["org_id"], message["seq"]) for _group, message in messages)

    monkeypatch.setattr("notifications.channels.inapp.realtime.publish", publish)
    sent.calls = calls
    return sent


def _org(members: int = 2):
    tracker = TrackerFactory()
    for _ in range(members):
        MembershipFactory(organization=tracker.organization)
    stream_ensure(org_id=tracker.organization_id, channel="inapp")
    return tracker


def _events(tracker, count: int) -> None:
    for i in range(count):
        TrackerEventFactory(tracker=tracker, action="start" if i % 2 == 0 else "stop")


def _inbox_in_order(org) -> None:
    """Every member has every entry exactly once, inbox ids in seq order; the cursor at the end."""
    last = org.__class__.objects.get(pk=org.pk).last_event_seq
    for membership in org.memberships.all():
        seqs = list(Notification.objects.filter(organization=org, recipient_id=membership.user_id)
                    .order_by("id").values_list("seq", flat=True))
        assert seqs == list(range(1, last + 1)), (membership.user_id, seqs)
    assert DeliveryStream.objects.get(organization=org, channel="inapp").delivered_seq == last


def _dirty() -> list[str]:
    return [member for member, _score in kicks.partition_claim(partition=PARTITION, count=1000)]


def test_kicks_enqueue_one_task_per_wake_and_the_task_drains_every_kicked_stream(one_partition, published):
    a, b = _org(), _org()
    _events(a, 3)
    _events(b, 2)

    assert one_partition["partition"] == [{"partition": PARTITION}]  # 5 commits, one task
    assert one_partition["stream"] == []
    assert sorted(_dirty()) == sorted([f"{a.organization_id}:inapp:", f"{b.organization_id}:inapp:"])

    result = drain.partition_drain(partition=PARTITION)

    assert (result.kind, result.streams, result.count) == ("idle", 2, 5)
    _inbox_in_order(a.organization)
    _inbox_in_order(b.organization)
    assert sorted(published) == sorted([(a.organization_id, s) for s in (1, 2, 3)] +
                                       [(b.organization_id, s) for s in (1, 2)])
    assert published.calls == [5]  # one publish for the batch
    assert _dirty() == []

    _events(a, 1)  # released: the next kick wakes a new task
    assert one_partition["partition"] == [{"partition": PARTITION}] * 2


def test_partition_tasks_are_routed_to_their_queue():
    assert route_task(kicks.PARTITION_TASK, (), {"partition": 5}, {}) == {"queue": "org-5"}


def test_external_streams_are_kicked_stream_by_stream():
    assert kicks.is_partitioned("inapp")
    assert not kicks.is_partitioned("slack")
    assert not kicks.is_partitioned("no-such-channel")


def test_a_kick_during_the_drain_is_drained_by_the_same_task(one_partition, published, monkeypatch):
    """The entry commits (and kicks) while its stream is being drained, after the drain read the
    log: the stream's score changed, so the acknowledgement leaves it dirty and the task drains it
    again before it releases the partition."""
    a = _org()
    _events(a, 1)
    real = drain.stream_deliver
    injected = []

    def deliver(**kwargs):
        result = real(**kwargs)
        if not injected:
            injected.append(True)
            _events(a, 1)  # another request commits and kicks now, after the drain read the log
        return result

    monkeypatch.setattr(drain, "stream_deliver", deliver)
    result = drain.partition_drain(partition=PARTITION)

    assert result.kind == "idle" and result.count == 2 and result.streams == 2
    assert one_partition["partition"] == [{"partition": PARTITION}]  # the second kick found the task running
    _inbox_in_order(a.organization)
    assert sorted(published) == [(a.organization_id, 1), (a.organization_id, 2)]


def test_a_kick_while_the_task_waits_for_more_wakes_it(one_partition, published, settings):
    """A task lingering for more work (BLPOP on the partition's note) is woken by a kick; no new
    Celery message is needed."""
    settings.DELIVERY_PARTITION_LINGER_SECONDS = 3.0
    a = _org()
    _events(a, 1)
    timer = threading.Timer(0.3, lambda: (_events(a, 1), connection.close()))
    timer.start()
    try:
        result = drain.partition_drain(partition=PARTITION, budget_seconds=10, linger_seconds=1.5)
    finally:
        timer.join()
    assert result.kind == "idle" and result.count == 2
    assert one_partition["partition"] == [{"partition": PARTITION}]
    _inbox_in_order(a.organization)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (the acknowledgement is suppressed below)."""


def test_a_task_killed_mid_batch_loses_no_stream(one_partition, published, monkeypatch):
    orgs = [_org() for _ in range(3)]
    for tracker in orgs:
        _events(tracker, 2)
    real_stream, real_ack = drain._partition_stream, drain.partition_ack
    drained, dead = [], [False]

    def dies_on_the_second(org_id, channel, destination, out):
        if not dead[0] and len(drained) == 1:
            dead[0] = True
            raise Killed()
        drained.append(org_id)
        return real_stream(org_id, channel, destination, out)

    def ack(**kw):  # a killed process acknowledges nothing
        return None if dead[0] and len(drained) == 1 else real_ack(**kw)

    monkeypatch.setattr(drain, "_partition_stream", dies_on_the_second)
    monkeypatch.setattr(drain, "partition_ack", ack)
    with pytest.raises(Killed):
        drain.partition_drain(partition=PARTITION)

    # The first stream was drained and committed, yet, unacknowledged, it is still dirty with the
    # other two; the partition's flag is still set (its lease runs out, or the message is re-delivered).
    assert len(_dirty()) == 3
    assert kicks.redis_client().exists(kicks.partition_keys(PARTITION)[1])

    result = drain.partition_drain(partition=PARTITION)  # the re-delivered message

    assert result.kind == "idle" and result.streams == 3 and result.count == 4  # 2 + 2; the first is idle
    for tracker in orgs:
        _inbox_in_order(tracker.organization)
    assert sorted(published) == sorted((t.organization_id, s) for t in orgs for s in (1, 2))


def test_the_sweeper_wakes_a_partition_whose_task_died(one_partition):
    """The flag of a dead task's partition is still set: ordinary kicks only add to the set, the
    sweeper's kick enqueues a task anyway (one per partition, whatever the number of streams)."""
    a, b = _org(), _org()
    _events(a, 1)
    _events(b, 1)
    assert len(one_partition["partition"]) == 1  # the task that "died"

    kicks.streams_kick_swept([(a.organization_id, "inapp", ""), (b.organization_id, "inapp", ""),
                              (a.organization_id, "slack", "")])

    assert one_partition["partition"] == [{"partition": PARTITION}] * 2
    assert [kw["channel"] for kw in one_partition["stream"]] == ["slack"]


def test_a_busy_stream_gets_its_retry_chain_and_a_waiting_chain_is_told(one_partition, monkeypatch):
    """Another worker holds the stream's lock: the partition task leaves it to the stream's
    delayed-retry chain (drain_next), and sets its kick flag so that a chain already waiting,
    which would otherwise go idle, drains once more."""
    a = _org()
    _events(a, 1)
    org_id = a.organization_id
    monkeypatch.setattr(drain, "stream_drain", lambda **kw: drain.DrainResult("busy"))

    assert drain.partition_drain(partition=PARTITION).kind == "idle"
    assert one_partition["stream"] == [{"org_id": org_id, "channel": "inapp", "destination": "", "retry": True,
                                        "countdown": drain.BUSY_RETRY_SECONDS}]
    assert kicks.redis_client().exists(kicks._kick_key(org_id, "inapp"))
    assert _dirty() == []

    # The chain, when idle, finds the flag and drains again rather than going away.
    assert kicks.stream_retry_token(org_id=org_id, channel="inapp", delay=None, owner=True) is True


def test_a_long_backlog_takes_turns_with_the_other_streams(one_partition, monkeypatch):
    monkeypatch.setitem(registry.get("inapp").options, "batch_max", 2)
    monkeypatch.setattr(drain, "PARTITION_STREAM_BUDGET_SECONDS", 0.0)  # one step per turn
    a, b = _org(1), _org(1)
    _events(a, 6)
    _events(b, 1)
    order = []
    real = drain.stream_drain

    def recording(**kw):
        order.append(kw["org_id"])
        return real(**kw)

    monkeypatch.setattr(drain, "stream_drain", recording)
    result = drain.partition_drain(partition=PARTITION)

    assert result.kind == "idle" and result.count == 7
    assert order[:2] == [a.organization_id, b.organization_id]  # b did not wait for a's whole backlog
    _inbox_in_order(a.organization)
    _inbox_in_order(b.organization)


def test_two_tasks_on_one_partition_do_not_reorder(one_partition, published):
    """Two drain_partition tasks of one partition (a re-delivered message and a fresh one) run at
    once while requests keep committing: the fence serializes each stream, so every inbox holds
    every entry once and in seq order, and every live message is published once."""
    orgs = [_org() for _ in range(3)]
    stop = threading.Event()
    errors = []

    def run_tasks():
        try:
            while not stop.is_set():
                drain.partition_drain(partition=PARTITION, budget_seconds=0.5, linger_seconds=0.05)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=run_tasks) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(8):
            for tracker in orgs:
                _events(tracker, 1)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not errors, errors
    # Leftovers (a stream the other task found busy went to its retry chain, recorded here): drain
    # them as the chain would.
    for kw in one_partition["stream"]:
        drain.stream_drain(org_id=kw["org_id"], channel=kw["channel"])
    drain.partition_drain(partition=PARTITION, linger_seconds=0)
    for tracker in orgs:
        _inbox_in_order(tracker.organization)
    assert sorted(published) == sorted((t.organization_id, s) for t in orgs for s in range(1, 9))


def test_a_task_hands_over_when_other_messages_wait_on_its_queue(one_partition, settings):
    """A partition task that lingers for kicks would hold its worker (concurrency 1) for its whole
    budget: when another message waits on the queue (a stream's retry chain), it hands over."""
    a = _org()
    _events(a, 1)
    broker = kicks.redis_client().__class__.from_url(settings.CELERY_BROKER_URL)
    broker.lpush(partition_queue(PARTITION), b"{}")  # stands for a waiting retry chain
    started = time.monotonic()
    try:
        result = drain.partition_drain(partition=PARTITION, budget_seconds=30, linger_seconds=10)
    finally:
        broker.delete(partition_queue(PARTITION))
    assert time.monotonic() - started < 5  # not the 10 s linger
    assert result.kind == "idle" and result.count == 1  # nothing dirty: released, the next kick wakes a task


def test_a_batch_publishes_once_but_counts_and_observes_every_run(one_partition, published, monkeypatch):
    """One publish for the batch; the admission control's lag signal still sees each organization's
    run (notifications.delivery.lag), not only the batch's first."""
    observed = []

    class Recorder:
        def observe(self, *, organization_id, occurred_at):
            observed.append(organization_id)

    monkeypatch.setattr(inapp, "LAG", Recorder())
    a, b = _org(), _org()
    _events(a, 2)
    _events(b, 1)

    drain.partition_drain(partition=PARTITION)

    assert published.calls == [3]
    assert sorted(observed) == sorted([a.organization_id, b.organization_id])


def test_no_run_waits_for_the_rest_of_its_batch_longer_than_the_hold(one_partition, published, monkeypatch,
                                                                     settings):
    """Long runs (a send batch's): each run goes live before the next step starts, not with the next
    run, nor after the last stream of the batch committed; commit order holds across the publishes."""
    settings.DELIVERY_ANNOUNCE_HOLD_SECONDS = 0.05
    settings.HERALD_CHANNELS = {**settings.HERALD_CHANNELS,
                                "inapp": {**settings.HERALD_CHANNELS["inapp"], "OPTIONS": {"batch_max": 2}}}
    real = drain.stream_deliver
    committed, announced = [], []

    def slow(**kwargs):
        time.sleep(0.1)  # a long step: its work before the commit takes longer than the hold
        result = real(**kwargs)
        if result.count:
            committed.append(time.monotonic())
        return result

    monkeypatch.setattr(drain, "stream_deliver", slow)
    a, b = _org(), _org()
    _events(a, 6)
    _events(b, 6)
    original = drain._announce

    def recording(runs):
        original(runs)
        announced.append((time.monotonic(), sum(len(outcome.messages) for _ch, outcome in runs)))

    monkeypatch.setattr(drain, "_announce", recording)

    drain.partition_drain(partition=PARTITION)

    _inbox_in_order(a.organization)
    _inbox_in_order(b.organization)
    assert published.calls == [2] * 6  # one publish per run, none held for the next run or stream
    assert [s for o, s in published if o == a.organization_id] == [1, 2, 3, 4, 5, 6]
    assert [s for o, s in published if o == b.organization_id] == [1, 2, 3, 4, 5, 6]
    # Each run went live before the next one's step began (that step takes 0.1 s before it commits).
    assert len(committed) == len(announced) == 6
    assert all(at - done < 0.1 for done, (at, _n) in zip(committed, announced, strict=True))


def test_announcements_go_out_before_a_step_that_would_take_them_past_the_hold(monkeypatch):
    announced = []
    monkeypatch.setattr(drain, "_announce", lambda runs: announced.append(list(runs)))
    now = [100.0]
    pending = drain.Announcements(hold=0.1, clock=lambda: now[0])
    pending.before_step()  # nothing held: no publish
    pending.append("r1")
    pending.step_took(0.01)
    pending.before_step()  # short steps: the runs wait for more
    now[0] += 0.01
    pending.append("r2")
    pending.before_step()
    assert announced == []
    now[0] += 0.085  # r1 committed 0.095 s ago: the next 0.01 s step would take it past the hold
    pending.before_step()
    assert announced == [["r1", "r2"]]
    pending.append("r3")
    pending.step_took(0.5)  # a long step: what it committed goes out before the next one starts
    pending.before_step()
    assert announced == [["r1", "r2"], ["r3"]]
    pending.flush()
    assert announced == [["r1", "r2"], ["r3"]]
