"""The stats limit holds across processes: three real Daphne processes share the Redis limiter,
so callers hammering all three at once get no more than their quota (per caller and per
organization), and every answer carries the RateLimit-* headers."""
import threading
import time
from collections import Counter

import httpx
import pytest

from organizations import services as org_services
from tests.support.stack import Stack

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]
CALLER_RATE, CALLER_BURST = 60, 4   # per minute, burst
ORG_RATE, ORG_BURST = 120, 6
SECONDS = 4.0
MIN_REQUESTS = 120  # on a loaded box keep hammering past SECONDS until this many were made (at most 30 s)


def test_three_web_processes_share_one_quota_per_caller_and_per_org(org_with_members):
    org = org_with_members.org
    tokens = {u.username: org_services.user_token_create(user=u)
              for u in (org_with_members.owner, org_with_members.admin, org_with_members.member)}
    env = {"STATS_PER_MINUTE_PER_CALLER": CALLER_RATE, "STATS_BURST_PER_CALLER": CALLER_BURST,
           "STATS_PER_MINUTE_PER_ORG": ORG_RATE, "STATS_BURST_PER_ORG": ORG_BURST}
    with Stack(env=env) as stack:
        for name in ("web-a", "web-b", "web-c"):
            stack.start_daphne(name)
        stack.wait_ready(timeout=60)
        urls = [stack.url(n) + f"/api/v1/orgs/{org.id}/stats?from=2026-03-01&to=2026-03-31"
                for n in ("web-a", "web-b", "web-c")]
        results: list[tuple[str, int, dict]] = []
        lock = threading.Lock()
        start = time.monotonic()

        def hammer(username: str, url: str) -> None:
            with httpx.Client(headers={"Authorization": f"Token {tokens[username]}"}, timeout=10) as client:
                while time.monotonic() - start < SECONDS or (len(results) < MIN_REQUESTS
                                                             and time.monotonic() - start < 30):
                    response = client.get(url)
                    with lock:
                        results.append((username, response.status_code, dict(response.headers)))

        threads = [threading.Thread(target=hammer, args=(user, url)) for user in tokens for url in urls]
        with stack.dump_logs_on_failure(lines=40):
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.monotonic() - start

    statuses = Counter(status for _, status, _ in results)
    assert set(statuses) <= {200, 429}, statuses
    granted = Counter(user for user, status, _ in results if status == 200)
    caller_cap = CALLER_BURST + CALLER_RATE / 60 * elapsed
    org_cap = ORG_BURST + ORG_RATE / 60 * elapsed
    for user in tokens:
        assert granted[user] <= caller_cap, (user, granted, caller_cap)
    assert sum(granted.values()) <= org_cap, (granted, org_cap)
    assert sum(granted.values()) >= ORG_BURST  # the limiter grants, it does not just refuse
    assert len(results) >= MIN_REQUESTS and statuses[429] >= len(results) - org_cap  # the excess was refused
    for _, status, headers in results:
        assert {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"} <= set(headers), headers
        if status == 429:
            assert int(headers["retry-after"]) >= 1
            assert headers["ratelimit-remaining"] == "0"
