"""Benchmark: capacity of the whole stack and CPU per event, as operators run it (issue 12).

Starts every Procfile process under the production settings (DEBUG off, HTTPS redirect off for
plain-HTTP loopback) on a database of its own and a private redis-server (so Redis's CPU is ours
alone), a Slack stand-in, then seeds N organizations x M members (a tracker and Slack each),
connects WebSocket clients for the members, drives start/stop through the REST API at a target
rate and prints: accepted/s, the answers by status, API p50/p95/p99, event -> WebSocket
p50/p95/p99, lost and order violations, CPU seconds per process group over the measured window
(load start until every accepted event reached every socket) and CPU ms per accepted event, plus
pgbench's single-row insert ceiling and events/s per pgbench TPS.

    .venv/bin/python bench/capacity.py                       # 100 orgs x 5, 100 events/s, 30 s
    .venv/bin/python bench/capacity.py --preset 1000x10 --rate 500 --duration 60
    .venv/bin/python bench/capacity.py --overload 2 --rate 100   # offer 2 x 100/s: counts 429/503
    .venv/bin/python bench/capacity.py --preset 1000x10 --total-orgs 1000000   # 1,000 active of a million

Postgres is the shared local server: its CPU is the backends connected to the bench database
(pg_stat_activity), the server's own background processes are printed apart. Run with the
environment's DATABASE_URL (any database on the server; the bench creates `--db-name`).
"""
import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import aiohttp
import httpx
import psutil
import psycopg
import redis
import websockets

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import analyse_slack, pct, pgbench_ceiling, setup_database, wait_http, wait_log  # noqa: E402

