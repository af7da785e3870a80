"""The ordering rule end to end (DESIGN.md, "Ordering"), on the real stack: Daphne, two Celery
workers contending for every org partition queue, a default/maintenance worker, beat running
the sweeper, and a fake Slack that fails, throttles and stalls.

For every organization and destination (its Slack channel, each member's WebSocket, each
member's inbox) events arrive in seq order, none missing; a worker killed mid-send costs at most
one duplicate per destination."""
import json
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import pytest
from websockets.sync.client import connect

from config.routing import org_queue
from notifications.models import DeliveryStream, Notification
from organizations.services import slack_integration_set
from organizations.models import Organization, User
from organizations.services import membership_create, organization_create, user_token_create
from tests.support.fakeslack import FakeSlack
from tests.support.stack import DELIVERY_QUEUES, DbConnectionMonitor, Stack
from notifications.models import LogEntry
from trackers.models import Tracker
from trackers.services import tracker_create, tracker_start, tracker_stop

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

ORGS, MEMBERS, TRACKERS = 4, 3, 2
SLACK_TOKEN = "xoxb-test"
# With this seed the fake's 3rd request gets a 500, the 4th a 429 and the 6th is slow: every
# fault kind is met within the first requests whatever the interleaving.
FAULT_SEED = 45
STACK_ENV = {
    "SWEEP_INTERVAL_SECONDS": "1",
    "DELIVERY_STALL_SECONDS": "2",
    "SLACK_TIMEOUT": "5",
}


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture
def fake_slack():
    with FakeSlack(valid_tokens={SLACK_TOKEN}, channel_rate=1.0, channel_burst=3) as fake:
        yield fake


@pytest.fixture
def stack(transactional_db, fake_slack):
    """A process harness; every process is stopped before the test database is flushed (fixture
    teardown order)."""
    with Stack(slack_url=fake_slack.base_url, env=STACK_ENV) as harness:
        yield harness


def start_full_stack(stack: Stack) -> None:
    """Daphne, two workers on every org partition queue and the provider queue (so they contend):
    one at concurrency 1 as the partition workers run, one at concurrency 2 as the provider worker
    runs; the default and maintenance worker, beat (the sweeper)."""
    stack.start_daphne("web")
    stack.start_worker("orgs-a", DELIVERY_QUEUES)
    stack.start_worker("orgs-b", DELIVERY_QUEUES, concurrency=2)
    stack.start_worker("default", ["default", "maintenance"])
    stack.start_beat("beat")
    stack.wait_ready(timeout=60)


# --- tenants, live clients, load ----------------------------------------------------------------

@dataclass
class Member:
    user: User
    token: str
    org_id: int
    client: "LiveClient | None" = None


@dataclass
class Tenant:
    org: Organization
    channel: str | None  # None: no Slack integration
    members: list[Member]
    tracker_ids: list[int]
    accepted: list[int] = field(default_factory=list)  # seqs of the 2xx answers
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_tenants(orgs: int = ORGS, slack: bool = True) -> list[Tenant]:
    run = uuid.uuid4().hex[:8]
    tenants = []
    for i in range(orgs):
        users = [User.objects.create_user(username=f"ord-{run}-{i}-{j}", email=f"ord-{run}-{i}-{j}@example.com",
                                          password="unused-password-123") for j in range(MEMBERS)]
        org = organization_create(creator=users[0], name=f"Ordering {run} {i}")
        for user in users[1:]:
            membership_create(organization=org, email=user.email, role="member")
        for k in range(1, TRACKERS):
            tracker_create(organization=org, name=f"Tracker {k}")
        channel = f"C{run.upper()}{i}" if slack else None
        if slack:
            slack_integration_set(organization=org, channel=channel, token=SLACK_TOKEN)
        tenants.append(Tenant(
            org=org, channel=channel,
            members=[Member(user=u, token=user_token_create(user=u), org_id=org.id) for u in users],
            tracker_ids=list(Tracker.objects.filter(organization=org).order_by("id").values_list("id", flat=True)),
        ))
    return tenants


