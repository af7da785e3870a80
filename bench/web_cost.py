"""Benchmark: CPU per request of the web tier's hot endpoints, in process (issues 10, 12, 13).

Calls the ASGI application the web processes serve (`config.asgi.application`: admission control,
Django's ASGI handler, every middleware, DRF, the views, their sync-to-async thread hop) directly
from an event loop, one request at a time, under config.settings.production (DEBUG off) with the
connection pool the web processes use (DB_POOL), on a database of its own. No HTTP server: what it
measures is Herald's own code per request (the HTTP server's share comes on top; see
docs/benchmarks.md). Prints, per endpoint, CPU ms per request (time.process_time of this process:
every thread), wall ms per request and SQL statements per request; `--profile` adds a py-spy
profile of the run (the functions with the most samples, inclusive).

Endpoints: `start_stop` (POST /api/v1/trackers/{id}/start then /stop, user token), `search_top`
(GET /api/v1/orgs/{id}/search/top, user token), `send` (POST /api/v1/send, 10 recipients, org API
key, Idempotency-Key), `me` (GET /api/v1/me), `healthz`.

`--http`: the same requests over HTTP instead, to the web tier started with the Procfile's `web:`
line (the same command, so a change of server is measured as it is), from `--clients` keep-alive
connections each sending its requests one after the other; CPU is then that of the web process
tree (user + system from /proc, before and after) per request, the HTTP server's share included
(admission control's queue deadline off, so that no refusal is averaged in), and that of the Postgres
backends serving the benchmark's database (`PG CPU`: the web's pooled connections; the server's
background processes, WAL writer included, are not counted).

    .venv/bin/python -m config.backing run -- .venv/bin/python bench/web_cost.py
    .venv/bin/python -m config.backing run -- .venv/bin/python bench/web_cost.py --requests 2000 --only start_stop
    .venv/bin/python -m config.backing run -- .venv/bin/python bench/web_cost.py --profile
    .venv/bin/python -m config.backing run -- .venv/bin/python bench/web_cost.py --only send --repeat 3
    .venv/bin/python -m config.backing run -- .venv/bin/python bench/web_cost.py --http --clients 8
"""
import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import setup_database, wait_http  # noqa: E402

FERNET_KEY = "YmVuY2gtd2ViLWNvc3QtYmVuY2gtd2ViLWNvc3QtYmU="
ENDPOINTS = ("start_stop", "search_top", "send", "me", "healthz")


class Statements:
    """SQL statements executed by any connection of this process (an execute wrapper installed on
    each connection as it connects)."""

    count = 0
    seen: Counter | None = None  # --sql: statement text (whitespace folded) -> executions

    @classmethod
    def wrapper(cls, execute, sql, params, many, context):
        cls.count += 1
        if cls.seen is not None:
            cls.seen[re.sub(r"\s+", " ", str(sql)).strip()] += 1
        return execute(sql, params, many, context)

    @classmethod
    def install(cls) -> None:
        from django.db.backends.signals import connection_created

        def on_connect(sender, connection, **kwargs):
            if not getattr(connection, "_bench_counted", False):
                connection.execute_wrappers.append(cls.wrapper)
                connection._bench_counted = True

        connection_created.connect(on_connect, weak=False)


def seed(users: int) -> dict:
    from django.utils import timezone

    from notifications.templating import template_create
    from organizations import services
    from organizations.models import ApiKeyScope, Membership, User, UserToken
    from reports.search import top
    from reports.search.models import SearchLog
    from trackers.models import Tracker

    owner = User.objects.create_user(username="cost-owner", email="owner@cost.test", password="x")
    org = services.organization_create(creator=owner, name="Cost bench")
    other = services.organization_create(creator=owner, name="Cost bench other")
    people = User.objects.bulk_create([User(username=f"cost-{i}", email=f"c{i}@cost.test") for i in range(users)])
    Membership.objects.bulk_create([Membership(organization=org, user=u, role="member") for u in people])
    tokens = [services.user_token_create(user=u) for u in people]
    UserToken.objects.update(last_used_at=timezone.now())  # a first use writes it: not what is measured
    trackers = Tracker.objects.bulk_create([Tracker(organization=org, name=f"t{i}") for i in range(users)])
    _, key = services.api_key_create(organization=org, name="cost", created_by=None,
                                     scopes=[ApiKeyScope.NOTIFICATIONS_SEND])
    template_create(organization=org, kind="bench", locale="en", category="transactional",
                    parts={"inapp": {"title": "{{ title }}", "body": "{{ body }}"}}, variables=["title", "body"])
    SearchLog.objects.bulk_create([SearchLog(organization_id=org.id, query=f"q{i % 15}") for i in range(300)])
    top.search_top_refresh()
    return {"org": org.id, "other": other.id, "tokens": tokens, "trackers": [t.id for t in trackers],
            "key": key, "members": [u.id for u in people]}