GROUPS = ["web", "partition workers", "provider worker", "beat", "default+reports workers", "supervisors",
          "postgres (bench backends)", "redis"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def procfile_entries() -> list[tuple[str, str]]:
    entries = []
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            name, _, command = line.partition(":")
            entries.append((name.strip(), command.strip()))
    return entries


def live_socket_base(web_log: Path, web_port: int) -> str:
    """Where the web tier serves /ws/: the address config.serve prints ("live sockets at ws://...");
    the web port when the log does not say."""
    found = re.search(r"live sockets at (ws://[^/\s]+)", web_log.read_text(errors="replace"))
    return found.group(1) if found else f"ws://127.0.0.1:{web_port}"


def start_redis(tmp: Path) -> tuple[subprocess.Popen, int]:
    """A private redis-server on a free port, returned once it answers PING."""
    server = shutil.which("redis-server", path="/usr/bin:/usr/local/bin") or shutil.which("redis-server")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc, port


def stack_env(args, db_url: str, redis_url: str, web_port: int, slack_port: int, prom_dir: str) -> dict:
    env = dict(os.environ)
    base = f"http://127.0.0.1:{web_port}"
    env.update({
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DEBUG": "false",
        "SECRET_KEY": "bench-" + "x" * 50,
        "HERALD_BASE_URL": base,
        "WS_ALLOWED_ORIGINS": base,
        "SECURE_SSL_REDIRECT": "false",  # loopback HTTP; a TLS proxy does this in production
        "SECURE_COOKIES": "false",
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "CELERY_LOG_LEVEL": "INFO",  # the workers' "ready" line
        "LOG_FORMAT": "console",
        "SLACK_API_URL": f"http://127.0.0.1:{slack_port}/api/",
        "SLACK_GLOBAL_PER_MINUTE": str(args.slack_global_per_minute),
        "PROMETHEUS_MULTIPROC_DIR": prom_dir,
        "HERALD_PORT": str(web_port),
        "WEB_VERBOSITY": "0",
        "PATH": f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(REPO / ".venv"),
    })
    if args.web_processes:
        env["WEB_PROCESSES"] = str(args.web_processes)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


# --- CPU accounting -----------------------------------------------------------------------------

def _cpu(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def classify(roots: dict[str, int], redis_pid: int, pg_pids: set[int]) -> dict[int, str]:
    """pid -> group for every live process of the stack."""
    groups: dict[int, str] = {}
    for name, pid in roots.items():
        try:
            root = psutil.Process(pid)
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for p in tree:
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if "config.supervise" in cmd or "run_partition_workers" in cmd or "config.serve" in cmd \
                    or cmd.startswith("sh -c") or cmd.startswith("/bin/sh -c"):
                groups[p.pid] = "supervisors"
            elif name == "web":
                groups[p.pid] = "web"
            elif name == "orgs":
                groups[p.pid] = "partition workers"
            elif name == "providers":
                groups[p.pid] = "provider worker"
            elif name == "beat":
                groups[p.pid] = "beat"
            else:
                groups[p.pid] = "default+reports workers"
    groups[redis_pid] = "redis"
    for pid in pg_pids:
        groups[pid] = "postgres (bench backends)"
    return groups


def pg_backend_pids(db_url: str, db_name: str) -> set[int]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                            [db_name]).fetchall()
    return {r[0] for r in rows}


def pg_aux_pids(db_url: str) -> set[int]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'").fetchall()
    return {r[0] for r in rows}


class CpuMeter:
    """CPU seconds per group between start() and stop(); processes that appear meanwhile count
    from zero (their whole life is inside the window)."""

    def __init__(self, roots, redis_pid, db_url, db_name):
        self.roots, self.redis_pid, self.db_url, self.db_name = roots, redis_pid, db_url, db_name
        self.extra_load_pids: list[int] = []  # the WebSocket listener process

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        groups = classify(self.roots, self.redis_pid, pg_backend_pids(self.db_url, self.db_name))
        for pid in pg_aux_pids(self.db_url):
            groups.setdefault(pid, "postgres (server background, shared)")
        snap = {}
        for pid, group in groups.items():
            try:
                snap[pid] = (group, _cpu(psutil.Process(pid)))
            except psutil.Error:
                pass
        me = psutil.Process()
        snap[me.pid] = ("load generator", _cpu(me))
        for pid in self.extra_load_pids:
            try:
                snap[pid] = ("load generator", _cpu(psutil.Process(pid)))
            except psutil.Error:
                pass
        return snap

    def start(self):
        self.t0, self.before = time.monotonic(), self._snapshot()

    def sample(self):
        """Called during the run: remember processes seen (pool connections opened mid-run)."""
        now = self._snapshot()
        for pid, (group, cpu) in now.items():
            self.before.setdefault(pid, (group, 0.0))

    def stop(self) -> tuple[dict[str, float], float]:
        after = self._snapshot()
        self.seconds = time.monotonic() - self.t0
        totals: dict[str, float] = defaultdict(float)
        for pid, (group, cpu) in after.items():
            start = self.before.get(pid, (group, 0.0))[1]
            totals[group] += max(0.0, cpu - start)
        return totals, self.seconds


# --- load ---------------------------------------------------------------------------------------

def listener_main(conn, web: str, ws_base: str, pairs: list[tuple[int, int, str]]) -> None:
    """Child process: open a WebSocket per (org, user, token), record every tracker.event's seq and
    arrival time; answer ("missing", expected max seq per org) with how many sockets lack their
    org's last seq, and ("stop",) with every receipt."""
    receipts: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
    state = {"dropped": 0, "stopping": False}

    async def listen(org_id, user_id, token, ready):
        for attempt in range(10):  # a loaded box may miss Daphne's 5 s connect timeout: retry
            try:
                ws = await websockets.connect(f"{ws_base}/ws/?token={token}", origin=web, open_timeout=60,
                                              max_queue=None, ping_interval=None)
                break
            except (TimeoutError, OSError, websockets.InvalidHandshake):
                await asyncio.sleep(0.5 + attempt)
        else:
            raise RuntimeError(f"websocket for user {user_id} did not connect")
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
        if not state["stopping"]:
            state["dropped"] += 1

    sockets: list = []

    async def main():
        sem = asyncio.Semaphore(16)
        tasks = []

        async def start(o, u, t):
            ready = asyncio.Event()
            async with sem:
                tasks.append(asyncio.create_task(listen(o, u, t, ready)))
                await asyncio.wait_for(ready.wait(), timeout=300)

        try:
            await asyncio.gather(*[start(o, u, t) for o, u, t in pairs])
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            conn.send(("failed", repr(exc)))
            return
        conn.send(("connected", len(tasks)))
        while True:
            message = await asyncio.to_thread(conn.recv)
            if message[0] == "missing":
                expected = message[1]
                missing = sum(1 for o, u, _ in pairs
                              if max((s for s, _ in receipts.get((o, u), [])), default=0) < expected.get(o, 0))
                conn.send(("missing", missing))
            else:
                state["stopping"] = True
                for ws in sockets:
                    await ws.close()
                await asyncio.gather(*tasks, return_exceptions=True)
                conn.send(("done", [(o, u, s, t) for (o, u), got in receipts.items() for s, t in got],
                           state["dropped"]))
                return

    asyncio.run(main())


async def run_load(args, seeded, web: str, ws_base: str, meter: CpuMeter, profiler=None):
    receipts: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
    accepted: dict[int, list[tuple[int, float]]] = defaultdict(list)
    statuses: Counter = Counter()
    api_latency: list[float] = []  # every answer
    ok_latency: list[float] = []  # 200s
    refused_latency: list[float] = []  # 429/503
    refused_without_retry_after = 0
    timeouts = transport_errors = 0

    by_org: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for org_id, user_id, token in seeded["tokens"]:
        by_org[org_id].append((user_id, token))

    listened = [(o, u) for o, members in by_org.items() for u, _ in members[: args.ws_per_org]]
    pairs = [(o, u, t) for o, members in by_org.items() for u, t in members[: args.ws_per_org]]
    # The sockets live in a process of their own: one event loop driving both the HTTP load and
    # thousands of sockets starved itself (late pongs read as server-side closes).
    parent_end, child_end = multiprocessing.get_context("spawn").Pipe()
    listener = multiprocessing.get_context("spawn").Process(
        target=listener_main, args=(child_end, web, ws_base, pairs), daemon=True)
    listener.start()
    meter.extra_load_pids.append(listener.pid)

    def ask(*message):
        parent_end.send(message)
        return parent_end.recv()

    reply = await asyncio.to_thread(parent_end.recv)
    if reply[0] != "connected":
        raise RuntimeError(f"websocket listeners failed: {reply}")
    listeners = range(reply[1])
    print(f"websocket clients connected: {len(listeners)}", flush=True)
    await asyncio.sleep(1)
    idle = {}
    if args.idle_seconds:
        meter.start()  # the stack with every socket open and no events: its fixed cost per second
        await asyncio.sleep(args.idle_seconds)
        idle_cpu, idle_window = meter.stop()
        idle = {g: v / idle_window for g, v in idle_cpu.items()}

    offered = args.rate * args.overload
    # aiohttp, not httpx: on this box httpx's client cost ~3.3 ms of CPU per request (its pool scans
    # every waiting request), aiohttp's ~0.16 ms (the load generator's own CPU limits
    # what the 2-core box can offer the stack).
    connector = aiohttp.TCPConnector(limit=args.clients, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(web, connector=connector, timeout=timeout) as client:
        running: dict[int, bool] = defaultdict(bool)
        inflight = asyncio.Semaphore(args.clients)
        per_org_rate = offered / len(by_org)
        meter.start()
        t_start = time.monotonic()
        t_end = t_start + args.duration
        if profiler:  # sample the loaded stack, not the socket connects or the idle phase before it
            profiler.start_later(min(5.0, args.duration / 4))

        async def drive(org_id: int):
            nonlocal timeouts, transport_errors, refused_without_retry_after
            tracker_id = seeded["trackers"][org_id]
            token = by_org[org_id][0][1]
            next_at = t_start + random.uniform(0, 1 / per_org_rate)
            while True:
                now = time.monotonic()
                if next_at > t_end or now > t_end:
                    return
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                action = "stop" if running[org_id] else "start"
                try:
                    # At most --clients requests inside the client: a pool that scans every waiting
                    # request (httpx's did) starved this process itself at 1,000 waiting drivers.
                    async with inflight:
                        sent = time.monotonic()
                        async with client.post(f"/api/v1/trackers/{tracker_id}/{action}",
                                               headers={"Authorization": f"Token {token}"}) as r:
                            code, body = r.status, await r.read()
                            retry_after = "retry-after" in r.headers
                except TimeoutError:
                    timeouts += 1
                    statuses["timeout"] += 1
                    next_at += 1 / per_org_rate
                    continue
                except aiohttp.ClientError:
                    transport_errors += 1
                    statuses["transport error"] += 1
                    next_at += 1 / per_org_rate
                    continue
                took = time.monotonic() - sent
                api_latency.append(took)
                statuses[code] += 1
                if code == 200:
                    ok_latency.append(took)
                    ev = json.loads(body)["event"]
                    accepted[org_id].append((ev["seq"], datetime.fromisoformat(ev["occurred_at"]).timestamp()))
                    running[org_id] = action == "start"
                elif code == 409:
                    running[org_id] = not running[org_id]
                elif code in (429, 503):
                    refused_latency.append(took)
                    if not retry_after:
                        refused_without_retry_after += 1
                next_at += random.expovariate(per_org_rate) if args.poisson else 1 / per_org_rate

        async def sampler():
            while time.monotonic() < t_end:
                await asyncio.sleep(5)
                await asyncio.to_thread(meter.sample)

        wall0 = time.time()
        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*[drive(o) for o in by_org])
        drive_seconds = time.monotonic() - t_start
        sampling.cancel()
    events = sum(len(v) for v in accepted.values())
    print(f"load done: {events} events accepted in {drive_seconds:.1f}s; waiting for delivery", flush=True)

    deadline = time.monotonic() + args.drain_timeout
    expected_max = {o: max((s for s, _ in v), default=0) for o, v in accepted.items()}
    while time.monotonic() < deadline:
        if not (await asyncio.to_thread(ask, "missing", expected_max))[1]:
            break
        await asyncio.sleep(0.25)
    drained_after = time.monotonic() - t_start - drive_seconds
    cpu, window = meter.stop()
    _, got, dropped = await asyncio.to_thread(ask, "stop")
    listener.join(timeout=30)
    for org_id, user_id, seq, t in got:
        receipts[(org_id, user_id)].append((seq, t))
    return {
        "receipts": receipts, "accepted": accepted, "dropped": dropped, "listened": listened, "statuses": statuses,
        "api_latency": api_latency, "ok_latency": ok_latency, "refused_latency": refused_latency,
        "refused_without_retry_after": refused_without_retry_after, "timeouts": timeouts,
        "drive_seconds": drive_seconds, "drained_after": drained_after, "cpu": cpu, "window": window,
        "wall0": wall0, "offered": offered, "idle": idle,
    }


def slack_collect(args, result, db_url: str, slack_port: int) -> dict:
    """Wait (up to --drain-timeout) until every organization's Slack stream has delivered its last
    accepted event, then read what the stand-in received (in its order) and its limit counters."""
    want = {o: max(s for s, _ in v) for o, v in result["accepted"].items() if v}
    started = time.monotonic()
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.monotonic() - started < args.drain_timeout:
            done = dict(conn.execute("SELECT organization_id, delivered_seq FROM notifications_deliverystream "
                                     "WHERE channel = 'slack'").fetchall())
            if all(done.get(o, 0) >= s for o, s in want.items()):
                break
            time.sleep(0.5)
    base = f"http://127.0.0.1:{slack_port}/_control"
    return {"stats": httpx.get(f"{base}/stats", timeout=30).json(),
            "messages": httpx.get(f"{base}/messages", timeout=120).json(),
            "waited": time.monotonic() - started}


def analyse_ws(result) -> dict:
    occurred = {(o, s): t for o, evs in result["accepted"].items() for s, t in evs}
    latencies, violations, lost, dups = [], 0, 0, 0
    for org_id, user_id in result["listened"]:
        got = result["receipts"].get((org_id, user_id), [])
        last = 0
        counts: Counter = Counter()
        first_seen = {}
        for s, t in got:
            if s < last:
                violations += 1
            last = max(last, s)
            counts[s] += 1
            first_seen.setdefault(s, t)
        dups += sum(c - 1 for c in counts.values() if c > 1)
        want = {s for s, _ in result["accepted"].get(org_id, [])}
        lost += len(want - set(counts))
        latencies += [first_seen[s] - occurred[(org_id, s)] for s in want & set(first_seen)]
    return {"latencies": latencies, "violations": violations, "lost": lost, "duplicates": dups}


def ms(values, p) -> str:
    v = pct(values, p)
    return "n/a" if v != v else f"{v * 1000:.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["100x5", "1000x10"], default="100x5", help="orgs x members")
    ap.add_argument("--orgs", type=int, help="overrides the preset")
    ap.add_argument("--members", type=int, help="overrides the preset")
    ap.add_argument("--total-orgs", type=int, default=0,
                    help="organizations in the database (the first --orgs active), e.g. 1000000")
    ap.add_argument("--inactive-members", type=int, default=1, help="members of each inactive organization")
    ap.add_argument("--rate", type=float, default=100, help="events/s (the capacity, with --overload)")
    ap.add_argument("--overload", type=float, default=1.0, help="offer this many times --rate")
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--clients", type=int, default=64, help="concurrent HTTP connections")
    ap.add_argument("--ws-per-org", type=int, default=0, help="WebSocket clients per org (default: every member)")
    ap.add_argument("--web-processes", type=int, default=0, help="WEB_PROCESSES (default: the Procfile's)")
    ap.add_argument("--request-timeout", type=float, default=10)
    ap.add_argument("--slack-global-per-minute", type=int, default=100000)
    ap.add_argument("--drain-timeout", type=float, default=60)
    ap.add_argument("--poisson", action="store_true")
    ap.add_argument("--no-pgbench", action="store_true")
    ap.add_argument("--idle-seconds", type=float, default=10,
                    help="measure the idle stack (sockets open, no events) this long first; 0 skips")
    ap.add_argument("--profile", type=float, default=0,
                    help="py-spy record this many seconds of every stack process (pool children included), "
                         "from 5 s into the load")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the stack (repeatable)")
    ap.add_argument("--db-name", default="herald_capacity")
    ap.add_argument("--keep-logs", action="store_true")
    args = ap.parse_args()
    orgs, members = (int(x) for x in args.preset.split("x"))
    args.orgs, args.members = args.orgs or orgs, args.members or members
    args.ws_per_org = args.ws_per_org or args.members

    tmp = Path(tempfile.mkdtemp(prefix="herald-capacity-"))
    redis_proc, redis_port = start_redis(tmp)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    os.environ["REDIS_URL"] = redis_url
    from cryptography.fernet import Fernet

    os.environ.setdefault("HERALD_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald")
    db_url = setup_database(args, base_db)
    procs: dict[str, subprocess.Popen] = {}
    slack_proc = None
    try:
        import django

        django.setup()
        import logging

        logging.getLogger("httpx").setLevel(logging.WARNING)  # wait_http, the stats endpoint
        from django.core.management import call_command
        from django.db import connection

        from notifications.ratelimit import RateLimiter

        client = redis.Redis.from_url(redis_url)
        RateLimiter(client).start_fresh()
        call_command("migrate", verbosity=0)
        from bench.seed import seed

        seeded = seed(active_orgs=args.orgs, members=args.members, total_orgs=max(args.orgs, args.total_orgs),
                      inactive_members=args.inactive_members if args.total_orgs > args.orgs else 0,
                      slack_token="xoxb-bench-token")
        print(f"seeded {seeded['orgs']} orgs / {seeded['users']} users in {seeded['seconds']}s", flush=True)
        connection.close()

        web_port, slack_port = free_port(), free_port()
        prom_dir = tmp / "prom"
        prom_dir.mkdir()
        env = stack_env(args, db_url, redis_url, web_port, slack_port, str(prom_dir))
        slack_proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fakeslack", "--port", str(slack_port), "--rate", "1",
             "--burst", "3", "--global-per-minute", str(args.slack_global_per_minute)], cwd=REPO, env=env,
            stdout=open(tmp / "slack.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        for name, command in procfile_entries():
            procs[name] = subprocess.Popen(["sh", "-c", command], cwd=REPO, env=env,
                                           stdout=open(tmp / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
                                           start_new_session=True)
        web = f"http://127.0.0.1:{web_port}"
        wait_http(f"{web}/healthz", timeout=90)
        wait_http(f"http://127.0.0.1:{slack_port}/_control/stats")
        for name in ("orgs", "providers"):
            wait_log(tmp / f"{name}.log", "ready", timeout=300)
        time.sleep(2)
        meter = CpuMeter({name: p.pid for name, p in procs.items()}, redis_proc.pid, db_url, args.db_name)
        profiler = None
        if args.profile:
            profiler = ProfileAll(meter, tmp / "profiles", args.profile)
        result = asyncio.run(run_load(args, seeded, web, live_socket_base(tmp / "web.log", web_port), meter,
                                      profiler))
        if profiler:
            profiler.join()
        result["slack"] = slack_collect(args, result, db_url, slack_port)
    finally:
        for p in list(procs.values()) + [slack_proc]:
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in list(procs.values()) + [slack_proc]:
            if p is None:
                continue
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        redis_proc.terminate()
        redis_proc.wait()

    ws = analyse_ws(result)
    events = sum(len(v) for v in result["accepted"].values())
    secs = result["drive_seconds"]
    ceiling = "" if args.no_pgbench else pgbench_ceiling(db_url, args.clients)
    cpu = result["cpu"]
    herald = sum(v for g, v in cpu.items() if g not in ("load generator", "postgres (server background, shared)"))
    st = result["statuses"]
    mode = f", overload {args.overload:g}x: {result['offered']:.0f}/s offered" if args.overload != 1 else ""
    print()
    if args.total_orgs > args.orgs:
        mode += f", {args.total_orgs:,} organizations in the database"
    print(f"== Herald capacity: {args.orgs} orgs x {args.members} members, {len(result['listened'])} WebSocket "
          f"clients, {args.rate:.0f} events/s{mode} for {args.duration:.0f}s, production settings ==")
    print(f"accepted                 {events} ({events / secs:.1f}/s of {result['offered']:.0f}/s offered)")
    print("answers                  " + ", ".join(f"{k}: {v}" for k, v in sorted(st.items(), key=str)))
    print(f"API latency (all)        p50 {ms(result['api_latency'], 50)}, p95 {ms(result['api_latency'], 95)}, "
          f"p99 {ms(result['api_latency'], 99)}")
    print(f"API latency (200)        p50 {ms(result['ok_latency'], 50)}, p95 {ms(result['ok_latency'], 95)}, "
          f"p99 {ms(result['ok_latency'], 99)}")
    if result["refused_latency"] or args.overload != 1:
        print(f"refused 429/503          {len(result['refused_latency'])}: p50 {ms(result['refused_latency'], 50)}, "
              f"p99 {ms(result['refused_latency'], 99)}, max {ms(result['refused_latency'], 100)}; "
              f"without Retry-After {result['refused_without_retry_after']}; timeouts {result['timeouts']}; "
              f"5xx other than 503 {sum(v for k, v in st.items() if isinstance(k, int) and k >= 500 and k != 503)}")
    print(f"event -> WebSocket       p50 {ms(ws['latencies'], 50)}, p95 {ms(ws['latencies'], 95)}, "
          f"p99 {ms(ws['latencies'], 99)} ({len(ws['latencies'])} receipts; drained {result['drained_after']:.1f}s "
          f"after the load)")
    print(f"lost / order violations  lost {ws['lost']}, order violations {ws['violations']}, duplicates "
          f"{ws['duplicates']} (sockets closed by the server: {result['dropped']})")
    sl, stats = analyse_slack(result, result["slack"]["messages"]), result["slack"]["stats"]
    active = sum(1 for v in result["accepted"].values() if v)
    # Under the global limit every active channel gets a turn every A / (limit per second) s.
    share = max(1.0, active / (args.slack_global_per_minute / 60))
    print(f"event -> Slack           p50 {pct(sl['latencies'], 50):.2f} s, p95 {pct(sl['latencies'], 95):.2f} s, "
          f"p99 {pct(sl['latencies'], 99):.2f} s ({sl['requests']} posts, {sl['mean_batch']:.1f} events each; "
          f"fair-share bound {share:.1f} s + 1 s at {args.slack_global_per_minute}/min for {active} channels); "
          f"lost {sl['lost']}, order violations {sl['violations']}, duplicates {sl['duplicates']}; limit breaches "
          f"{stats['breaches']} (max {stats['max_global_per_minute']} in any 60 s, "
          f"{stats['max_channel_per_second']} per channel in any 1 s)")
    print(f"CPU over {result['window']:.1f}s window   (load start until every socket had every accepted event)")
    idle = result["idle"]
    print(f"  {'group':<36} {'CPU s':>7}    {'per event':>15}   {'idle CPU/s':>10}  {'per event above idle':>20}")
    for g in GROUPS + ["load generator", "postgres (server background, shared)"]:
        v = cpu.get(g, 0.0)
        per = f"{v * 1000 / events:6.2f} ms/event" if events else ""
        above = ""
        if events and idle:
            above = f"{max(0.0, v - idle.get(g, 0.0) * result['window']) * 1000 / events:6.2f} ms"
        idle_rate = f"{idle.get(g, 0.0) * 1000:7.1f} ms" if idle else ""
        print(f"  {g:<36} {v:7.2f} s  {per:>15}   {idle_rate:>10}  {above:>20}")
    print(f"CPU per event (Herald)   {herald * 1000 / max(1, events):.2f} ms (web + workers + beat + supervisors + "
          f"bench Postgres backends + Redis; load generator and shared Postgres background apart)")
    if idle:
        herald_idle = sum(v for g, v in idle.items() if g not in ("load generator",
                                                                     "postgres (server background, shared)"))
        print(f"idle stack               {herald_idle * 1000:.0f} ms CPU per second with {len(result['listened'])} "
              f"sockets open and no events ({args.idle_seconds:.0f} s measured before the load); above it: "
              f"{max(0.0, herald - herald_idle * result['window']) * 1000 / max(1, events):.2f} ms per event")
    if ceiling:
        tps = None
        try:
            tps = float(ceiling.split("=")[1].split()[0])
        except (IndexError, ValueError):
            pass
        ratio = f"; events/s per pgbench TPS {events / secs / tps:.4f}" if tps else ""
        print(f"pgbench ceiling          {ceiling} (single-row INSERT, {args.clients} clients){ratio}")
    print(f"machine                  load average {os.getloadavg()[0]:.1f} on {psutil.cpu_count()} cores")
    print(f"logs                     {tmp}")


class ProfileAll:
    """py-spy record (raw, 67 Hz) of every stack process for `seconds`, after a delay."""

    def __init__(self, meter: CpuMeter, outdir: Path, seconds: float):
        self.meter, self.outdir, self.seconds = meter, outdir, seconds
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.thread = None

    def start_later(self, delay: float):
        def run():
            time.sleep(delay)
            groups = classify(self.meter.roots, self.meter.redis_pid, set())
            spies = []
            for pid, group in groups.items():
                if group in ("supervisors", "redis"):
                    continue
                out = self.outdir / f"{group.replace(' ', '_').replace('+', '_')}-{pid}.txt"
                spies.append(subprocess.Popen(
                    [str(REPO / ".venv" / "bin" / "py-spy"), "record", "-r", "67", "-d", str(int(self.seconds)),
                     "--format", "raw", "--pid", str(pid), "-o", str(out)], stdout=subprocess.DEVNULL,
                    stderr=open(str(out) + ".err", "wb")))
            for s in spies:
                s.wait()
            print(f"profiles in {self.outdir}", flush=True)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self):
        if self.thread:
            self.thread.join(timeout=self.seconds + 30)


if __name__ == "__main__":
    main()
