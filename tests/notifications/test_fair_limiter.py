"""Fairness of the shared limit: callers waiting on a global scope are served in the order they
started waiting, so no organization starves while others keep getting slots."""
import time
from collections import Counter

import pytest

from notifications.ratelimit import Scope, limiter


@pytest.fixture
def scopes(settings):
    settings.HERALD_RATE_LIMITS = {"g": {"rate": 20, "burst": 1, "tag": "fair"},
                                   "c": {"rate": 1000, "burst": 1, "tag": "fair"}}
    limiter.start_fresh()


def _run(members: list[str], seconds: float, greedy: set[str] = frozenset()):
    """Each member polls when told to; greedy members poll every 2 ms regardless."""
    grants, next_at = [], {m: 0.0 for m in members}
    start = time.monotonic()
    while (now := time.monotonic() - start) < seconds:
        for m in members:
            if next_at[m] <= now or m in greedy:
                decision = limiter.acquire_fair([Scope("g"), Scope("c", m)], member=m)
                if decision.allowed:
                    grants.append((now, m))
                    next_at[m] = now
                else:
                    next_at[m] = now + decision.wait
        time.sleep(0.002)
    return grants


def test_waiters_are_served_round_robin(scopes):
    grants = _run(list("abcdefgh"), 2.0)
    counts = Counter(m for _, m in grants)
    assert set(counts) == set("abcdefgh"), counts  # nobody starves
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert len(grants) <= 2.0 * 20 + 1  # the shared limit holds


def test_a_greedy_caller_cannot_take_more_than_its_turn(scopes):
    grants = _run(list("abcd"), 2.0, greedy={"a"})
    counts = Counter(m for _, m in grants)
    assert counts["a"] <= min(counts[m] for m in "bcd") + 1, counts


def test_longest_wait_is_bounded_by_the_share(scopes):
    members = list("abcdefghij")
    grants = _run(members, 3.0)
    last: dict[str, float] = {}
    worst = 0.0
    for t, m in grants:
        if m in last:
            worst = max(worst, t - last[m])
        last[m] = t
    share = len(members) / 20  # active callers / global rate = 0.5 s
    assert worst <= share + 1.0, worst


def test_a_vanished_waiter_is_dropped(scopes):
    assert limiter.acquire_fair([Scope("g"), Scope("c", "x")], member="x").allowed
    # "dead" joins the queue and never polls again
    assert not limiter.acquire_fair([Scope("g"), Scope("c", "dead")], member="dead", stale=0.3).allowed
    time.sleep(0.4)
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        if limiter.acquire_fair([Scope("g"), Scope("c", "y")], member="y", stale=0.3).allowed:
            return
        time.sleep(0.01)
    pytest.fail("a waiter that vanished kept blocking the queue")


def test_the_caller_with_the_oldest_pending_message_goes_first(scopes):
    """With `since` (when each caller's oldest pending message was created), the oldest wins the
    next free slot whatever order they asked in: a stream whose send failed keeps its place."""
    assert limiter.acquire_fair([Scope("g"), Scope("c", "first")], member="first", since=time.time()).allowed
    now = time.time()
    ages = {"young": 1.0, "old": 9.0, "middle": 5.0}
    for member, age in ages.items():  # the slot was just taken: everyone waits and joins the queue
        assert not limiter.acquire_fair([Scope("g"), Scope("c", member)], member=member, since=now - age).allowed
    order = []
    deadline = time.monotonic() + 2
    while len(order) < 3 and time.monotonic() < deadline:
        for member, age in ages.items():
            if member not in order and limiter.acquire_fair(
                    [Scope("g"), Scope("c", member)], member=member, since=now - age).allowed:
                order.append(member)
        time.sleep(0.002)
    assert order == ["old", "middle", "young"]


def test_without_since_the_first_to_wait_goes_first(scopes):
    assert limiter.acquire_fair([Scope("g"), Scope("c", "first")], member="first").allowed
    for member in ("a", "b"):
        assert not limiter.acquire_fair([Scope("g"), Scope("c", member)], member=member).allowed
        time.sleep(0.005)
    granted = None
    deadline = time.monotonic() + 2
    while granted is None and time.monotonic() < deadline:
        for member in ("b", "a"):  # b asks first every round; a waited first
            if limiter.acquire_fair([Scope("g"), Scope("c", member)], member=member).allowed:
                granted = member
                break
        time.sleep(0.002)
    assert granted == "a"
