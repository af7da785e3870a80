"""Benchmark: thousands of profile updates at once through the email provider's limit (issue 4).

5,000 members each PATCH /api/v1/me within about 10 s through the real web tier (Daphne, several
processes), so 5,000 confirmation emails are queued at once. Real Celery workers drain them
through the shared `email.api` limit (default 200/min) to two local SMTP providers (aiosmtpd
processes speaking real SMTP; the primary fails a share of calls with 451 if asked, so failover
is exercised). Prints: updates accepted and how long submitting took, emails delivered (primary
and secondary), limit breaches (most emails accepted in any 60 s window against the limit),
the time the whole batch took against the ideal (emails / limit), lost and duplicates.

The ideal at 200/min is 25 minutes. `--per-minute` shortens the run with a higher limit (the
mechanism is the same; say so when reporting):

    .venv/bin/python -m config.backing run -- .venv/bin/python bench/email_profile.py               # 25 min
    .venv/bin/python -m config.backing run -- .venv/bin/python bench/email_profile.py --per-minute 1200
"""
import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import Procs, pct, setup_database, wait_http, wait_log  # noqa: E402


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_messages(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def max_in_window(times: list[float], seconds: float) -> int:
    import bisect

    times = sorted(times)
    best = 0
    for i, start in enumerate(times):
        best = max(best, bisect.bisect_left(times, start + seconds, lo=i) - i)
    return best


async def submit(web: str, tokens: list[str], clients: int, spread: float) -> dict:
    """PATCH /api/v1/me once per token, paced evenly over `spread` seconds by `clients` connections."""
    import httpx

    latencies, statuses = [], Counter()
    queue: asyncio.Queue = asyncio.Queue()
    start = time.monotonic()
    for i, token in enumerate(tokens):
        queue.put_nowait((start + spread * i / len(tokens), i, token))

    async def worker(client):
        while True:
            try:
                due, i, token = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.monotonic()
            try:
                response = await client.patch(f"{web}/api/v1/me", json={"first_name": f"Renamed {i}"},
                                              headers={"Authorization": f"Token {token}"})
                statuses[response.status_code] += 1
            except httpx.HTTPError as exc:
                statuses[exc.__class__.__name__] += 1
            latencies.append(time.monotonic() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return {"seconds": time.monotonic() - start, "latencies": latencies, "statuses": statuses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=5000)
    ap.add_argument("--spread", type=float, default=10, help="seconds over which the updates are sent")
    ap.add_argument("--per-minute", type=float, default=200, help="EMAIL_API_PER_MINUTE for the run")
    ap.add_argument("--primary-temp-fail", choices=["421", "451"], default=None,
                    help="the primary answers every call with this (failover to the secondary)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--web-processes", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="Celery worker processes draining the outbox")
    ap.add_argument("--timeout", type=float, default=None, help="seconds to wait for delivery "
                    "(default: 1.5 x the ideal + 120)")
    ap.add_argument("--db-name", default="herald_bench_email")
    ap.add_argument("--redis-db", type=int, default=4)
    args = ap.parse_args()

    members = 10
    active_orgs = -(-args.updates // members)
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + f"/{args.redis_db}"
    os.environ.update({"REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
                       "EMAIL_API_PER_MINUTE": str(args.per_minute)})
    from cryptography.fernet import Fernet

    os.environ.setdefault("HERALD_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    db_url = setup_database(args, base_db)

    import django

    django.setup()
    import logging

    import redis

    logging.getLogger("httpx").setLevel(logging.WARNING)
    from django.core.management import call_command
    from django.db import connection

    from notifications.ratelimit import RateLimiter

    redis.Redis.from_url(redis_url).flushdb()
    RateLimiter(redis.Redis.from_url(redis_url)).start_fresh()  # an empty Redis, not a lost history
    call_command("migrate", verbosity=0)
    from bench.seed import seed

    seeded = seed(active_orgs=active_orgs, members=members, total_orgs=active_orgs, inactive_members=0,
                  slack_token="xoxb-bench-token")
    tokens = [t for _, _, t in seeded["tokens"]][: args.updates]
    connection.close()

    from tests.support.stack import free_port

    logdir = Path(tempfile.mkdtemp(prefix="herald-bench-email-"))
    (logdir / "prom").mkdir()
    web_port, primary_port, secondary_port = free_port(), free_port(), free_port()
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings.local", DEBUG="false", DATABASE_URL=db_url,
               LOG_LEVEL="WARNING", LOG_FORMAT="console", WEB_VERBOSITY="0",
               PROMETHEUS_MULTIPROC_DIR=str(logdir / "prom"),
               EMAIL_PRIMARY_HOST="127.0.0.1", EMAIL_PRIMARY_PORT=str(primary_port),
               EMAIL_SECONDARY_HOST="127.0.0.1", EMAIL_SECONDARY_PORT=str(secondary_port), EMAIL_TIMEOUT="5")
    procs = Procs(logdir, env)
    py = sys.executable
    smtp = {}
    for name, port in (("primary", primary_port), ("secondary", secondary_port)):
        smtp[name] = (logdir / f"{name}.json", logdir / f"{name}.jsonl")
        argv = [py, "-m", "tests.support.fakesmtp", "--port", str(port), "--stats-file", str(smtp[name][0]),
                "--messages-file", str(smtp[name][1])]
        if name == "primary" and args.primary_temp_fail:
            argv += ["--temp-fail", args.primary_temp_fail]
        procs.start(f"smtp-{name}", argv)
    ideal = args.updates / args.per_minute * 60
    timeout = args.timeout or ideal * 1.5 + 120
    try:
        procs.start("web", [py, "-m", "config.serve", "--port", str(web_port),
                            "--processes", str(args.web_processes)])
        procs.start("worker", [py, "-m", "celery", "-A", "config", "worker", "-Q", "default,maintenance",
                               "-c", str(args.workers), "-n", "default@%h", "--without-gossip", "--without-mingle",
                               "-l", "INFO"])
        procs.start("beat", [py, "-m", "celery", "-A", "config", "beat", "-l", "WARNING", "--scheduler",
                             "django_celery_beat.schedulers:DatabaseScheduler"])
        wait_http(f"http://127.0.0.1:{web_port}/healthz")
        wait_log(logdir / "worker.log", "ready", timeout=90)
        for name in smtp:
            deadline = time.monotonic() + 30
            while not read_json(smtp[name][0]) and time.monotonic() < deadline:
                time.sleep(0.2)
        time.sleep(1)

        print(f"submitting {len(tokens)} profile updates over {args.spread:g}s "
              f"(email limit {args.per_minute:g}/min, ideal {ideal / 60:.1f} min)", flush=True)
        t0 = time.monotonic()
        submitted = asyncio.run(submit(f"http://127.0.0.1:{web_port}", tokens, args.clients, args.spread))
        accepted = submitted["statuses"].get(200, 0)
        print(f"submitted in {submitted['seconds']:.1f}s: {dict(submitted['statuses'])}", flush=True)
        last_report, done_at = 0.0, None
        while time.monotonic() - t0 < timeout:
            delivered = sum(read_json(s).get("accepted", 0) for s, _ in smtp.values())
            if delivered >= accepted:
                done_at = time.monotonic()
                break
            if time.monotonic() - last_report > 60:
                last_report = time.monotonic()
                print(f"  {time.monotonic() - t0:6.0f}s  {delivered}/{accepted} delivered", flush=True)
            time.sleep(1)
        time.sleep(2)  # anything still in flight (a duplicate would show up here)
    finally:
        procs.stop_all()

    messages = []
    for name, (_, sink) in smtp.items():
        for m in read_messages(sink):
            m["provider"] = name
            messages.append(m)
    stats = {name: read_json(s) for name, (s, _) in smtp.items()}
    times = [float(m["time"]) for m in messages]
    per_recipient = Counter(r.lower() for m in messages for r in m["rcpt_tos"])
    expected = {f"bu{i}@bench.invalid" for i in range(1, accepted + 1)} if accepted == len(tokens) else None
    lost = len(expected - set(per_recipient)) if expected is not None else accepted - len(per_recipient)
    dups = sum(c - 1 for c in per_recipient.values() if c > 1)
    limit = int(args.per_minute)
    worst = max_in_window(times, 60.0)
    took = (done_at or time.monotonic()) - t0
    from django.db import connection as conn

    with conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM notifications_outboundemail GROUP BY status")
        outbox = dict(cur.fetchall())
    print()
    print(f"== Herald profile-update emails: {args.updates} updates in {args.spread:g}s, email limit "
          f"{args.per_minute:g}/min{' (shortened from 200/min for this run)' if args.per_minute != 200 else ''} ==")
    print(f"updates accepted         {accepted} of {len(tokens)} in {submitted['seconds']:.1f}s "
          f"(API p50 {pct(submitted['latencies'], 50) * 1000:.0f} ms, p99 "
          f"{pct(submitted['latencies'], 99) * 1000:.0f} ms)")
    by_provider = Counter(m["provider"] for m in messages)
    print(f"emails delivered         {len(messages)} (primary {by_provider['primary']}, "
          f"secondary {by_provider['secondary']}); primary temp failures "
          f"{stats['primary'].get('temp_failed', 0)}")
    print(f"limit breaches           {max(0, worst - limit)} (most emails in any 60 s window: {worst}, "
          f"limit {limit}; in any 10 s: {max_in_window(times, 10.0)})")
    print(f"time for all             {took / 60:.1f} min (ideal at {args.per_minute:g}/min: {ideal / 60:.1f} min, "
          f"{ideal / took:.0%} of the allowed rate used)" if done_at else
          f"time for all             NOT DONE after {took / 60:.1f} min (ideal {ideal / 60:.1f} min)")
    print(f"lost                     {lost}")
    print(f"duplicates               {dups}")
    print(f"outbox by status         {outbox}")
    print(f"logs                     {logdir}")


if __name__ == "__main__":
    main()
