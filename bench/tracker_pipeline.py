"""Benchmark: tracker events through the real stack to WebSocket and Slack, in order.

Starts Daphne, the partition workers (one Celery worker per org-<k> queue, concurrency 1), a
default worker, beat and a local Slack stand-in enforcing 1 message/s per channel; seeds a
database of its own (herald_bench); drives start/stop through the REST API from concurrent
clients at a target rate; listens on WebSockets; prints throughput, latency percentiles, order
violations, losses and duplicates, and pgbench's ceiling on the same machine.

    .venv/bin/python -m config.backing run -- python bench/tracker_pipeline.py \
        --active-orgs 1000 --members 10 --total-orgs 1000 --rate 500 --duration 60
"""
import argparse
import asyncio
import json
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
    Procs, analyse_slack, pct, pgbench_ceiling, provider_worker_argv, setup_database, wait_http, wait_log,
)


def bench_env(args, db_url: str, redis_url: str, slack_port: int, prom_dir: str) -> dict:
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DEBUG": "false",
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "console",
        "SLACK_API_URL": f"http://127.0.0.1:{slack_port}/api/",
        "SLACK_GLOBAL_PER_MINUTE": str(args.slack_global_per_minute),
        "PROMETHEUS_MULTIPROC_DIR": prom_dir,
        "ORG_QUEUE_PARTITIONS": str(args.partitions),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "WEB_VERBOSITY": "0",
    })
    return env


async def run_load(args, seeded, web: str, ws_base: str):
    import httpx
    import websockets

    receipts: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)  # (org, user) -> [(seq, t)]
    accepted: dict[int, list[tuple[int, float]]] = defaultdict(list)  # org -> [(seq, occurred_at epoch)]
    conflicts = errors = 0
    api_latency: list[float] = []

    by_org: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for org_id, user_id, token in seeded["tokens"]:
        by_org[org_id].append((user_id, token))

    stop_listening = asyncio.Event()

    sockets: list = []
    dropped = 0  # connections the server closed during the run (each loses what followed)

    async def listen(org_id: int, user_id: int, token: str, ready: asyncio.Event):
        nonlocal dropped
        url = f"{ws_base}/ws/?token={token}"
        # No client pings: under overload a late pong would close the socket and read as loss.
        async with websockets.connect(url, origin="http://127.0.0.1", open_timeout=30, max_queue=None,
                                      ping_interval=None) as ws:
            sockets.append(ws)
            ready.set()
            try:
                async for raw in ws:
                    now = time.time()
                    msg = json.loads(raw)
                    if msg.get("type") == "tracker.event":
                        receipts[(org_id, user_id)].append((msg["seq"], now))
            except websockets.ConnectionClosed:
                pass
            if not stop_listening.is_set():
                dropped += 1

    listeners, readies = [], []
    sem = asyncio.Semaphore(50)

    async def start_listener(org_id, user_id, token):
        ready = asyncio.Event()
        readies.append(ready)
        async with sem:
            task = asyncio.create_task(listen(org_id, user_id, token, ready))
            listeners.append(task)
            await asyncio.wait_for(ready.wait(), timeout=60)

    listened = [(org_id, user_id) for org_id, members in by_org.items() for user_id, _ in members[: args.ws_per_org]]
    await asyncio.gather(*[
        start_listener(org_id, user_id, token)
        for org_id, members in by_org.items() for user_id, token in members[: args.ws_per_org]
    ])
    print(f"websocket clients connected: {len(listeners)}", flush=True)

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=web, limits=limits, timeout=30) as client:
        running: dict[int, bool] = defaultdict(bool)
        per_org_rate = args.rate / len(by_org)
        t_start = time.monotonic()
        t_end = t_start + args.duration

        async def drive(org_id: int):
            nonlocal conflicts, errors
            tracker_id = seeded["trackers"][org_id]
            token = by_org[org_id][0][1]
            next_at = t_start + random.uniform(0, 1 / per_org_rate)
            while True:
                now = time.monotonic()
                if next_at > t_end or now > t_end:  # the run lasts --duration, however far behind
                    return
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                action = "stop" if running[org_id] else "start"
                sent = time.monotonic()
                try:
                    r = await client.post(f"/api/v1/trackers/{tracker_id}/{action}",
                                          headers={"Authorization": f"Token {token}"})
                except httpx.HTTPError:
                    errors += 1
                    next_at += 1 / per_org_rate
                    continue
                api_latency.append(time.monotonic() - sent)
                if r.status_code == 200:
                    ev = r.json()["event"]
                    from datetime import datetime

                    accepted[org_id].append((ev["seq"], datetime.fromisoformat(ev["occurred_at"]).timestamp()))
                    running[org_id] = action == "start"
                elif r.status_code == 409:
                    conflicts += 1
                    running[org_id] = not running[org_id]
                else:
                    errors += 1
                next_at += random.expovariate(per_org_rate) if args.poisson else 1 / per_org_rate

        wall0 = time.time()
        await asyncio.gather(*[drive(o) for o in by_org])
        wall1 = time.time()
    drive_seconds = wall1 - wall0
    total_events = sum(len(v) for v in accepted.values())
    print(f"load done: {total_events} events in {drive_seconds:.1f}s; waiting for delivery", flush=True)

    # Wait for every WebSocket listener to have every accepted seq (or time out).
    deadline = time.monotonic() + args.drain_timeout
    expected_max = {o: max((s for s, _ in v), default=0) for o, v in accepted.items()}
    while time.monotonic() < deadline:
        missing = sum(
            1 for org_id, user_id in listened
            if max((s for s, _ in receipts.get((org_id, user_id), [])), default=0) < expected_max.get(org_id, 0)
        )
        if not missing:
            break
        await asyncio.sleep(0.5)
    stop_listening.set()
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*listeners, return_exceptions=True)
    return {
        "receipts": receipts, "accepted": accepted, "dropped": dropped, "listened": listened,
        "conflicts": conflicts, "errors": errors,
        "api_latency": api_latency, "drive_seconds": drive_seconds, "wall0": wall0, "wall1": wall1,
    }


