"""Benchmark: GET /api/v1/orgs/{id}/search/top at a fixed offered rate while the hourly refresh runs
(issue 10, item 2).

Seeds a database of its own (ORGS organizations with members and user tokens, LOG_ROWS searches in
the last hour), starts the web tier exactly as the Procfile's `web:` line does (the same command,
so a change to how HTTP is served is measured as it is), under config.settings.production (DEBUG
off), and offers RATE requests/s for DURATION seconds from an open-loop generator on loopback
(keep-alive connections; each latency counts from the request's scheduled time, so a stalled server
cannot hide its queue). During the window the refresh (reports.search.top.search_top_refresh, what
beat's task runs) is triggered every REFRESH_EVERY seconds. Prints p50/p95/p99/max, statuses, the
achieved rate, and CPU per request of the web processes and of the bench database's Postgres
backends (Redis CPU is for the whole shared server).

    .venv/bin/python -m config.backing run -- .venv/bin/python bench/search_top.py
    .venv/bin/python -m config.backing run -- .venv/bin/python bench/search_top.py --rate 400 --duration 20
"""
import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import pct, setup_database, wait_http  # noqa: E402
from tests.support.stack import free_port  # noqa: E402

FERNET_KEY = "YmVuY2gtc2VhcmNoLXRvcC1iZW5jaC1zZWFyY2gtdG8="


def seed(*, orgs: int, users: int, log_rows: int) -> list[tuple[str, int]]:
    """(token, organization id) pairs for the generator; LOG_ROWS searches in the last hour."""
    from django.db import connection

    from organizations import services
    from django.utils import timezone

    from organizations.models import Membership, Organization, User, UserToken

    owner = User.objects.create_user(username="bench-owner", email="owner@bench.test", password="x")
    created = [services.organization_create(creator=owner, name=f"Bench {i}") for i in range(orgs)]
    people = User.objects.bulk_create([User(username=f"bench-{i}", email=f"u{i}@bench.test") for i in range(users)])
    Membership.objects.bulk_create([Membership(organization=created[i % orgs], user=u, role="member")
                                    for i, u in enumerate(people)])
    pairs = [(services.user_token_create(user=u), created[i % orgs].id) for i, u in enumerate(people)]
    UserToken.objects.update(last_used_at=timezone.now())  # a first use writes it: not what is measured
    words = ["invoice", "payroll", "budget", "design review", "onboarding", "release", "incident", "roadmap",
             "hiring", "billing", "migration", "security audit", "offsite", "retro", "q3 planning"]
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO reports_searchlog (organization_id, user_id, query, created_at)
            SELECT o.ids[1 + (g %% array_length(o.ids, 1))], NULL,
                   (%s::text[])[1 + floor(power(random(), 2) * %s)::int] || ' ' || (g %% 40),
                   now() - random() * interval '59 minutes'
            FROM generate_series(1, %s) g, (SELECT array_agg(id) AS ids FROM organizations_organization) o
        """, [words, len(words), log_rows])
        cursor.execute("ANALYZE reports_searchlog")
    assert Organization.objects.count() == orgs
    return pairs


def web_command(port: int, processes: int) -> str:
    """The Procfile's web line, with its ${VAR:-default} expansions left to the shell."""
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("no web: line in the Procfile")


class Refresher(threading.Thread):
    """Runs the refresh every `every` seconds (as beat's task does), timing each run."""

    def __init__(self, every: float):
        super().__init__(daemon=True)
        self.every, self.runs, self.stop_event = every, [], threading.Event()

    def run(self) -> None:
        from django.db import connection

        from reports.search import top

        while not self.stop_event.wait(self.every):
            start = time.monotonic()
            result = top.search_top_refresh()
            self.runs.append((start, time.monotonic() - start, result))
        connection.close()


class Generator:
    """Open loop: request i is due at t0 + i/rate; it takes an idle keep-alive connection or opens
    one (at most max_connections); its latency counts from when it was due."""

    def __init__(self, port: int, pairs: list[tuple[str, int]], max_connections: int = 512):
        self.port, self.pairs, self.max_connections = port, pairs, max_connections
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.available = asyncio.Condition()
        self.results: list[tuple[float, float, int]] = []  # (due, latency, status)

    async def _connection(self):
        async with self.available:
            while not self.idle and self.open >= self.max_connections:
                await self.available.wait()
            if self.idle:
                return self.idle.pop()
            self.open += 1
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def _release(self, conn, ok: bool) -> None:
        async with self.available:
            if ok:
                self.idle.append(conn)
            else:
                self.open -= 1
                conn[1].close()
            self.available.notify()

    async def one(self, due: float, token: str, org_id: int) -> None:
        status, conn = 0, None
        try:
            conn = await self._connection()
            reader, writer = conn
            writer.write(f"GET /api/v1/orgs/{org_id}/search/top HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Authorization: Token {token}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            ok = b"connection: close" not in head.lower()
        except (OSError, asyncio.IncompleteReadError, AttributeError, ValueError):
            ok = False
        self.results.append((due, time.monotonic() - due, status))
        if conn is not None:
            await self._release(conn, ok)

    async def run(self, rate: float, duration: float) -> float:
        tasks, start = [], time.monotonic()
        total = int(rate * duration)
        for i in range(total):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            token, org_id = random.choice(self.pairs)
            tasks.append(asyncio.create_task(self.one(due, token, org_id)))
        await asyncio.gather(*tasks)
        return time.monotonic() - start


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root] + root.children(recursive=True)


