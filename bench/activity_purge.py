"""Benchmark: writers on the activity log while 10 million old rows are purged (issue 10, item 5).

Seeds N old rows (default 10,000,000) into day partitions 31+ days old (one INSERT ... SELECT
generate_series per day), then runs W writer threads, each inserting activity rows at a fixed
rate with the middleware's own INSERT on a connection of its own (autocommit, one statement per
write, as a request does). Phase 1: writers alone (idle). Phase 2: the same writers while
reports.activity.activity_purge() detaches (CONCURRENTLY) and drops every partition past the
retention. Prints writer latency p50/p95/p99/max for both phases, the purge time and rows
removed; the target is a purge-phase p99 within 20 % of idle.

On a shared machine a 15 s idle window and the purge that follows it see different neighbours, so
their p99s differ by more than 20 % with no purge at all. Both modes therefore put idle time on both
sides of what they measure, so slow changes in the box's load fall on both sides:
- `--mode job` (default): the daily job as beat runs it (`activity_purge()`, one day at a time with
  ACTIVITY_PURGE_PAUSE_SECONDS between days) with an idle window as long as `--idle-seconds` before
  AND after it (A/B/A); the writes that overlap the job are compared with those of both windows.
- `--mode interleave` (stricter): before each day's DETACH + DROP the writers run `--idle-window`
  seconds alone, then only that day is dropped (`activity_purge(keep_days=...)`); the p99 over the
  drop statements themselves is compared with the p99 over the idle windows next to them.

    .venv/bin/python -m config.backing run -- .venv/bin/python bench/activity_purge.py
    .venv/bin/python -m config.backing run -- .venv/bin/python bench/activity_purge.py --rows 2000000 --days 4
"""
import argparse
import datetime as dt
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import pct, setup_database  # noqa: E402


class Writer(threading.Thread):
    def __init__(self, db_url: str, rate: float, insert_sql: str):
        super().__init__(daemon=True)
        self.db_url, self.interval, self.sql = db_url, 1.0 / rate, insert_sql
        self.samples: list[tuple[float, float]] = []  # (start, latency s)
        self.stop_event = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True) as conn:
            params = [1, 1, None, "bench", "POST", "tracker-start", "tracker", "1", "/api/v1/trackers/1/start", 200,
                      "127.0.0.1"]
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                t0 = time.monotonic()
                conn.execute(self.sql, params)
                self.samples.append((t0, time.monotonic() - t0))
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()  # fell behind: no catch-up burst


class LockWatch(threading.Thread):
    """Which lock waits (pg_locks, not granted) show up while the purge runs."""

    def __init__(self, db_url: str):
        super().__init__(daemon=True)
        self.db_url, self.seen, self.stop_event = db_url, {}, threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while not self.stop_event.is_set():
                for row in conn.execute("""SELECT w.locktype, w.relation::regclass::text, w.mode, a.query
                                           FROM pg_locks w JOIN pg_stat_activity a ON a.pid = w.pid
                                           WHERE NOT w.granted AND a.datname = current_database()"""):
                    self.seen[row[:3]] = self.seen.get(row[:3], 0) + 1
                self.stop_event.wait(0.01)