async def call(app, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
             + ([(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                if body else []),
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000)}
    sent = False
    status, chunks = 0, []

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def requests_for(name: str, seeded: dict, n: int):
    """n (method, path, headers, body, expected status) tuples for an endpoint."""
    tokens, trackers = seeded["tokens"], seeded["trackers"]
    out = []
    for i in range(n):
        u = (i // 2) % len(tokens)
        auth = {"authorization": f"Token {tokens[u]}"}
        if name == "start_stop":
            action = "start" if i % 2 == 0 else "stop"
            out.append(("POST", f"/api/v1/trackers/{trackers[u]}/{action}", auth, b"", 200))
        elif name == "search_top":
            out.append(("GET", f"/api/v1/orgs/{seeded['org']}/search/top", auth, b"", 200))
        elif name == "send":
            members = seeded["members"]
            start = (i * 10) % max(1, len(members) - 10)
            body = json.dumps({"recipients": members[start:start + 10], "kind": "bench",
                               "data": {"title": f"n{i}", "body": "b"}}).encode()
            out.append(("POST", "/api/v1/send", {"authorization": f"Bearer {seeded['key']}",
                                                 "idempotency-key": uuid.uuid4().hex}, body, 202))
        elif name == "me":
            out.append(("GET", "/api/v1/me", auth, b"", 200))
        else:
            out.append(("GET", "/healthz", {}, b"", 200))
    return out


async def run(app, batch) -> tuple[float, float, int, Counter]:
    statuses: Counter = Counter()
    q0, c0, w0 = Statements.count, time.process_time(), time.perf_counter()
    for method, path, headers, body, expected in batch:
        status, payload = await call(app, method, path, headers, body)
        statuses[status] += 1
        if status != expected and statuses[status] == 1:
            print(f"  unexpected {status} for {method} {path}: {payload[:300]!r}")
    return time.process_time() - c0, time.perf_counter() - w0, Statements.count - q0, statuses


def web_command() -> str:
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("no web: line in the Procfile")


def tree_cpu(pid: int) -> float:
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for p in [root] + root.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class BackendCpu:
    """CPU of the Postgres backends serving this benchmark's database (the web's pooled connections;
    the server's background processes, WAL writer included, are not counted), from /proc."""

    def __init__(self):
        self.seen: dict[int, float] = {}

    @staticmethod
    def _pids() -> list[int]:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid()")
            return [row[0] for row in cursor.fetchall()]

    @staticmethod
    def _cpu(pid: int) -> float | None:
        import psutil

        try:
            t = psutil.Process(pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return None

    def start(self) -> None:
        self.seen = {pid: cpu for pid in self._pids() if (cpu := self._cpu(pid)) is not None}

    def stop(self) -> float:
        total = 0.0
        for pid in set(self._pids()) | set(self.seen):
            cpu = self._cpu(pid)
            if cpu is not None:
                total += cpu - self.seen.get(pid, 0.0)  # a backend started meanwhile counts from zero
        return total


async def http_run(port: int, batch, clients: int, users: int) -> tuple[float, Counter]:
    """Send `batch` over `clients` keep-alive connections, each one request at a time; wall s, statuses.
    A user's requests (a start and its stop) always go through the same connection, in order."""
    statuses: Counter = Counter()
    shares = [[b for j, b in enumerate(batch) if ((j // 2) % users) % clients == i] for i in range(clients)]

    async def client(share):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for method, path, headers, body, expected in share:
            head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items())
            if body:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write((head + "\r\n").encode() + body)
            answer = await reader.readuntil(b"\r\n\r\n")
            status = int(answer.split(b" ", 2)[1])
            length = re.search(rb"(?i)content-length:\s*(\d+)", answer)
            if length is not None:
                payload = await reader.readexactly(int(length.group(1)))
            else:  # chunked (a response no middleware gave a length)
                payload = b""
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    payload += (await reader.readexactly(size + 2))[:-2]
                await reader.readuntil(b"\r\n")
            statuses[status] += 1
            if status != expected and statuses[status] == 1:
                print(f"  unexpected {status} for {method} {path}: {payload[:300]!r}")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(share) for share in shares if share))
    return time.perf_counter() - started, statuses


def summarize_profile(raw: Path, top: int = 25) -> list[str]:
    """py-spy raw (collapsed) output -> the frames with the most samples, inclusive, idle dropped."""
    inclusive: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any(w in frames[-1] for w in ("select (selectors", "_worker (concurrent/futures", "wait (threading",
                                            "_run_once (asyncio", "epoll")):
            continue  # idle
        total += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    lines = [f"{total} busy samples"]
    for frame, count in inclusive.most_common(top):
        lines.append(f"{100 * count / max(1, total):5.1f}%  {frame[:150]}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per endpoint")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--only", action="append", choices=ENDPOINTS)
    parser.add_argument("--repeat", type=int, default=1, help="measured runs per endpoint (one line each)")
    parser.add_argument("--profile", action="store_true", help="py-spy record this process during the runs")
    parser.add_argument("--db-name", default="herald_bench_web_cost")
    parser.add_argument("--http", action="store_true", help="over HTTP to the Procfile's web line")
    parser.add_argument("--clients", type=int, default=8, help="--http: keep-alive connections")
    parser.add_argument("--web-processes", type=int, default=1, help="--http: WEB_PROCESSES")
    parser.add_argument("--sql", action="store_true",
                        help="in process: list each endpoint's statements with their executions per request")
    args = parser.parse_args()

    db_url = setup_database(args, os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald"))
    os.environ.update(DATABASE_URL=db_url, DJANGO_SETTINGS_MODULE="config.settings.production",
                      SECRET_KEY="bench-secret-key-" + "x" * 40, HERALD_ENCRYPTION_KEYS=FERNET_KEY,
                      HERALD_BASE_URL="http://127.0.0.1:8000", ALLOWED_HOSTS="127.0.0.1",
                      SECURE_SSL_REDIRECT="false", SECURE_COOKIES="false", DB_POOL="true", LOG_LEVEL="WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import redis
    from django.conf import settings
    from django.db import connection

    from notifications.ratelimit import RateLimiter

    redis_client = redis.Redis.from_url(settings.REDIS_URL)
    redis_client.flushdb()
    RateLimiter(redis_client).start_fresh()
    seeded = seed(args.users)
    connection.close()
    Statements.install()
    if not args.http:
        from config.asgi import application  # noqa: F401 (imported here: --http must not load it)

    if args.http:
        return http_main(args, seeded, redis_client)
    spy, raw = None, Path(tempfile.mkdtemp(prefix="bench-web-cost-")) / "web_cost.txt"
    if args.profile:
        py_spy = Path(sys.executable).parent / "py-spy"
        spy = subprocess.Popen([str(py_spy) if py_spy.exists() else "py-spy", "record", "-r", "200", "--format",
                                "raw", "-o", str(raw), "-p", str(os.getpid())],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(1)
    load = os.getloadavg()
    print(f"{args.requests} requests per endpoint, one at a time, in process (config.asgi.application, "
          f"production settings, DB_POOL); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'endpoint':<12} {'CPU ms/req':>10} {'wall ms/req':>11} {'SQL/req':>8}  statuses")
    for name in args.only or ENDPOINTS:
        asyncio.run(run(application, requests_for(name, seeded, args.warmup)))
        for _ in range(max(1, args.repeat)):
            Statements.seen = Counter() if args.sql else None
            cpu, wall, statements, statuses = asyncio.run(run(application, requests_for(name, seeded, args.requests)))
            n = args.requests
            print(f"{name:<12} {1e3 * cpu / n:>10.2f} {1e3 * wall / n:>11.2f} {statements / n:>8.1f}  "
                  f"{dict(statuses)}", flush=True)
            for sql, times in (Statements.seen or Counter()).most_common():
                print(f"    {times / n:5.2f}  {sql[:160]}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        spy.wait(timeout=60)
        print(f"py-spy profile ({raw}):")
        print("\n".join(summarize_profile(raw)))
    redis_client.flushdb()
    return 0


def http_main(args, seeded, redis_client) -> int:
    from django.conf import settings

    from tests.support.stack import free_port

    port = free_port()
    # The queue deadline off (WEB_MAX_QUEUE_SECONDS=0): on a loaded box it refuses some requests at
    # the door, and a refusal's near-zero cost would be averaged into the figure.
    env = dict(os.environ, HERALD_PORT=str(port), WEB_PROCESSES=str(args.web_processes), WEB_VERBOSITY="0",
               WEB_MAX_QUEUE_SECONDS="0",
               HERALD_BASE_URL=f"http://127.0.0.1:{port}",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(REPO / ".venv"))
    command = web_command()
    log = open(Path(tempfile.mkdtemp(prefix="bench-web-cost-")) / "web.log", "wb")
    web = subprocess.Popen(["sh", "-c", f"exec {command}"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=90)
        load = os.getloadavg()
        print(f"{args.requests} requests per endpoint over HTTP from {args.clients} keep-alive connections to "
              f"`{command}` (WEB_PROCESSES={args.web_processes}, production settings); "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        options = settings.DATABASES["default"]["OPTIONS"]
        print(f"server-side binding: {bool(options.get('server_side_binding'))}, "
              f"prepare_threshold: {options.get('prepare_threshold')}")
        print(f"{'endpoint':<12} {'web CPU ms/req':>14} {'PG CPU ms/req':>13} {'req/s':>7}  statuses")
        backends = BackendCpu()
        for name in args.only or ENDPOINTS:
            asyncio.run(http_run(port, requests_for(name, seeded, args.warmup), args.clients, args.users))
            for _ in range(max(1, args.repeat)):
                backends.start()
                cpu0 = tree_cpu(web.pid)
                wall, statuses = asyncio.run(http_run(port, requests_for(name, seeded, args.requests), args.clients,
                                                      args.users))
                cpu = tree_cpu(web.pid) - cpu0
                pg = backends.stop()
                print(f"{name:<12} {1e3 * cpu / args.requests:>14.2f} {1e3 * pg / args.requests:>13.2f} "
                      f"{args.requests / wall:>7.0f}  {dict(statuses)}", flush=True)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        try:
            web.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
    redis_client.flushdb()
    return 0


if __name__ == "__main__":
    sys.exit(main())