def db_backends(db_name: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("postgres:") and f" {db_name} " in cmd:
            found.append(p)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--refresh-every", type=float, default=5.0)
    parser.add_argument("--orgs", type=int, default=200)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--log-rows", type=int, default=300_000)
    parser.add_argument("--web-processes", type=int, default=int(os.environ.get("WEB_PROCESSES", "2")))
    parser.add_argument("--db-name", default="herald_bench_search_top")
    parser.add_argument("--profile", action="store_true", help="py-spy record the web processes (needs py-spy)")
    args = parser.parse_args()

    db_url = setup_database(args, os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald"))
    port = free_port()
    env = dict(os.environ, DATABASE_URL=db_url, DJANGO_SETTINGS_MODULE="config.settings.production",
               SECRET_KEY="bench-secret-key-" + "x" * 40, HERALD_ENCRYPTION_KEYS=FERNET_KEY,
               HERALD_BASE_URL=f"http://127.0.0.1:{port}", ALLOWED_HOSTS="127.0.0.1",
               SECURE_SSL_REDIRECT="false", SECURE_COOKIES="false", HERALD_PORT=str(port),
               WEB_PROCESSES=str(args.web_processes), WEB_VERBOSITY="0", LOG_LEVEL="WARNING",
               # as `make run` does: the Procfile's `python` is the virtualenv's
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(REPO / ".venv"))
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import redis
    from django.conf import settings

    from notifications.ratelimit import RateLimiter
    from reports.search import top

    redis_client = redis.Redis.from_url(settings.REDIS_URL)
    redis_client.flushdb()
    RateLimiter(redis_client).start_fresh()
    t = time.monotonic()
    pairs = seed(orgs=args.orgs, users=args.users, log_rows=args.log_rows)
    first = top.search_top_refresh()
    print(f"seeded {args.orgs} orgs, {args.users} members with tokens, {args.log_rows} searches in the last hour "
          f"({time.monotonic() - t:.1f} s); first refresh: {first['rows']} top rows")

    logdir = Path(tempfile.mkdtemp(prefix="bench-search-top-"))
    command = web_command(port, args.web_processes)
    log = open(logdir / "web.log", "wb")
    web = subprocess.Popen(["sh", "-c", f"exec {command}"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    print(f"web: `{command}` (Procfile) with WEB_PROCESSES={args.web_processes}, production settings, port {port}")
    spy = None
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=90)
        generator = Generator(port, pairs)
        asyncio.run(generator.run(rate=min(args.rate, 50), duration=args.warmup))  # pools, caches
        generator = Generator(port, pairs)  # connections belong to the loop that opened them
        web_procs, pg_procs = tree(web.pid), db_backends(args.db_name)
        if args.profile:
            spy = subprocess.Popen(["py-spy", "record", "-o", str(logdir / "web.svg"), "-d", str(int(args.duration)),
                                    "-p", str(web_procs[-1].pid), "-s"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.STDOUT)
        info0 = redis_client.info("cpu")
        web0, pg0, self0 = cpu_seconds(web_procs), cpu_seconds(pg_procs), cpu_seconds([psutil.Process()])
        refresher = Refresher(args.refresh_every)
        refresher.start()
        elapsed = asyncio.run(generator.run(rate=args.rate, duration=args.duration))
        refresher.stop_event.set()
        refresher.join()
        pg_procs = list({p.pid: p for p in pg_procs + db_backends(args.db_name)}.values())
        web1, pg1, self1 = cpu_seconds(web_procs), cpu_seconds(pg_procs), cpu_seconds([psutil.Process()])
        info1 = redis_client.info("cpu")
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        try:
            web.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
        if spy is not None:
            spy.wait(timeout=60)

    results = generator.results
    latencies = [lat * 1000 for _, lat, status in results]
    ok = [lat * 1000 for _, lat, status in results if status == 200]
    statuses: dict[int, int] = {}
    for _, _, status in results:
        statuses[status] = statuses.get(status, 0) + 1
    windows = [(s, s + d) for s, d, _ in refresher.runs]
    during = [lat * 1000 for due, lat, status in results if any(a <= due <= b for a, b in windows)]
    n = len(results)
    redis_cpu = (info1["used_cpu_user"] + info1["used_cpu_sys"]) - (info0["used_cpu_user"] + info0["used_cpu_sys"])
    print(f"offered {args.rate:.0f} req/s for {args.duration:.0f} s: {n} requests in {elapsed:.1f} s "
          f"({n / elapsed:.0f} req/s answered), statuses {json.dumps(statuses)}")
    print(f"latency ms (all): p50 {pct(latencies, 50):.1f}  p95 {pct(latencies, 95):.1f}  "
          f"p99 {pct(latencies, 99):.1f}  max {max(latencies):.1f}")
    if during:
        print(f"latency ms (due while a refresh ran, {len(during)} requests): p50 {pct(during, 50):.1f}  "
              f"p95 {pct(during, 95):.1f}  p99 {pct(during, 99):.1f}")
    print("refreshes: " + ", ".join(f"{d * 1000:.0f} ms ({r.get('rows', 0)} rows)" for _, d, r in refresher.runs))
    print(f"CPU per request: web {1e3 * (web1 - web0) / n:.2f} ms ({len(web_procs)} processes), "
          f"Postgres backends of the bench db {1e3 * (pg1 - pg0) / n:.2f} ms (refreshes included), "
          f"load generator {1e3 * (self1 - self0) / n:.2f} ms (refresher included), "
          f"Redis {1e3 * redis_cpu / n:.2f} ms (whole shared server)")
    print(f"box: {psutil.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; logs in {logdir}")
    if ok and len(ok) < n:
        print(f"non-200 answers: {n - len(ok)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
