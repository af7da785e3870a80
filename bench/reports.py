"""Benchmark: a report over 10 million time entries (issue 10, item 1).

Seeds one organization with 20 members, 5 trackers and N time entries (default 10,000,000,
spread over one year) with one INSERT ... SELECT generate_series (foreign-key triggers off and
secondary indexes dropped during the load, rebuilt after), then runs the report job exactly as
the Celery worker does (reports.services.report_job_run: count, server-side cursor, streaming
writer, storage save) and prints rows/s, total time and peak memory (RSS, sampled every 50 ms,
plus the kernel's high-water mark), against the process's RSS before the run.

    .venv/bin/python -m config.backing run -- .venv/bin/python bench/reports.py                  # seed + csv
    .venv/bin/python -m config.backing run -- .venv/bin/python bench/reports.py --reuse \\
        --format xlsx --days 31                                                             # ~1M rows

--reuse keeps the seeded database of an earlier run (seeding 10M rows takes minutes). The job is
timed end to end (claim to succeeded), the seed separately.
"""
import argparse
import datetime as dt
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import setup_database  # noqa: E402

YEAR_START = dt.date(2025, 1, 1)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, 0.0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_mb())
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak


def seed(entries: int) -> dict:
    from django.db import connection

    from organizations.models import User
    from organizations.services import membership_create, organization_create
    from trackers.models import Tracker

    started = time.monotonic()
    owner = User.objects.create_user(username="bench-owner", email="bench-owner@example.com", password=None)
    org = organization_create(creator=owner, name="Bench reports")
    users = [owner] + [User.objects.create_user(username=f"bench-{i}", email=f"bench-{i}@example.com", password=None)
                       for i in range(19)]  # no password: no hashing time in the seed
    for user in users[1:]:
        membership_create(organization=org, email=user.email, role="member")
    trackers = list(Tracker.objects.filter(organization=org)) + [
        Tracker.objects.create(organization=org, name=f"Project {i}") for i in range(4)]
    step = 366 * 86400 / entries  # seconds between entry starts: the whole set fits one year
    with connection.cursor() as cur:
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'trackers_timeentry' "
                    "AND indexname NOT LIKE '%%pkey'")
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        cur.execute("SET session_replication_role = replica")  # no FK trigger per row: ids are valid by construction
        cur.execute(
            """
            INSERT INTO trackers_timeentry (organization_id, tracker_id, started_by_id, stopped_by_id, started_at,
                                            stopped_at, duration, notes)
            SELECT %(org)s, (%(trackers)s::bigint[])[1 + g %% 5], (%(users)s::bigint[])[1 + g %% 20],
                   (%(users)s::bigint[])[1 + g %% 20],
                   %(start)s::timestamptz + make_interval(secs => g * %(step)s),
                   %(start)s::timestamptz + make_interval(secs => g * %(step)s + 60 + g %% 3600),
                   make_interval(secs => 60 + g %% 3600),
                   CASE WHEN g %% 7 = 0 THEN 'review, notes ' || g ELSE '' END
            FROM generate_series(0, %(n)s - 1) g
            """, {"org": org.id, "trackers": [t.id for t in trackers], "users": [u.id for u in users],
                  "start": f"{YEAR_START.isoformat()} 00:00:00+00", "step": step, "n": entries})
        cur.execute("SET session_replication_role = origin")
        loaded = time.monotonic()
        for _, definition in indexes:
            cur.execute(definition)
        cur.execute("ANALYZE trackers_timeentry")
    return {"org": org, "requester": owner, "load_s": loaded - started, "index_s": time.monotonic() - loaded}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--format", choices=["csv", "xlsx"], default="csv")
    ap.add_argument("--kind", choices=["time_entries", "member_hours"], default="time_entries")
    ap.add_argument("--days", type=int, default=None, help="range length in days from 2025-01-01 (default: the "
                    "whole seeded year, every row)")
    ap.add_argument("--db-name", default="herald_bench_reports")
    ap.add_argument("--reuse", action="store_true", help="keep an already seeded database")
    ap.add_argument("--seed-only", action="store_true", help="seed, print how long it took, and stop")
    args = ap.parse_args()
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald")
    if args.reuse:
        from urllib.parse import urlparse, urlunparse

        os.environ["DATABASE_URL"] = urlunparse(urlparse(base)._replace(path=f"/{args.db_name}"))
        os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.local"
        os.environ["DEBUG"] = "false"
    else:
        setup_database(args, base)
    media = tempfile.mkdtemp(prefix="herald-bench-reports-")
    os.environ["MEDIA_ROOT"] = media
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from organizations.models import Organization, User
    from reports import services
    from reports.models import ReportJob

    assert not settings.DEBUG, "benchmarks run with DEBUG off"
    if not args.reuse:
        call_command("migrate", verbosity=0)
        print(f"seeding {args.entries:,} time entries ...", flush=True)
        seeded = seed(args.entries)
        print(f"seed: load {seeded['load_s']:.1f} s, indexes + analyze {seeded['index_s']:.1f} s", flush=True)
        if args.seed_only:
            return 0
    org = Organization.objects.get(name="Bench reports")
    requester = User.objects.get(username="bench-owner")
    with connection.cursor() as cur:
        cur.execute("SELECT count(*), pg_size_pretty(pg_total_relation_size('trackers_timeentry')) "
                    "FROM trackers_timeentry WHERE organization_id = %s", [org.id])
        total, size = cur.fetchone()
    days = args.days or 366
    date_from, date_to = YEAR_START, YEAR_START + dt.timedelta(days=days - 1)
    ReportJob.objects.filter(status__in=ReportJob.ACTIVE).update(status="cancelled")
    job, _ = services.report_job_request(organization=org, requester=requester, kind=args.kind, format=args.format,
                                         date_from=date_from, date_to=date_to)
    connection.close()
    before = rss_mb()
    sampler = RssSampler()
    sampler.start()
    started = time.monotonic()
    result = services.report_job_run(job_id=job.id)
    elapsed = time.monotonic() - started
    peak = sampler.stop()
    high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    job.refresh_from_db()
    print(f"table: {total:,} entries ({size}); report {args.kind}.{args.format} {date_from}..{date_to}")
    print(f"job: {result.kind} status={job.status} rows={job.rows:,} file={job.file_size / 2**20:.1f} MiB "
          f"error={job.error!r}")
    print(f"time: {elapsed:.1f} s  rows/s: {job.rows / elapsed:,.0f}")
    print(f"memory: RSS before {before:.0f} MiB, peak during {peak:.0f} MiB (+{peak - before:.0f} MiB), "
          f"kernel high-water {high_water:.0f} MiB")
    print(f"settings: REPORT_CHUNK_ROWS={settings.REPORT_CHUNK_ROWS} (box shared with other engineers' runs)")
    from django.core.files.storage import default_storage

    default_storage.delete(job.file)
    return 0 if job.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