def summary(latencies: list[float]) -> str:
    ms = [x * 1000 for x in latencies]
    return (f"n={len(ms):6d}  p50={pct(ms, 50):6.2f} ms  p95={pct(ms, 95):6.2f} ms  p99={pct(ms, 99):6.2f} ms  "
            f"max={max(ms) if ms else float('nan'):7.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=10, help="old days the rows are spread over")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--rate", type=float, default=100.0, help="inserts/s per writer")
    ap.add_argument("--idle-seconds", type=float, default=15.0)
    ap.add_argument("--pause", type=float, default=None, help="seconds between dropped days "
                    "(default ACTIVITY_PURGE_PAUSE_SECONDS)")
    ap.add_argument("--db-name", default="herald_bench_activity")
    ap.add_argument("--mode", choices=["job", "interleave"], default="job",
                    help="job: idle / the daily job / idle; interleave: idle / drop one day / idle / ...")
    ap.add_argument("--idle-window", type=float, default=3.0, help="seconds of writers alone before each drop")
    args = ap.parse_args()
    db_url = setup_database(args, os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald"))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from reports import activity

    assert not settings.DEBUG, "benchmarks run with DEBUG off"
    call_command("migrate", verbosity=0)
    today = activity._db_today()
    per_day = args.rows // args.days
    started = time.monotonic()
    for n in range(args.days):
        day = today - dt.timedelta(days=settings.ACTIVITY_RETENTION_DAYS + 1 + n)
        activity.activity_partition_create(day=day)
        with connection.cursor() as cur:
            cur.execute(f"""
                INSERT INTO "{activity.partition_name(day)}" (created_at, organization_id, actor_user_id, actor_name,
                    method, action, object_type, object_id, path, status, ip)
                SELECT %s::timestamptz + make_interval(secs => g * 86400.0 / %s), 1 + g %% 1000, g %% 5000,
                       'user' || (g %% 5000), 'POST', 'tracker-start', 'tracker', (g %% 100000)::text,
                       '/api/v1/trackers/' || (g %% 100000) || '/start', 200, '10.0.0.1'
                FROM generate_series(0, %s - 1) g""", [f"{day.isoformat()} 00:00:00+00", per_day, per_day])
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE reports_activitylog")
        cur.execute("SELECT count(*), pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits "
                    "WHERE inhparent = 'reports_activitylog'::regclass")
        partitions, size = cur.fetchone()
    print(f"seed: {per_day * args.days:,} old rows in {args.days} day partitions ({size} across {partitions} "
          f"partitions) in {time.monotonic() - started:.1f} s", flush=True)

    writers = [Writer(db_url, args.rate, activity._INSERT) for _ in range(args.writers)]
    for w in writers:
        w.start()
    time.sleep(2)  # warm up: connections, plans
    idle_from = time.monotonic()
    time.sleep(args.idle_seconds)
    watch = LockWatch(db_url)
    watch.start()
    idle_windows, drop_windows, dropped = [], [], []
    purge_from = time.monotonic()
    if args.mode == "interleave":
        idle_windows.append((idle_from, purge_from))
        for n in range(args.days):
            if n:
                time.sleep(args.idle_window)
            t0 = time.monotonic()
            # keep_days such that only the oldest remaining day is past it
            dropped += activity.activity_purge(keep_days=settings.ACTIVITY_RETENTION_DAYS + args.days - 1 - n, pause=0)
            t1 = time.monotonic()
            if n:
                idle_windows.append((t0 - args.idle_window, t0))
            drop_windows.append((t0, t1))
    else:
        dropped = activity.activity_purge(pause=args.pause)
        idle_windows.append((idle_from, purge_from))
        drop_windows.append((purge_from, time.monotonic()))
    purge_to = time.monotonic()
    if args.mode == "job":
        time.sleep(args.idle_seconds)
        idle_windows.append((purge_to, time.monotonic()))
    watch.stop_event.set()
    watch.join()
    time.sleep(1)
    for w in writers:
        w.stop_event.set()
    for w in writers:
        w.join()
    samples = [s for w in writers for s in w.samples]

    def within(windows):  # a write overlapping the window counts (one that started just before it too)
        return [lat for t0, lat in samples if any(a <= t0 < b or t0 < a < t0 + lat for a, b in windows)]

    idle, during = within(idle_windows), within(drop_windows)
    print(f"writers: {args.writers} x {args.rate:.0f} inserts/s, one autocommit INSERT each (the middleware's)")
    mode = (f"interleaved: {len(idle_windows)} idle windows of ~{args.idle_window:.0f} s next to "
            f"{len(drop_windows)} one-day drops" if args.mode == "interleave" else
            f"the daily job between two idle windows of {args.idle_seconds:.0f} s")
    print(f"mode   : {mode}")
    print(f"idle   : {summary(idle)}")
    print(f"purge  : {summary(during)}")
    if args.mode == "interleave":
        print(f"after  : {summary([lat for t0, lat in samples if t0 >= purge_to])}")
    print(f"purge took {purge_to - purge_from:.2f} s, dropped {len(dropped)} partitions "
          f"({per_day * len(dropped):,} rows); drops alone {sum(b - a for a, b in drop_windows):.2f} s")
    print(f"lock waits seen during the purge (type, relation, mode: samples): {watch.seen or 'none'}")
    p99_idle, p99_purge = pct(idle, 99), pct(during, 99)
    load = os.getloadavg()
    print(f"p99 purge / idle: {p99_purge / p99_idle:.2f}x (target <= 1.20x); load average {load[0]:.1f} {load[1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