def analyse_ws(result) -> dict:
    occurred = {}
    for org_id, evs in result["accepted"].items():
        for seq, t in evs:
            occurred[(org_id, seq)] = t
    latencies, violations, lost, dups = [], 0, 0, 0
    for org_id, user_id in result["listened"]:  # every listener, also one that heard nothing
        got = result["receipts"].get((org_id, user_id), [])
        seqs = [s for s, _ in got]
        last = 0
        for s in seqs:
            if s < last:
                violations += 1
            last = max(last, s)
        counts = defaultdict(int)
        for s in seqs:
            counts[s] += 1
        dups += sum(c - 1 for c in counts.values() if c > 1)
        want = {s for s, _ in result["accepted"].get(org_id, [])}
        lost += len(want - set(counts))
        first_seen = {}
        for s, t in got:
            first_seen.setdefault(s, t)
        for s in want & set(first_seen):
            latencies.append(first_seen[s] - occurred[(org_id, s)])
    return {"latencies": latencies, "violations": violations, "lost": lost, "duplicates": dups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--active-orgs", type=int, default=1000)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--total-orgs", type=int, default=1000)
    ap.add_argument("--inactive-members", type=int, default=1)
    ap.add_argument("--rate", type=float, default=500, help="target events/s across all orgs")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--clients", type=int, default=64, help="concurrent HTTP connections")
    ap.add_argument("--ws-per-org", type=int, default=1, help="WebSocket listeners per active org")
    ap.add_argument("--web-processes", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--slack-global-per-minute", type=int, default=100000)
    ap.add_argument("--drain-timeout", type=float, default=60)
    ap.add_argument("--poisson", action="store_true", help="Poisson arrivals instead of even spacing")
    ap.add_argument("--db-name", default="herald_bench")
    ap.add_argument("--redis-db", type=int, default=5)
    ap.add_argument("--keep-logs", action="store_true")
    args = ap.parse_args()

    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald")
    base_redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = base_redis.rsplit("/", 1)[0] + f"/{args.redis_db}"
    os.environ["REDIS_URL"] = redis_url
    from cryptography.fernet import Fernet

    os.environ.setdefault("HERALD_ENCRYPTION_KEYS", Fernet.generate_key().decode())  # children inherit it
    db_url = setup_database(args, base_db)

    import django

    django.setup()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    import redis
    from django.core.management import call_command
    from django.db import connection

    from notifications.ratelimit import RateLimiter

    redis.Redis.from_url(redis_url).flushdb()
    RateLimiter(redis.Redis.from_url(redis_url)).start_fresh()  # an empty Redis, not a lost history
    t0 = time.monotonic()
    call_command("migrate", verbosity=0)
    print(f"migrated in {time.monotonic() - t0:.1f}s", flush=True)
    from bench.seed import seed

    seeded = seed(active_orgs=args.active_orgs, members=args.members, total_orgs=args.total_orgs,
                  inactive_members=args.inactive_members, slack_token="xoxb-bench-token")
    print(f"seeded {seeded['orgs']} orgs / {seeded['users']} users in {seeded['seconds']}s", flush=True)
    connection.close()

    from tests.support.stack import free_port

    logdir = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    prom_dir = logdir / "prom"
    prom_dir.mkdir()
    slack_port, web_port = free_port(), free_port()
    env = bench_env(args, db_url, redis_url, slack_port, str(prom_dir))
    procs = Procs(logdir, env)
    stats_file = logdir / "slack.json"
    py = sys.executable
    try:
        procs.start("slack", [py, "-m", "tests.support.fakeslack", "--port", str(slack_port),
                              "--stats-file", str(stats_file), "--rate", "1", "--burst", "3"])
        procs.start("web", [py, "-m", "config.serve", "--port", str(web_port),
                            "--processes", str(args.web_processes)])
        procs.start("orgs", [py, "manage.py", "run_partition_workers", "--loglevel", "INFO"])
        procs.start("providers", provider_worker_argv(py))
        procs.start("worker", [py, "-m", "celery", "-A", "config", "worker", "-Q", "default,maintenance", "-c", "1",
                               "-n", "default@%h", "--without-gossip", "--without-mingle", "-l", "INFO"])
        procs.start("beat", [py, "-m", "celery", "-A", "config", "beat", "-l", "WARNING", "--scheduler",
                             "django_celery_beat.schedulers:DatabaseScheduler"])
        wait_http(f"http://127.0.0.1:{web_port}/healthz")
        wait_http(f"http://127.0.0.1:{slack_port}/_control/stats")
        wait_log(logdir / "orgs.log", "ready", timeout=90)
        wait_log(logdir / "providers.log", "ready", timeout=90)
        time.sleep(2)
        result = asyncio.run(run_load(args, seeded, f"http://127.0.0.1:{web_port}", f"ws://127.0.0.1:{web_port}"))
        time.sleep(1)
        import httpx

        slack = httpx.get(f"http://127.0.0.1:{slack_port}/_control/stats", timeout=30).json()
        slack["messages"] = httpx.get(f"http://127.0.0.1:{slack_port}/_control/messages", timeout=60).json()
    finally:
        procs.stop_all()

    django.db.connections.close_all()
    from django.db import connection as conn

    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM notifications_notification WHERE created_at BETWEEN to_timestamp(%s) "
                    "AND to_timestamp(%s)", [result["wall0"], result["wall1"]])
        notes_in_window = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM notifications_notification")
        notes_total = cur.fetchone()[0]
    ws = analyse_ws(result)
    sl = analyse_slack(result, slack.get("messages", []))
    events = sum(len(v) for v in result["accepted"].values())
    secs = result["drive_seconds"]
    ceiling = pgbench_ceiling(db_url, args.clients)
    print()
    print(f"== Herald tracker pipeline: {args.active_orgs} active orgs x {args.members} members, "
          f"{args.total_orgs} orgs in the database, target {args.rate:.0f} events/s for {args.duration:.0f}s ==")
    print(f"events accepted          {events} ({events / secs:.1f}/s); 409 conflicts {result['conflicts']}, "
          f"errors {result['errors']}")
    print(f"API latency              p50 {pct(result['api_latency'], 50) * 1000:.0f} ms, "
          f"p99 {pct(result['api_latency'], 99) * 1000:.0f} ms")
    print(f"notifications created    {notes_in_window} during the load ({notes_in_window / secs:.1f}/s); "
          f"{notes_total} in all")
    print(f"event -> WebSocket       p50 {pct(ws['latencies'], 50) * 1000:.0f} ms, "
          f"p95 {pct(ws['latencies'], 95) * 1000:.0f} ms, p99 {pct(ws['latencies'], 99) * 1000:.0f} ms "
          f"({len(ws['latencies'])} receipts)")
    print(f"event -> Slack           p50 {pct(sl['latencies'], 50) * 1000:.0f} ms, "
          f"p95 {pct(sl['latencies'], 95) * 1000:.0f} ms, p99 {pct(sl['latencies'], 99) * 1000:.0f} ms; "
          f"{sl['requests']} requests, mean batch {sl['mean_batch']:.2f}")
    print(f"order violations         websocket {ws['violations']}, slack {sl['violations']}")
    print(f"lost                     websocket {ws['lost']}, slack {sl['lost']} (sockets the server closed "
          f"mid-run: {result['dropped']} of {len(result['listened'])})")
    print(f"duplicates               websocket {ws['duplicates']}, slack {sl['duplicates']}")
    print(f"slack limit breaches     {slack.get('breaches', 'n/a')} "
          f"(429s answered: {slack.get('ratelimited', 'n/a')})")
    print(f"pgbench ceiling          {ceiling} (single-row INSERT, {args.clients} clients)")
    print(f"logs                     {logdir}")


if __name__ == "__main__":
    main()