class LiveClient(threading.Thread):
    """One member's browser tab: a WebSocket on /ws/?token=..., recording every message."""

    def __init__(self, url: str, origin: str, member: Member):
        super().__init__(name=f"ws-{member.user.pk}", daemon=True)
        self.url, self.origin, self.member = url, origin, member
        self.messages: list[dict] = []
        self.hello: dict | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.stopping = threading.Event()

    def run(self):
        try:
            with connect(f"{self.url}/ws/?token={self.member.token}", origin=self.origin, open_timeout=15,
                         close_timeout=2) as ws:
                self.hello = json.loads(ws.recv(timeout=15))
                self.ready.set()
                while not self.stopping.is_set():
                    try:
                        raw = ws.recv(timeout=0.2)
                    except TimeoutError:
                        continue
                    self.messages.append(json.loads(raw))
        except BaseException as exc:  # noqa: BLE001  (reported by the test, not lost in a thread)
            if not self.stopping.is_set():
                self.error = exc
        finally:
            self.ready.set()

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in list(self.messages) if m.get("type") == kind]

    def stop(self):
        self.stopping.set()
        self.join(timeout=5)


def connect_clients(stack: Stack, tenants: list[Tenant]) -> list[LiveClient]:
    clients = []
    for tenant in tenants:
        for member in tenant.members:
            member.client = LiveClient(stack.ws_url(), stack.url(), member)
            clients.append(member.client)
    for client in clients:
        client.start()
    for client in clients:
        assert client.ready.wait(20), "WebSocket did not open"
        assert client.error is None, f"WebSocket failed: {client.error!r}"
        assert client.hello == {"type": "hello", "user_id": client.member.user.pk,
                                "org_ids": [client.member.org_id]}
    return clients


def fire_events(base_url: str, tenants: list[Tenant], per_org: int, errors: list) -> list[threading.Thread]:
    """Start threads that POST start/stop for every member until each org has `per_org` more events.
    Every member of an org hammers the same trackers at once, so 409s happen and are fine."""
    threads = []
    for tenant in tenants:
        target = len(tenant.accepted) + per_org
        running = {tid: Tracker.objects.get(pk=tid).is_running for tid in tenant.tracker_ids}

        def hammer(tenant=tenant, member=None, target=target, running=running):
            rng = random.Random()
            with httpx.Client(base_url=base_url, timeout=15,
                              headers={"Authorization": f"Token {member.token}"}) as http:
                while True:
                    with tenant.lock:
                        if len(tenant.accepted) >= target:
                            return
                    tracker_id = rng.choice(tenant.tracker_ids)
                    action = "stop" if running[tracker_id] else "start"
                    try:
                        response = http.post(f"/api/v1/trackers/{tracker_id}/{action}")
                    except httpx.HTTPError as exc:
                        errors.append(f"{action} {tracker_id}: {exc!r}")
                        return
                    if response.status_code == 200:
                        with tenant.lock:
                            tenant.accepted.append(response.json()["event"]["seq"])
                    elif response.status_code != 409:  # 409: another member got there first
                        errors.append(f"{action} {tracker_id}: {response.status_code} {response.text[:200]}")
                        return
                    running[tracker_id] = action == "start"  # either way, that is its state now

        for member in tenant.members:
            threads.append(threading.Thread(target=hammer, kwargs={"member": member}, daemon=True))
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread], errors: list, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "event threads did not finish"
    assert errors == [], errors[:5]


# --- checks -----------------------------------------------------------------------------------

def order_incidents(ranges: list[tuple[int, int]], last: int, what: str) -> int:
    """Arrival-ordered (first_seq, last_seq) ranges of one destination -> number of duplicate
    incidents (steps backwards: a redelivered run). Fails on a gap, a step forward of more than
    one, or an incomplete stream; a redelivered run counts once however long it is."""
    high, previous_last, incidents = 0, 0, 0
    arrivals = " ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
    for first, end in ranges:
        assert first <= end, f"{what}: bad range {first}..{end}"
        if first <= previous_last:
            incidents += 1
        else:
            assert first == previous_last + 1 and first <= high + 1, \
                f"{what}: #{first} arrived right after #{previous_last} (arrival order: {arrivals})"
        previous_last = end
        high = max(high, end)
    assert high == last, f"{what}: delivered up to #{high} of {last} (arrival order: {arrivals})"
    return incidents


def slack_ranges(fake: FakeSlack, tenant: Tenant) -> list[tuple[int, int]]:
    messages = fake.messages(tenant.channel)
    events = dict(LogEntry.objects.filter(organization=tenant.org).values_list("seq", "id"))
    for message in messages:
        assert message["event_type"] == "tracker_event", message
        assert message["org_id"] == tenant.org.id, message
        seqs = range(message["first_seq"], message["last_seq"] + 1)
        assert message["event_ids"] == [events[s] for s in seqs], message
    return [(m["first_seq"], m["last_seq"]) for m in messages]


