"""The circuit breaker against real Redis: opens on a failure ratio, lets one half-open probe
through, closes on success, re-opens (longer) on a failed probe, and is shared by all callers."""
import time

import pytest

from notifications.breaker import CircuitBreaker


@pytest.fixture
def breaker(settings):
    settings.HERALD_BREAKERS = {"test": {"window": 10.0, "min_calls": 4, "failure_ratio": 0.5,
                                         "open_seconds": 0.5, "max_open_seconds": 2.0, "probe_seconds": 1.0}}
    return CircuitBreaker("test")


def test_closed_breaker_allows(breaker):
    decision = breaker.allow()
    assert decision.allowed and decision.state == "closed"


def test_few_failures_below_min_calls_keep_it_closed(breaker):
    for _ in range(3):
        assert breaker.record(ok=False) == "closed"
    assert breaker.allow().allowed


def test_failure_ratio_opens_and_blocks_every_caller(breaker):
    breaker.record(ok=True)
    breaker.record(ok=False)
    breaker.record(ok=True)
    assert breaker.record(ok=False) == "open"  # 2 of 4 failed = 50%
    other_worker = CircuitBreaker("test")  # a separate instance, as in another process
    decision = other_worker.allow()
    assert not decision.allowed and decision.state == "open"
    assert 0 < decision.wait <= 0.5


def test_mostly_successful_calls_stay_closed(breaker):
    for i in range(20):
        breaker.record(ok=(i % 4 != 0))  # 25% failures
    assert breaker.allow().allowed


def _open(breaker):
    for _ in range(4):
        breaker.record(ok=False)
    assert breaker.state()["state"] == "open"


def test_half_open_lets_exactly_one_probe_through(breaker):
    _open(breaker)
    time.sleep(0.55)
    first = breaker.allow()
    second = CircuitBreaker("test").allow()
    assert first.allowed and first.state == "half_open"
    assert not second.allowed and second.state == "half_open"


def test_successful_probe_closes(breaker):
    _open(breaker)
    time.sleep(0.55)
    assert breaker.allow().allowed
    assert breaker.record(ok=True) == "closed"
    assert breaker.allow().allowed and breaker.allow().state == "closed"


def test_failed_probe_reopens_for_longer(breaker):
    _open(breaker)
    time.sleep(0.55)
    assert breaker.allow().allowed
    assert breaker.record(ok=False) == "open"
    decision = breaker.allow()
    assert not decision.allowed
    assert 0.5 < decision.wait <= 1.0  # doubled from 0.5 s


def test_breaker_state_is_exported_in_metrics(breaker, client):
    _open(breaker)
    breaker.allow()
    body = client.get("/metrics").content.decode()
    assert 'herald_breaker_state{provider="test"} 2.0' in body


class Clock:
    """A clock the test drives (seconds), handed to the breaker instead of Redis TIME."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def low_traffic(settings):
    """Slack's production thresholds: 10 calls in 30 s before the ratio counts, 5 in a row."""
    settings.HERALD_BREAKERS = {"low": {"window": 30.0, "min_calls": 10, "failure_ratio": 0.5,
                                        "open_seconds": 5.0, "consecutive_failures": 5}}
    clock = Clock()
    return CircuitBreaker("low", clock=clock), clock


def test_consecutive_failures_open_it_at_low_traffic(low_traffic):
    """One call every 15 s: the 30 s window never holds 10 calls, yet five failures in a row
    (spread over 60 s) are an outage."""
    breaker, clock = low_traffic
    states = []
    for _ in range(5):
        states.append(breaker.record(ok=False))
        clock.now += 15
    assert states == ["closed"] * 4 + ["open"]
    clock.now -= 15
    decision = breaker.allow()
    assert not decision.allowed and decision.state == "open"
    assert 4.9 <= decision.wait <= 5.0


def test_a_success_resets_the_consecutive_count(low_traffic):
    breaker, clock = low_traffic
    for ok in (False, False, False, False, True, False, False, False, False):
        assert breaker.record(ok=ok) == "closed"
        clock.now += 12
    assert breaker.record(ok=False) == "open"  # the fifth failure since the success


def test_failures_far_apart_are_not_consecutive(low_traffic, settings):
    """The count lives `consecutive_window` after the last failure (a Redis expiry, real time)."""
    settings.HERALD_BREAKERS["low"]["consecutive_window"] = 0.3
    breaker, _clock = low_traffic
    for _ in range(4):
        assert breaker.record(ok=False) == "closed"
    time.sleep(0.4)
    assert breaker.record(ok=False) == "closed"
    for _ in range(3):
        assert breaker.record(ok=False) == "closed"
    assert breaker.record(ok=False) == "open"


def test_record_says_whether_the_call_was_the_probe(low_traffic):
    breaker, clock = low_traffic
    assert not breaker.allow().probe
    first = breaker.record(ok=False)
    assert (first.state, first.probe) == ("closed", False)
    for _ in range(4):
        breaker.record(ok=False)
    clock.now += 5.0
    probe = breaker.allow()
    assert probe.allowed and probe.probe and probe.state == "half_open"

    failed = breaker.record(ok=False)
    assert (failed.state, failed.probe) == ("open", True)  # a failed probe: not the caller's attempt
    clock.now += 10.0  # re-opened for twice as long
    assert breaker.allow().probe
    succeeded = breaker.record(ok=True)
    assert (succeeded.state, succeeded.probe) == ("closed", True)
    after = breaker.record(ok=False)
    assert (after.state, after.probe) == ("closed", False)


def test_keys_share_the_breakers_hash_tag(breaker):
    """Redis Cluster: both keys of each script call hash to one slot (the breaker's name)."""
    breaker.record(ok=False)
    keys = sorted(k.decode() for k in breaker.client.keys("herald:cb:*"))
    assert keys == ["herald:cb:{test}:calls", "herald:cb:{test}:failures", "herald:cb:{test}:state"]


def test_breakers_share_one_redis_connection_per_process(settings):
    """The fence makes a breaker per call: each used to open (and close) a TCP connection for
    allow() and record(), two per provider send."""
    first, second = CircuitBreaker("slack"), CircuitBreaker("smtp-primary")
    assert first.client is second.client
    pool = first.client.connection_pool
    first.allow()
    opened = pool._created_connections  # at most one so far (earlier tests may have opened it)
    for _ in range(5):
        CircuitBreaker("slack").allow()
        CircuitBreaker("smtp-primary").record(ok=True)
    assert pool._created_connections == opened
