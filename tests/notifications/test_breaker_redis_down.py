"""Redis unavailable (a client on a port nobody listens on): recording a provider's answer never
raises into the caller, asking the breaker fails closed for a short wait, and a 429's pause is
logged rather than raised."""
import logging
import socket
import time

import pytest
import redis

from notifications.breaker import CircuitBreaker
from notifications.ratelimit import RateLimiter, Scope


@pytest.fixture
def dead_redis(settings):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.HERALD_BREAKERS = {"down": {"unavailable_wait": 2.5}}
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=1)
    yield client
    client.close()


def test_record_after_the_provider_answered_never_raises(dead_redis, caplog):
    breaker = CircuitBreaker("down", dead_redis)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="herald.delivery"):
        ok = breaker.record(ok=True)
        failed = breaker.record(ok=False)

    assert ok == "unknown" and failed == "unknown"
    assert not ok.probe and not failed.probe
    assert time.monotonic() - started < 5  # refused at once, not a hang
    assert [r.getMessage() for r in caplog.records].count("breaker outcome not recorded (Redis unavailable)") == 2


def test_allow_fails_closed_for_a_short_wait(dead_redis, caplog):
    with caplog.at_level(logging.WARNING, logger="herald.delivery"):
        decision = CircuitBreaker("down", dead_redis).allow()

    assert (decision.allowed, decision.wait, decision.state, decision.probe) == (False, 2.5, "unknown", False)
    assert "breaker unavailable (Redis): calls wait" in caplog.text


def test_a_429_pause_is_logged_not_raised(dead_redis, settings, caplog):
    with caplog.at_level(logging.WARNING, logger="herald.delivery"):
        stored = RateLimiter(dead_redis).pause([Scope("slack.global"), Scope("slack.channel", "C1")], 30)

    assert stored is False
    assert "rate-limit pause not stored (Redis unavailable)" in caplog.text


def test_the_same_breaker_works_again_when_redis_answers(settings):
    settings.HERALD_BREAKERS = {"down": {}}
    breaker = CircuitBreaker("down")  # the test Redis
    assert breaker.record(ok=True) == "closed"
    assert breaker.allow().allowed