def snapshot(fake: FakeSlack, tenants: list[Tenant]) -> dict:
    """Where every destination stands, for the wait loop and for failure messages."""
    state = {}
    for tenant in tenants:
        last = Organization.objects.get(pk=tenant.org.pk).last_event_seq
        slack = fake.messages(tenant.channel) if tenant.channel else []
        state[tenant.org.id] = {
            "events": last,
            "slack_high": max((m["last_seq"] for m in slack), default=0) if tenant.channel else last,
            "ws_high": [max((m["seq"] for m in mb.client.of_type("tracker.event")), default=0)
                        for mb in tenant.members],
            "inbox": [Notification.objects.filter(recipient=mb.user).count() for mb in tenant.members],
            "cursors": dict(DeliveryStream.objects.filter(organization=tenant.org)
                            .values_list("channel", "delivered_seq")),
        }
    return state


def wait_delivered(fake: FakeSlack, tenants: list[Tenant], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = snapshot(fake, tenants)
        done = all(
            s["events"] > 0 and s["slack_high"] == s["events"] and set(s["ws_high"]) == {s["events"]}
            and set(s["inbox"]) == {s["events"]}
            for s in state.values()
        )
        if done:
            time.sleep(1.0)  # a late duplicate would arrive now
            return snapshot(fake, tenants)
        if time.monotonic() > deadline:
            arrivals = {t.org.id: [m["seq"] for m in t.members[0].client.of_type("tracker.event")][:20]
                        for t in tenants}
            raise AssertionError(f"not delivered after {timeout}s: {state}; first member's WebSocket "
                                 f"got seqs {arrivals}")
        time.sleep(0.25)


def check_destinations(fake: FakeSlack, tenants: list[Tenant], max_duplicates: int) -> dict:
    """Every destination complete and in order; returns the duplicate incidents per destination."""
    incidents = {}
    for tenant in tenants:
        last = Organization.objects.get(pk=tenant.org.pk).last_event_seq
        assert sorted(tenant.accepted) == list(range(1, last + 1)), "the API's seqs are the org's seqs"
        events = dict(LogEntry.objects.filter(organization=tenant.org).values_list("seq", "id"))

        if tenant.channel:
            name = f"slack:{tenant.channel}"
            incidents[name] = order_incidents(slack_ranges(fake, tenant), last, name)

        for member in tenant.members:
            client = member.client
            assert client.error is None, repr(client.error)
            tracker_events = client.of_type("tracker.event")
            assert {m["org_id"] for m in tracker_events} == {tenant.org.id}, "another org's events leaked"
            assert all(m["event_id"] == events[m["seq"]] for m in tracker_events)
            name = f"ws tracker.event user {member.user.pk}"
            incidents[name] = order_incidents([(m["seq"], m["seq"]) for m in tracker_events], last, name)
            created = client.of_type("notification.created")
            assert {m["org_id"] for m in created} == {tenant.org.id}, "another org's notifications leaked"
            name = f"ws notification.created user {member.user.pk}"
            incidents[name] = order_incidents([(m["seq"], m["seq"]) for m in created], last, name)

            inbox = list(Notification.objects.filter(recipient=member.user).order_by("seq")
                         .values_list("organization_id", "seq", "entry_id"))
            assert inbox == [(tenant.org.id, s, events[s]) for s in range(1, last + 1)]
            # The ids pushed live are the rows in the inbox (the last push wins after a replay).
            pushed = {m["seq"]: m["id"] for m in created}
            stored = dict(Notification.objects.filter(recipient=member.user).values_list("seq", "id"))
            assert pushed == stored

    over = {dest: n for dest, n in incidents.items() if n > max_duplicates}
    assert not over, f"more than {max_duplicates} duplicate run(s): {over}"
    return incidents


def kill_worker_mid_send(stack: Stack, fake: FakeSlack, timeout: float = 30.0) -> tuple[str, dict]:
    """SIGKILL the org worker whose Slack call is in flight (its socket names it), early enough in
    the fake's delay that the answer cannot slip out first. Returns (worker, in-flight request)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for request in sorted(fake.in_flight(), key=lambda r: -r["since"]):
            if time.time() - request["since"] > 1.5 or request["status"] != 200:
                continue
            victim = stack.owner_of_local_port(request["client_port"])
            if victim in ("orgs-a", "orgs-b"):
                stack.kill(victim, signal.SIGKILL)
                return victim, request
        time.sleep(0.05)
    raise AssertionError(f"no org worker caught mid-send within {timeout}s: {fake.in_flight()}")


# --- tests -----------------------------------------------------------------------------------

def test_every_destination_gets_every_event_once_in_order(stack, fake_slack):
    fake_slack.configure(fail_fraction=0.10, ratelimit_fraction=0.05, retry_after=1,
                         slow_fraction=0.05, slow_seconds=1.5, seed=FAULT_SEED)
    start_full_stack(stack)
    tenants = make_tenants()
    clients = connect_clients(stack, tenants)
    errors: list[str] = []
    with stack.dump_logs_on_failure(lines=60):
        try:
            started = time.monotonic()
            with DbConnectionMonitor() as connections:
                join_all(fire_events(stack.url(), tenants, per_org=40, errors=errors), errors)
            fired = time.monotonic() - started
            wait_delivered(fake_slack, tenants, timeout=60)
            delivered = time.monotonic() - started

            incidents = check_destinations(fake_slack, tenants, max_duplicates=0)

            stats = fake_slack.stats()
            assert stats["breaches"] == 0, f"Herald exceeded Slack's limit: {stats}"
            # The faults were really met (the seed makes this hold for any interleaving).
            assert stats["http_500"] >= 1 and stats["ratelimited_injected"] >= 1 and stats["slow"] >= 1, stats
            print(f"fired in {fired:.1f}s, all delivered in {delivered:.1f}s; slack {stats}; "
                  f"destinations checked {len(incidents)}; peak database connections {connections.peak}")
        finally:
            for client in clients:
                client.stop()


def test_worker_killed_mid_send_costs_at_most_one_duplicate(stack, fake_slack):
    fake_slack.configure(slow_fraction=1.0, slow_seconds=3.0)  # every Slack call hangs for a moment
    start_full_stack(stack)
    tenants = make_tenants()
    clients = connect_clients(stack, tenants)
    errors: list[str] = []
    with stack.dump_logs_on_failure(lines=80):
        try:
            started = time.monotonic()
            threads = fire_events(stack.url(), tenants, per_org=20, errors=errors)

            victim, request = kill_worker_mid_send(stack, fake_slack)
            assert stack.pids(victim) == [], "the pool child survived its worker"
            fake_slack.configure(slow_fraction=0.0)
            killed_at = time.monotonic()
            stack.restart(victim)
            restarted = time.monotonic() - killed_at

            join_all(threads, errors)
            join_all(fire_events(stack.url(), tenants, per_org=20, errors=errors), errors)
            wait_delivered(fake_slack, tenants, timeout=60)
            delivered = time.monotonic() - started

            incidents = check_destinations(fake_slack, tenants, max_duplicates=1)

            # The message Slack got from the killed worker was never recorded as sent, so its run
            # was sent again from the same first seq: delayed and duplicated, never lost.
            killed = request["payload"]
            [tenant] = [t for t in tenants if t.channel == request["channel"]]
            firsts = [first for first, _ in slack_ranges(fake_slack, tenant)]
            assert firsts.count(killed["first_seq"]) == 2, (killed, firsts)
            assert fake_slack.stats()["breaches"] == 0, fake_slack.stats()
            print(f"killed {victim} mid-send of {killed}; restarted in {restarted:.1f}s; all delivered in "
                  f"{delivered:.1f}s; duplicates {dict((k, v) for k, v in incidents.items() if v)}")
        finally:
            for client in clients:
                client.stop()


def fire_via_services(tenant: Tenant, count: int) -> None:
    """Start/stop through the services (Daphne may be paused); each commit kicks delivery."""
    actor = tenant.members[0].user
    tracker_id = tenant.tracker_ids[0]
    for _ in range(count):
        running = Tracker.objects.get(pk=tracker_id).is_running
        change = tracker_stop if running else tracker_start
        tenant.accepted.append(change(tracker_id=tracker_id, actor=actor).seq)


def wait_published(tenant: Tenant, seq: int, timeout: float = 20.0) -> None:
    """Until the in-app stream's cursor reaches `seq`: the worker has published up to it."""
    deadline = time.monotonic() + timeout
    stream = DeliveryStream.objects.filter(organization=tenant.org, channel="inapp")
    while stream.values_list("delivered_seq", flat=True).first() != seq:
        assert time.monotonic() < deadline, f"in-app cursor not at #{seq}: {list(stream.values())}"
        time.sleep(0.1)


def hand_over_queue(stack: Stack, queue: str, old: str, new: str, timeout: float = 15.0) -> None:
    """Move consumption of `queue` from worker `old` to worker `new` (Celery remote control), and
    wait until `old` holds no task any more, so that from now on only `new` delivers."""
    from config.celery import app

    replies = app.control.cancel_consumer(queue, destination=[stack.node(old)], reply=True, timeout=5)
    assert replies, f"{old} did not answer cancel_consumer"
    deadline = time.monotonic() + timeout
    inspect = app.control.inspect(destination=[stack.node(old)], timeout=2)
    while True:
        held = [inspect.active(), inspect.reserved(), inspect.scheduled()]
        if all(reply is not None and not any(reply.values()) for reply in held):
            break
        assert time.monotonic() < deadline, f"{old} still holds tasks: {held}"
        time.sleep(0.1)
    replies = app.control.add_consumer(queue, destination=[stack.node(new)], reply=True, timeout=5)
    assert replies, f"{new} did not answer add_consumer"


def test_websocket_order_does_not_depend_on_the_publishers_clock(stack, fake_slack):
    """The org's queue moves from one worker to another whose wall clock is behind (another host),
    while Daphne lags a moment behind the channel layer (paused for a second or two). Members must
    still get the events in seq order.

    channels_redis queues a consumer's messages in a sorted set scored by the *publisher's*
    time.time(), so a lagging Daphne hands them out in clock order, not publish order. Any skew
    larger than the time between two publishes does it (two workers contending for one org publish
    milliseconds apart); 30 s makes the outcome independent of this machine's speed."""
    stack.start_daphne("web")
    stack.start_worker("orgs-a", DELIVERY_QUEUES)
    stack.start_worker("orgs-behind", ["standby"], clock_offset=-30.0)
    stack.wait_ready(timeout=60)
    tenants = make_tenants(orgs=1, slack=False)
    clients = connect_clients(stack, tenants)
    [tenant] = tenants
    queue = org_queue(tenant.org.id)
    with stack.dump_logs_on_failure(lines=40):
        try:
            stack.pause("web")
            fire_via_services(tenant, 3)
            wait_published(tenant, 3)  # by orgs-a
            hand_over_queue(stack, queue, "orgs-a", "orgs-behind")
            fire_via_services(tenant, 3)
            wait_published(tenant, 6)  # by orgs-behind
            stack.resume("web")

            wait_delivered(fake_slack, tenants, timeout=20)
            check_destinations(fake_slack, tenants, max_duplicates=0)
        finally:
            stack.resume("web")
            for client in clients:
                client.stop()



def test_a_partition_worker_killed_mid_task_loses_no_kicked_stream(stack, fake_slack):
    """The in-app streams are drained by one drain_partition task per partition wake, which keeps
    running (lingering for more kicks) between events. SIGKILL its worker mid-task: the task's
    message is unacknowledged and its partition's flag still set, so the kicks that follow only
    add their streams to the partition's dirty set, with no task to read it. After a restart the
    sweeper's kick wakes the partition and the dirty streams are drained: delayed, in order, none
    lost, none duplicated."""
    linger = {"DELIVERY_PARTITION_LINGER_SECONDS": "4", "DELIVERY_PARTITION_BUDGET_SECONDS": "60"}
    stack.start_daphne("web")
    stack.start_worker("orgs-a", DELIVERY_QUEUES, env=linger)
    stack.start_worker("default", ["default", "maintenance"])
    stack.start_beat("beat")
    stack.wait_ready(timeout=60)
    tenants = make_tenants(orgs=2, slack=False)
    clients = connect_clients(stack, tenants)
    with stack.dump_logs_on_failure(lines=60):
        try:
            for tenant in tenants:
                fire_via_services(tenant, 3)
            for tenant in tenants:
                wait_published(tenant, 3)
            stack.kill("orgs-a", signal.SIGKILL)  # its partition tasks linger: killed mid-task
            assert stack.pids("orgs-a") == []
            for tenant in tenants:
                fire_via_services(tenant, 3)
            time.sleep(1.0)
            assert all(DeliveryStream.objects.get(organization=t.org, channel="inapp").delivered_seq == 3
                       for t in tenants), "nobody should have drained while the worker was down"
            stack.restart("orgs-a")
            for tenant in tenants:
                wait_published(tenant, 6, timeout=40)
            wait_delivered(fake_slack, tenants, timeout=30)
            check_destinations(fake_slack, tenants, max_duplicates=0)
        finally:
            for client in clients:
                client.stop()
