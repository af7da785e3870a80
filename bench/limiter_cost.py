"""Benchmark: what one limiter or breaker call costs Redis (the budget is CPU per event).

Starts a private redis-server on a free port (nothing shared is measured or touched), then makes
N calls of each kind the delivery path makes, with the production scope declarations: a Slack
acquire (global + one of 1,000 channels), the fair variant, a 429 pause, a breaker allow and a
breaker record. Prints Redis's own CPU per call (INFO commandstats, usec_per_call of EVAL) and the
client's round trip p50 / p99.

    .venv/bin/python bench/limiter_cost.py --calls 5000
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import pct  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args()
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.local"
    os.environ.setdefault("DEBUG", "false")
    import django

    django.setup()
    import redis

    from notifications.breaker import CircuitBreaker
    from notifications.ratelimit import RateLimiter, Scope

    server = shutil.which("redis-server", path="/usr/bin:/usr/local/bin") or shutil.which("redis-server")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(host="127.0.0.1", port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            version = client.info("server")["redis_version"]
            limiter = RateLimiter(client)
            limiter.start_fresh()
            breaker = CircuitBreaker("slack", client)
            channels = [f"C{i:04d}" for i in range(1000)]
            kinds = {
                "acquire slack.global+channel": lambda i: limiter.acquire(
                    [Scope("slack.global"), Scope("slack.channel", channels[i % 1000])]),
                "acquire_fair slack.global+channel": lambda i: limiter.acquire_fair(
                    [Scope("slack.global"), Scope("slack.channel", channels[i % 1000])],
                    member=f"stream-{i % 1000}", since=time.time() - 1, lookahead=8),
                "pause slack.channel": lambda i: limiter.pause(Scope("slack.channel", channels[i % 1000]), 0.001),
                "breaker allow": lambda i: breaker.allow(),
                "breaker record ok": lambda i: breaker.record(ok=True),
            }
            print(f"== limiter/breaker cost: redis {version} (private, port {port}), {args.calls} calls each ==")
            for name, call in kinds.items():
                client.config_resetstat()
                rtts = []
                for i in range(args.calls):
                    t0 = time.perf_counter()
                    call(i)
                    rtts.append((time.perf_counter() - t0) * 1e6)
                stats = client.info("commandstats")
                evals = stats.get("cmdstat_eval", {})
                extra = sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_eval", "cmdstat_config"))
                print(f"{name:36s} redis {evals.get('usec_per_call', 0):6.1f} us/call"
                      f"  round trip p50 {pct(rtts, 50):6.0f} us  p99 {pct(rtts, 99):6.0f} us"
                      f"  (other commands per call: {extra / args.calls:.1f})")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
