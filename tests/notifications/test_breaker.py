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
