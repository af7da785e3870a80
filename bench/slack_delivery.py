"""Benchmark: the delivery engine under the product's Slack scenario (issue 4).

500 events/s for 60 s across 50 organizations' Slack channels; Slack's global limit 1000
requests/min and 1 message/s per channel; the local Slack stand-in fails 5% of calls with 500,
2% with 429 + Retry-After and answers 1% after 3 s. Events are committed straight into the
event log (the same statements tracker_start uses: the org counter, then the event rows) and the
streams are kicked as on commit, so this measures delivery, not the HTTP API. Real partition
workers, beat, Postgres and Redis do the rest. Prints messages delivered, requests made, limit
breaches, latency percentiles, order violations, lost, duplicates and the mean coalesced batch.

    .venv/bin/python -m config.backing run -- .venv/bin/python bench/slack_delivery.py
"""
import argparse
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    Procs, analyse_slack, pct, provider_worker_argv, setup_database, wait_http, wait_log,
)

GENERATE_SQL = """
WITH bumped AS (
    UPDATE organizations_organization o
    SET last_event_seq = o.last_event_seq + v.n, last_event_at = now()
    FROM (SELECT unnest(%(orgs)s::bigint[]) AS org_id, unnest(%(counts)s::int[]) AS n) v
    WHERE o.id = v.org_id
    RETURNING o.id, o.last_event_seq, v.n
)
INSERT INTO notifications_logentry (organization_id, seq, kind, payload, actor_id, actor_name, audience, occurred_at)
SELECT b.id, s, 'tracker.event',
       jsonb_build_object('tracker_id', t.id, 'tracker_name', t.name,
                          'action', CASE WHEN s %% 2 = 1 THEN 'start' ELSE 'stop' END),
       NULL, 'bench', '{}', clock_timestamp()
FROM bumped b
JOIN trackers_tracker t ON t.organization_id = b.id
CROSS JOIN LATERAL generate_series(b.last_event_seq - b.n + 1, b.last_event_seq) s
RETURNING organization_id, seq, extract(epoch FROM occurred_at)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orgs", type=int, default=50)
    ap.add_argument("--rate", type=float, default=500, help="events/s across all organizations")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--global-per-minute", type=int, default=1000)
    ap.add_argument("--channel-per-second", type=float, default=1.0)
    ap.add_argument("--fail", type=float, default=0.05)
    ap.add_argument("--ratelimit", type=float, default=0.02)
    ap.add_argument("--slow", type=float, default=0.01)
    ap.add_argument("--slow-seconds", type=float, default=3.0)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--drain-timeout", type=float, default=120)
    ap.add_argument("--db-name", default="herald_bench_slack")
    ap.add_argument("--redis-db", type=int, default=6)
    args = ap.parse_args()

    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + f"/{args.redis_db}"
    os.environ["REDIS_URL"] = redis_url
    os.environ["CELERY_BROKER_URL"] = redis_url
    os.environ["SLACK_GLOBAL_PER_MINUTE"] = str(args.global_per_minute)
    os.environ["SLACK_CHANNEL_PER_SECOND"] = str(args.channel_per_second)
    from cryptography.fernet import Fernet

    os.environ.setdefault("HERALD_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    db_url = setup_database(args, base_db)

    import django

    django.setup()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    import redis
    from django.core.management import call_command
    from django.db import connection, transaction

    from notifications.ratelimit import RateLimiter

    redis.Redis.from_url(redis_url).flushdb()
    RateLimiter(redis.Redis.from_url(redis_url)).start_fresh()  # an empty Redis, not a lost history
    call_command("migrate", verbosity=0)
    from bench.seed import seed

    seeded = seed(active_orgs=args.orgs, members=1, total_orgs=args.orgs, inactive_members=0,
                  slack_token="xoxb-bench-token")
    org_ids = seeded["active_org_ids"]
    connection.close()

    from tests.support.stack import free_port

    logdir = Path(tempfile.mkdtemp(prefix="herald-bench-slack-"))
    (logdir / "prom").mkdir()
    slack_port = free_port()
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings.local", DEBUG="false", DATABASE_URL=db_url,
               LOG_LEVEL="WARNING", LOG_FORMAT="console", SLACK_API_URL=f"http://127.0.0.1:{slack_port}/api/",
               PROMETHEUS_MULTIPROC_DIR=str(logdir / "prom"), ORG_QUEUE_PARTITIONS=str(args.partitions),
               SLACK_TIMEOUT="5")
    os.environ.update({k: env[k] for k in ("SLACK_API_URL", "ORG_QUEUE_PARTITIONS", "DATABASE_URL")})
    procs = Procs(logdir, env)
    py = sys.executable
    generated: dict[int, list[tuple[int, float]]] = defaultdict(list)
    try:
        procs.start("slack", [py, "-m", "tests.support.fakeslack", "--port", str(slack_port),
                              "--rate", str(args.channel_per_second), "--burst", "3",
                              "--global-per-minute", str(args.global_per_minute), "--fail", str(args.fail),
                              "--ratelimit", str(args.ratelimit), "--retry-after", "1", "--slow", str(args.slow),
                              "--slow-seconds", str(args.slow_seconds)])
        procs.start("orgs", [py, "manage.py", "run_partition_workers", "--loglevel", "INFO"])
        procs.start("providers", provider_worker_argv(py))
        procs.start("beat", [py, "-m", "celery", "-A", "config", "beat", "-l", "WARNING", "--scheduler",
                             "django_celery_beat.schedulers:DatabaseScheduler"])
        procs.start("worker", [py, "-m", "celery", "-A", "config", "worker", "-Q", "default,maintenance", "-c", "1",
                               "-n", "default@%h", "--without-gossip", "--without-mingle", "-l", "INFO"])
        wait_http(f"http://127.0.0.1:{slack_port}/_control/stats")
        wait_log(logdir / "orgs.log", "ready", timeout=90)
        wait_log(logdir / "providers.log", "ready", timeout=90)
        time.sleep(3)

        from notifications.delivery.kicks import stream_kick

        tick = 0.05
        start = time.monotonic()
        per_tick = args.rate * tick
        carry = 0.0
        print(f"generating {args.rate:.0f} events/s for {args.duration:.0f}s across {len(org_ids)} orgs", flush=True)
        while (now := time.monotonic()) - start < args.duration:
            carry += per_tick
            n = int(carry)
            carry -= n
            counts: dict[int, int] = defaultdict(int)
            for _ in range(n):
                counts[random.choice(org_ids)] += 1
            if counts:
                with transaction.atomic(), connection.cursor() as cur:
                    cur.execute(GENERATE_SQL, {"orgs": list(counts), "counts": list(counts.values())})
                    rows = cur.fetchall()
                for org_id, seq, at in rows:
                    generated[org_id].append((seq, float(at)))
                for org_id in counts:
                    stream_kick(org_id=org_id, channel="slack")
            sleep = tick - (time.monotonic() - now)
            if sleep > 0:
                time.sleep(sleep)
        gen_seconds = time.monotonic() - start
        total = sum(len(v) for v in generated.values())
        print(f"generated {total} events in {gen_seconds:.1f}s ({total / gen_seconds:.0f}/s); waiting for delivery",
              flush=True)

        import httpx

        want = {o: max(s for s, _ in v) for o, v in generated.items()}
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            with connection.cursor() as cur:
                cur.execute("SELECT organization_id, delivered_seq FROM notifications_deliverystream "
                            "WHERE channel = 'slack'")
                done = dict(cur.fetchall())
            if all(done.get(o, 0) >= s for o, s in want.items()):
                break
            time.sleep(1)
        drained_after = time.monotonic() - start - gen_seconds
        stats = httpx.get(f"http://127.0.0.1:{slack_port}/_control/stats", timeout=30).json()
        messages = httpx.get(f"http://127.0.0.1:{slack_port}/_control/messages", timeout=60).json()
    finally:
        procs.stop_all()

    import json

    (logdir / "messages.json").write_text(json.dumps(messages))
    result = {"accepted": generated}
    sl = analyse_slack(result, messages)
    with connection.cursor() as cur:
        cur.execute("SELECT status, count(*), coalesce(sum(attempts), 0) FROM notifications_delivery GROUP BY status")
        deliveries = {s: (c, a) for s, c, a in cur.fetchall()}
    delivered_events = sum(len(range(m["first_seq"], m["last_seq"] + 1)) for m in messages if m.get("org_id"))
    print()
    print(f"== Herald delivery engine: {args.orgs} orgs, {args.rate:.0f} events/s for {args.duration:.0f}s, "
          f"Slack {args.global_per_minute}/min global + {args.channel_per_second:g}/s per channel, "
          f"faults 500={args.fail:.0%} 429={args.ratelimit:.0%} slow={args.slow:.0%}x{args.slow_seconds:g}s ==")
    print(f"events generated         {total} ({total / gen_seconds:.0f}/s)")
    print(f"events delivered         {delivered_events} in {len(messages)} Slack messages "
          f"(drained {drained_after:.1f}s after the load stopped)")
    print(f"requests made            {stats['requests']} (500s {stats['http_500']}, 429 injected "
          f"{stats['ratelimited_injected']}, slow {stats['slow']})")
    print(f"limit breaches           {stats['breaches']} (max {stats['max_global_per_minute']} requests in any 60 s, "
          f"max {stats['max_channel_per_second']} per channel in any 1 s)")
    print(f"event -> Slack           p50 {pct(sl['latencies'], 50):.2f} s, p95 {pct(sl['latencies'], 95):.2f} s, "
          f"p99 {pct(sl['latencies'], 99):.2f} s, max {max(sl['latencies'], default=0):.2f} s")
    print(f"order violations         {sl['violations']}")
    print(f"lost                     {sl['lost']}")
    print(f"duplicates               {sl['duplicates']}")
    print(f"mean coalesced batch     {sl['mean_batch']:.1f} events per message")
    print(f"deliveries by status     {deliveries}")
    print(f"logs                     {logdir}")


if __name__ == "__main__":
    main()
