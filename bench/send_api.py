"""Benchmark: the send API (POST /api/v1/send) through the real stack, in-app channel.

Starts Daphne (config.serve, production settings, DEBUG off), the partition workers (one Celery
worker per org-<k> queue), a default/maintenance worker and beat, on a database of its own
(herald_bench_send) and its own Redis database. Two scenarios:

- topic: one send to {"topic": "members"} of an organization with --topic-members members (100,000):
  accept latency, time until the last inbox row and until the last WebSocket client got its
  notification.created (--ws clients connected as members).
- sustained: --clients concurrent HTTP clients POST 10-recipient sends (distinct Idempotency-Keys)
  for --duration seconds across --orgs organizations: sends and in-app notifications accepted per
  second and per minute, p50/p99 accept latency, time to drain, lost (an accepted send with fewer
  than 10 inbox rows), duplicates (inbox rows per recipient x entry > 1), status rows not `sent`.
- batch: the same, but each POST is /api/v1/send/batch with --batch-size sends of 10 recipients (one
  organization per request): sends accepted per second, in-app notifications per minute written to
  inboxes (during the load, and end to end until the last inbox row) and delivered live (--ws
  WebSocket clients, members of the sustained organizations, each must get one notification.created
  per inbox row of theirs), CPU per notification per process group, p99 accept latency, lost,
  duplicates.
- pgcost: no servers; in this process, --rounds batches of --batch-size 10-recipient sends
  (sends_create_batch, as POST /send/batch calls it) each followed by the in-app drains of its
  organization (stream_deliver, as a partition worker calls it), one organization after another:
  the CPU of this process's Postgres backend per notification, for the batch's write and for the
  fan-out apart (the first two rounds warm up and are not counted). --ddl runs a statement after
  seeding (e.g. an index dropped), to compare a schema variant with the same code.

CPU per notification: user+system CPU of every process the bench started (web, workers, beat)
plus the Postgres backends of its database, sampled before and after, divided by the notifications
made; Redis' own CPU (INFO cpu of the bench's private redis-server) is printed beside it.

    .venv/bin/python -m config.backing run -- python bench/send_api.py --scenario both --duration 60
"""
import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import Procs, pct, setup_database, wait_http, wait_log  # noqa: E402


def bench_env(args, db_url: str, redis_url: str, web_port: int) -> dict:
    from cryptography.fernet import Fernet

    env = dict(os.environ)
    base = f"http://127.0.0.1:{web_port}"
    env.update({
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "HERALD_ENCRYPTION_KEYS": os.environ.get("HERALD_ENCRYPTION_KEYS") or Fernet.generate_key().decode(),
        "HERALD_BASE_URL": base,
        "WS_ALLOWED_ORIGINS": base,
        "SECURE_SSL_REDIRECT": "false",  # plain HTTP on loopback
        "SECURE_COOKIES": "false",
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "console",
        "ORG_QUEUE_PARTITIONS": str(args.partitions),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "WEB_VERBOSITY": "0",
        "DB_POOL_MAX_SIZE": str(max(4, args.clients)),
    })
    return env


# --- seeding (set-based) --------------------------------------------------------------------------

def seed(args) -> dict:
    from django.db import connection

    from notifications.templating import template_create
    from organizations.services import api_key_create, user_token_create
    from organizations.models import Organization, User

    started = time.monotonic()
    with connection.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
        n_orgs = args.orgs + 1  # org 0: the topic organization
        cur.execute("""INSERT INTO organizations_organization (name, slug, time_zone, locale, last_event_seq,
                                                              created_at)
                       SELECT 'Send bench ' || g, 'send-bench-' || g, 'UTC', 'en', 0, now()
                       FROM generate_series(0, %s - 1) g""", [n_orgs])
        total_users = args.topic_members + args.orgs * args.members
        cur.execute("""INSERT INTO organizations_user (password, is_superuser, username, first_name, last_name, email,
                           is_staff, is_active, date_joined, time_zone, phone, postal_code, slack_user_id)
                       SELECT '!', false, 'su' || g, '', '', 'su' || g || '@bench.invalid', false, true, now(), 'UTC',
                              '', '', '' FROM generate_series(0, %s - 1) g""", [total_users])
        cur.execute("SELECT min(id) FROM organizations_organization")
        org0 = cur.fetchone()[0]
        cur.execute("SELECT min(id) FROM organizations_user")
        user0 = cur.fetchone()[0]
        cur.execute("""INSERT INTO organizations_membership (organization_id, user_id, role, created_at)
                       SELECT %(org0)s, %(user0)s + g, CASE WHEN g = 0 THEN 'owner' ELSE 'member' END, now()
                       FROM generate_series(0, %(n)s - 1) g""",
                    {"org0": org0, "user0": user0, "n": args.topic_members})
        cur.execute("""INSERT INTO organizations_membership (organization_id, user_id, role, created_at)
                       SELECT %(org0)s + 1 + g / %(m)s, %(u)s + g, 'member', now()
                       FROM generate_series(0, %(n)s - 1) g""",
                    {"org0": org0, "u": user0 + args.topic_members, "m": args.members, "n": args.orgs * args.members})
        # Every organization's in-app stream from the start (as organization_create makes it).
        cur.execute("""INSERT INTO notifications_deliverystream (organization_id, channel, destination, delivered_seq,
                           head_attempts, last_error, on_dead_letter, held, active, updated_at)
                       SELECT id, 'inapp', '', 0, 0, '', 'skip', false, true, now()
                       FROM organizations_organization""")
    orgs = list(Organization.objects.order_by("id"))
    keys = {org.id: api_key_create(organization=org, name="bench", created_by=None)[1] for org in orgs}
    for org in orgs:  # the kinds the scenarios send
        for kind in ("announcement", "bench"):
            template_create(organization=org, kind=kind, locale="en", category="transactional",
                            parts={"inapp": {"title": "{{ title }}", "body": "{{ body }}"}},
                            variables=["title", "body"])
    members: dict[int, list[int]] = {}
    with connection.cursor() as cur:
        cur.execute("SELECT organization_id, array_agg(user_id ORDER BY user_id) FROM organizations_membership "
                    "WHERE organization_id <> %s GROUP BY 1", [org0])
        members = dict(cur.fetchall())
    ws_users = list(User.objects.filter(memberships__organization_id=org0).order_by("id")[: args.ws])
    tokens = [(u.pk, user_token_create(user=u)) for u in ws_users]
    # The batch scenario's listeners: the first member of each of the first --ws sustained organizations.
    batch_tokens = [(ids[0], user_token_create(user=User.objects.get(pk=ids[0])))
                    for _, ids in sorted(members.items())[: args.ws]]
    return {"topic_org": org0, "keys": keys, "members": members, "tokens": tokens, "batch_tokens": batch_tokens,
            "seconds": round(time.monotonic() - started, 1), "users": total_users}


# --- CPU accounting -------------------------------------------------------------------------------

def cpu_seconds(procs: Procs, db_name: str) -> float:
    """CPU (user+system) of the bench's process groups and of its database's backends."""
    return sum(cpu_by_group(procs, db_name).values())


def cpu_by_group(procs: Procs, db_name: str) -> dict[str, float]:
    """CPU (user+system) per process group the bench started (web, orgs, worker, beat) and of its
    database's backends ("postgres")."""
    import psutil

    groups = {p.pid: name for name, p in procs.procs.items()}
    out = dict.fromkeys(procs.procs, 0.0)
    for proc in psutil.process_iter(["pid"]):
        try:
            name = groups.get(os.getpgid(proc.pid))
            if name is not None:
                t = proc.cpu_times()
                out[name] += t.user + t.system
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    out["postgres"] = backend_cpu(db_name)
    return out


def backend_cpu(db_name: str) -> float:
    import psutil
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [db_name])
        pids = [row[0] for row in cur.fetchall()]
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def redis_cpu(redis_url: str) -> float:
    import redis

    info = redis.Redis.from_url(redis_url).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


# --- scenarios ------------------------------------------------------------------------------------

async def listen_all(ws_base: str, tokens, want_kind: str, got: dict, ready: list, stop: asyncio.Event,
                     origin: str):
    import websockets

    async def one(user_id: int, token: str):
        async with websockets.connect(f"{ws_base}/ws/?token={token}", origin=origin,
                                      open_timeout=60, max_queue=None, ping_interval=None, max_size=None) as ws:
            ready.append(user_id)
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                except TimeoutError:
                    continue
                msg = json.loads(raw)
                if msg.get("type") == "notification.created" and msg.get("kind") == want_kind:
                    got.setdefault(user_id, time.time())

    return [asyncio.create_task(one(u, t)) for u, t in tokens]


async def topic_scenario(args, seeded, web: str, ws_base: str) -> dict:
    import httpx
    from django.db import connection

    got: dict[int, float] = {}
    ready: list[int] = []
    stop = asyncio.Event()
    tasks = await listen_all(ws_base, seeded["tokens"], "message", got, ready, stop, origin=web)
    deadline = time.monotonic() + 60
    while len(ready) < len(seeded["tokens"]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    org = seeded["topic_org"]
    async with httpx.AsyncClient(base_url=web, timeout=120) as client:
        t0 = time.time()
        response = await client.post("/api/v1/send", headers={"Authorization": f"Bearer {seeded['keys'][org]}"},
                                     json={"recipients": {"topic": "members"}, "kind": "announcement",
                                           "data": {"title": "All hands", "body": "Now"}})
        accepted = time.time()
    assert response.status_code == 202, response.text
    send_id = response.json()["id"]
    inbox_at = None
    expected = args.topic_members
    while time.time() - t0 < args.drain_timeout:
        with connection.cursor() as cur:  # rows are visible when the fan-out commits: poll for that moment
            cur.execute("SELECT count(*) FROM notifications_notification WHERE organization_id = %s "
                        "AND kind = 'message'", [org])
            (count,) = cur.fetchone()
        if count >= expected:
            inbox_at = time.time()
            break
        await asyncio.sleep(0.2)
    while len(got) < len(ready) and time.time() - t0 < args.drain_timeout:
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    with connection.cursor() as cur:
        cur.execute("SELECT state, count(*) FROM notifications_senddelivery WHERE send_id = %s GROUP BY 1", [send_id])
        states = dict(cur.fetchall())
        cur.execute("SELECT count(*) - count(DISTINCT (recipient_id, entry_id)) FROM notifications_notification "
                    "WHERE organization_id = %s", [org])
        dups = cur.fetchone()[0]
    return {"accept": accepted - t0, "inbox": (inbox_at - t0) if inbox_at else None, "rows": count,
            "ws_last": (max(got.values()) - t0) if got else None, "ws_got": len(got), "ws": len(ready),
            "states": states, "duplicates": dups, "notifications": count}


async def sustained_scenario(args, seeded, web: str) -> dict:
    import aiohttp  # not httpx: its client cost ~3 ms of CPU per request on this box, aiohttp's ~0.2 ms

    orgs = [o for o in seeded["keys"] if o != seeded["topic_org"]]
    latencies: list[float] = []
    accepted: list[int] = []
    errors: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(web, connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
        t_end = time.monotonic() + args.duration

        async def drive(worker: int):
            i = 0
            while time.monotonic() < t_end:
                org = orgs[(worker + i * args.clients) % len(orgs)]
                members = seeded["members"][org]
                start = (i * 10) % max(1, len(members) - 10)
                recipients = members[start:start + 10]
                i += 1
                sent = time.monotonic()
                try:
                    async with client.post("/api/v1/send", json={"recipients": recipients, "kind": "bench",
                                                                 "data": {"title": f"n{i}", "body": "b"}},
                                           headers={"Authorization": f"Bearer {seeded['keys'][org]}",
                                                    "Idempotency-Key": uuid.uuid4().hex}) as r:
                        code, body = r.status, await r.read()
                except (aiohttp.ClientError, TimeoutError):
                    errors[0] = errors.get(0, 0) + 1
                    continue
                latencies.append(time.monotonic() - sent)
                if code == 202:
                    accepted.append(json.loads(body)["id"])
                else:
                    errors[code] = errors.get(code, 0) + 1

        wall0 = time.time()
        await asyncio.gather(*[drive(w) for w in range(args.clients)])
        wall1 = time.time()
    return {"latencies": latencies, "accepted": accepted, "errors": errors, "seconds": wall1 - wall0,
            "wall0": wall0}


async def batch_scenario(args, seeded, web: str, ws_base: str) -> dict:
    """--clients concurrent clients POST /send/batch, --batch-size sends of 10 recipients each (one
    organization per request), for --duration s; --ws members listen on WebSockets meanwhile."""
    import aiohttp

    got: dict[int, list] = {}
    ready: list[int] = []
    stop = asyncio.Event()
    listeners = await listen_counts(ws_base, seeded["batch_tokens"], got, ready, stop, origin=web)
    deadline = time.monotonic() + 60
    while len(ready) < len(seeded["batch_tokens"]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    orgs = sorted(o for o in seeded["keys"] if o != seeded["topic_org"])
    latencies: list[float] = []
    accepted: list[int] = []
    errors: dict[int, int] = {}
    first_errors: dict[int, str] = {}
    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(web, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        t_end = time.monotonic() + args.duration

        async def drive(worker: int):
            i = 0
            while time.monotonic() < t_end:
                org = orgs[(worker + i * args.clients) % len(orgs)]
                members = seeded["members"][org]
                sends = []
                for j in range(args.batch_size):
                    start = ((i * args.batch_size + j) * 10) % max(1, len(members) - 10)
                    sends.append({"recipients": members[start:start + 10], "kind": "bench",
                                  "data": {"title": f"n{i}.{j}", "body": "b"}})
                i += 1
                sent = time.monotonic()
                try:
                    async with client.post("/api/v1/send/batch", json={"sends": sends},
                                           headers={"Authorization": f"Bearer {seeded['keys'][org]}",
                                                    "Idempotency-Key": uuid.uuid4().hex}) as r:
                        code, body, retry_after = r.status, await r.read(), r.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[0] = errors.get(0, 0) + 1
                    first_errors.setdefault(0, repr(exc)[:300])
                    continue
                latencies.append(time.monotonic() - sent)
                if code == 202:
                    accepted.extend(item["id"] for item in json.loads(body)["results"])
                else:
                    errors[code] = errors.get(code, 0) + 1
                    first_errors.setdefault(code, body[:300].decode(errors="replace"))
                    if code in (429, 503):  # a well-behaved client: overload control answers when to come back
                        await asyncio.sleep(min(float(retry_after or 1), max(0.0, t_end - time.monotonic())))

        wall0 = time.time()
        await asyncio.gather(*[drive(w) for w in range(args.clients)])
        wall1 = time.time()
    for code, body in sorted(first_errors.items()):
        print(f"first {code or 'connection error'}: {body}", flush=True)
    result = {"latencies": latencies, "accepted": accepted, "errors": errors, "seconds": wall1 - wall0,
              "wall0": wall0, "got": got, "stop": stop, "listeners": listeners, "ready": ready}
    return result


async def listen_counts(ws_base: str, tokens, got: dict, ready: list, stop: asyncio.Event, origin: str):
    """Each listener records the (title, arrival time) of every notification.created it gets."""
    import websockets

    async def one(user_id: int, token: str):
        async with websockets.connect(f"{ws_base}/ws/?token={token}", origin=origin,
                                      open_timeout=60, max_queue=None, ping_interval=None, max_size=None) as ws:
            ready.append(user_id)
            mine = got.setdefault(user_id, [])
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                except TimeoutError:
                    continue
                msg = json.loads(raw)
                if msg.get("type") == "notification.created" and msg.get("kind") == "message":
                    mine.append((msg.get("title"), time.time()))

    return [asyncio.create_task(one(u, t)) for u, t in tokens]


def profile_start(args, procs) -> dict:
    """py-spy record (raw, 50 Hz, every subprocess) of the web and partition-worker groups for the load."""
    out = {}
    Path(args.profile).mkdir(parents=True, exist_ok=True)
    for name in ("web", "orgs"):
        path = Path(args.profile) / f"{name}.txt"
        spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                                "--pid", str(procs.procs[name].pid), "--subprocesses", "--nonblocking", "--rate", "50",
                                "--format", "raw", "--duration", str(int(args.duration)), "-o", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out[name] = (spy, path)
    return out


def profile_report(spies: dict) -> None:
    from bench.web_cost import summarize_profile

    for name, (spy, out) in spies.items():
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
        if not out.exists():
            print(f"-- py-spy, {name}: no profile written (exit {spy.returncode}; ptrace allowed?) --", flush=True)
            continue
        print(f"-- py-spy, {name} (inclusive, top 30) --\n" + "\n".join(summarize_profile(out, top=30)), flush=True)


async def batch_run(args, seeded, web: str, ws_base: str, procs, redis_url: str) -> dict:
    """The batch load, then its drain (the listeners stay connected until their rows are in)."""
    from django.db import connection

    cpu0, r0 = cpu_by_group(procs, args.db_name), redis_cpu(redis_url)
    spies = profile_start(args, procs) if args.profile else {}
    load = await batch_scenario(args, seeded, web, ws_base)
    drained = await asyncio.to_thread(sustained_drain, args, load)
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM notifications_notification WHERE kind = 'message' "
                    "AND created_at <= to_timestamp(%s)", [load["wall0"] + load["seconds"]])
        (in_window,) = cur.fetchone()
        cur.execute("SELECT max(created_at) FROM notifications_notification WHERE kind = 'message'")
        (last_row,) = cur.fetchone()
        users = [u for u in load["ready"]]
        cur.execute("SELECT recipient_id, count(*) FROM notifications_notification WHERE kind = 'message' "
                    "AND recipient_id = ANY(%s) GROUP BY 1", [users])
        expected = dict(cur.fetchall())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(len(load["got"].get(u, [])) < expected.get(u, 0) for u in users):
        await asyncio.sleep(0.2)
    load["stop"].set()
    await asyncio.gather(*load["listeners"], return_exceptions=True)
    cpu1, r1 = cpu_by_group(procs, args.db_name), redis_cpu(redis_url)
    profile_report(spies)
    live_got = sum(len(load["got"].get(u, [])) for u in users)
    live_dups = sum(len(v) - len({t for t, _ in v}) for v in load["got"].values())
    live_last = max((at for v in load["got"].values() for _, at in v), default=None)
    return {"load": load, "drained": drained, "in_window": in_window,
            "last_row": last_row.timestamp() if last_row else None,
            "cpu": {k: cpu1.get(k, 0.0) - cpu0.get(k, 0.0) for k in cpu1}, "redis_cpu": r1 - r0,
            "live_expected": sum(expected.values()), "live_got": live_got, "live_dups": live_dups,
            "live_last": live_last, "listeners": len(users)}


def sustained_drain(args, result) -> dict:
    from django.db import connection

    ids = result["accepted"]
    t0 = time.time()
    expected = 10 * len(ids)
    drained_at = None
    while time.time() - t0 < args.drain_timeout:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM notifications_senddelivery WHERE send_id = ANY(%s) AND state = 'sent'",
                        [ids])
            (done,) = cur.fetchone()
        if done >= expected:
            drained_at = time.time()
            break
        time.sleep(0.2)
    with connection.cursor() as cur:
        cur.execute("""SELECT s.id, count(n.id) FROM notifications_send s
                       LEFT JOIN notifications_notification n ON n.entry_id = s.entry_id
                       WHERE s.id = ANY(%s) GROUP BY s.id""", [ids])
        per_send = dict(cur.fetchall())
        cur.execute("SELECT count(*) - count(DISTINCT (recipient_id, entry_id)) FROM notifications_notification "
                    "WHERE kind = 'message'")
        dups = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM notifications_notification "
                    "WHERE entry_id IN (SELECT entry_id FROM notifications_send WHERE id = ANY(%s))", [ids])
        (notifications,) = cur.fetchone()
        cur.execute("SELECT state, count(*) FROM notifications_senddelivery WHERE send_id = ANY(%s) GROUP BY 1", [ids])
        states = dict(cur.fetchall())
    lost = sum(1 for i in ids if per_send.get(i, 0) < 10)
    return {"lost": lost, "duplicates": dups, "notifications": notifications, "states": states,
            "drained_after": (drained_at - result["wall0"] - result["seconds"]) if drained_at else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["topic", "sustained", "both", "batch", "pgcost"], default="both")
    ap.add_argument("--rounds", type=int, default=40, help="pgcost: batches written and drained")
    ap.add_argument("--ddl", action="append", default=[], help="pgcost: SQL run after seeding (a schema variant)")
    ap.add_argument("--batch-size", type=int, default=200, help="sends per POST /send/batch (batch)")
    ap.add_argument("--profile", metavar="DIR", help="batch: py-spy the web and partition workers during the load")
    ap.add_argument("--topic-members", type=int, default=100_000)
    ap.add_argument("--ws", type=int, default=20, help="WebSocket clients (members of the topic organization)")
    ap.add_argument("--orgs", type=int, default=200, help="organizations of the sustained scenario")
    ap.add_argument("--members", type=int, default=50)
    ap.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients (sustained)")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--web-processes", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--ws-processes", type=int, default=0,
                    help="a split web tier: this many Daphne processes for /ws/ apart from the HTTP ones")
    ap.add_argument("--drain-timeout", type=float, default=120)
    ap.add_argument("--db-name", default="herald_bench_send")
    ap.add_argument("--shared-redis", action="store_true", help="use REDIS_URL's server (db --redis-db) instead "
                    "of a private redis-server")
    ap.add_argument("--redis-db", type=int, default=4)
    args = ap.parse_args()

    base_db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald")
    from tests.support.stack import free_port

    redis_dir = tempfile.mkdtemp(prefix="herald-bench-redis-")
    if args.shared_redis:
        base_redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        redis_url = base_redis.rsplit("/", 1)[0] + f"/{args.redis_db}"
        redis_proc = None
    else:  # a private redis-server: nothing shared is flushed, and its CPU is the bench's alone
        redis_port = free_port()
        redis_proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                                       "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", redis_dir],
                                      stdout=subprocess.DEVNULL)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
    os.environ["REDIS_URL"] = redis_url

    web_port = free_port()
    env = bench_env(args, setup_database(args, base_db), redis_url, web_port)
    os.environ.update({k: env[k] for k in ("DJANGO_SETTINGS_MODULE", "SECRET_KEY", "HERALD_ENCRYPTION_KEYS",
                                           "HERALD_BASE_URL", "SECURE_SSL_REDIRECT")})
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # the bench's own polling reads from its event loop
    import django

    django.setup()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    import redis
    from django.core.management import call_command
    from django.db import connection

    from notifications.ratelimit import RateLimiter

    for _ in range(100):
        try:
            redis.Redis.from_url(redis_url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    redis.Redis.from_url(redis_url).flushdb()
    RateLimiter(redis.Redis.from_url(redis_url)).start_fresh()
    call_command("migrate", verbosity=0)
    if args.scenario in ("sustained", "batch", "pgcost"):
        args.topic_members = max(args.ws, 1)
    seeded = seed(args)
    print(f"seeded {seeded['users']} users in {len(seeded['keys'])} orgs in {seeded['seconds']}s", flush=True)
    if args.scenario == "pgcost":
        try:
            pg_cost(args, seeded)
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
        return
    connection.close()

    logdir = Path(tempfile.mkdtemp(prefix="herald-bench-send-"))
    procs = Procs(logdir, env)
    py = sys.executable
    ws_port = free_port() if args.ws_processes else web_port
    web, ws_base = f"http://127.0.0.1:{web_port}", f"ws://127.0.0.1:{ws_port}"
    report = []
    try:
        split = ["--ws-processes", str(args.ws_processes), "--ws-port", str(ws_port)] if args.ws_processes else []
        procs.start("web", [py, "-m", "config.serve", "--port", str(web_port), "--processes",
                            str(args.web_processes), *split])
        procs.start("orgs", [py, "manage.py", "run_partition_workers", "--loglevel", "INFO"])
        procs.start("worker", [py, "-m", "celery", "-A", "config", "worker", "-Q", "default,maintenance", "-c", "1",
                               "-n", "default@%h", "--without-gossip", "--without-mingle", "-l", "INFO"])
        procs.start("beat", [py, "-m", "celery", "-A", "config", "beat", "-l", "WARNING", "--scheduler",
                             "django_celery_beat.schedulers:DatabaseScheduler"])
        wait_http(f"{web}/healthz")
        wait_log(logdir / "orgs.log", "ready", timeout=300)
        time.sleep(2)
        if args.scenario in ("topic", "both"):
            cpu0, r0 = cpu_seconds(procs, args.db_name), redis_cpu(redis_url)
            topic = asyncio.run(topic_scenario(args, seeded, web, ws_base))
            cpu = cpu_seconds(procs, args.db_name) - cpu0
            rcpu = redis_cpu(redis_url) - r0
            n = max(1, topic["notifications"])
            report += [
                f"== topic send to {args.topic_members} members (in-app), {topic['ws']} WebSocket clients ==",
                f"accept (POST -> 202)     {topic['accept'] * 1000:.0f} ms",
                f"last inbox row           {_s(topic['inbox'])} after the POST ({topic['rows']} rows)",
                f"last WebSocket message   {_s(topic['ws_last'])} after the POST "
                f"({topic['ws_got']} of {topic['ws']} clients got notification.created)",
                f"status rows              {topic['states']}",
                f"duplicates               {topic['duplicates']}",
                f"CPU                      {cpu:.1f} s (web, workers, beat, Postgres backends) = "
                f"{cpu / n * 1e6:.0f} us per notification; Redis {rcpu:.1f} s (private server)",
            ]
            print("\n".join(report[-8:]), flush=True)
        if args.scenario in ("sustained", "both"):
            connection.close()
            cpu0, r0 = cpu_by_group(procs, args.db_name), redis_cpu(redis_url)
            spies = profile_start(args, procs) if args.profile else {}
            load = asyncio.run(sustained_scenario(args, seeded, web))
            drained = sustained_drain(args, load)
            cpu1 = cpu_by_group(procs, args.db_name)
            profile_report(spies)
            groups = {k: cpu1.get(k, 0.0) - cpu0.get(k, 0.0) for k in cpu1}
            cpu = sum(groups.values())
            rcpu = redis_cpu(redis_url) - r0
            sends, secs = len(load["accepted"]), load["seconds"]
            n = max(1, drained["notifications"])
            report += [
                f"== sustained: {args.clients} clients POST 10-recipient sends for {args.duration:.0f} s, "
                f"{args.orgs} orgs ==",
                f"sends accepted           {sends} ({sends / secs:.1f}/s); errors {load['errors'] or 0}",
                f"in-app notifications     {drained['notifications']} ({drained['notifications'] / secs * 60:,.0f}/min"
                f" offered-and-accepted; target 1,000,000/min)",
                f"accept latency           p50 {pct(load['latencies'], 50) * 1000:.0f} ms, "
                f"p99 {pct(load['latencies'], 99) * 1000:.0f} ms",
                f"drained                  {_s(drained['drained_after'])} after the load ended",
                f"lost                     {drained['lost']} sends with fewer than 10 inbox rows",
                f"duplicates               {drained['duplicates']}",
                f"status rows              {drained['states']}",
                f"CPU                      {cpu:.1f} s (web, workers, beat, Postgres backends) = "
                f"{cpu / n * 1e6:.0f} us per notification ({cpu / max(1, sends) * 1e3:.1f} ms per send); "
                f"Redis {rcpu:.1f} s (private server)",
                "CPU per send by group    " + ", ".join(f"{k} {v / max(1, sends) * 1e3:.2f} ms"
                                                       for k, v in groups.items()),
            ]
            print("\n".join(report[-10:]), flush=True)
        if args.scenario == "batch":
            connection.close()
            run = asyncio.run(batch_run(args, seeded, web, ws_base, procs, redis_url))
            load, drained = run["load"], run["drained"]
            sends, secs = len(load["accepted"]), load["seconds"]
            n = max(1, drained["notifications"])
            end_to_end = (run["last_row"] - load["wall0"]) if run["last_row"] else None
            cpu = run["cpu"]
            total = sum(cpu.values())
            per_group = ", ".join(f"{name} {seconds / n * 1e6:.0f}" for name, seconds in cpu.items())
            report += [
                f"== batch: {args.clients} clients POST /send/batch of {args.batch_size} 10-recipient sends for "
                f"{args.duration:.0f} s, {args.orgs} orgs, {args.partitions} partitions ==",
                f"requests                 {len(load['latencies'])}; errors {load['errors'] or 0}",
                f"sends accepted           {sends} ({sends / secs:.1f}/s)",
                f"in-app notifications     {drained['notifications']} in inboxes: "
                f"{run['in_window'] / secs * 60:,.0f}/min written during the load, "
                f"{drained['notifications'] / end_to_end * 60 if end_to_end else 0:,.0f}/min "
                f"end to end (first POST -> last inbox row, {_s(end_to_end)}); target 1,000,000/min",
                f"accepted (offered)       {sends * 10 / secs * 60:,.0f} notifications/min",
                f"live                     {run['live_got']} of {run['live_expected']} notification.created "
                f"to {run['listeners']} WebSocket members, {run['live_dups']} duplicates; last "
                f"{_s(run['live_last'] - load['wall0'] if run['live_last'] else None)} after the first POST",
                f"accept latency           p50 {pct(load['latencies'], 50) * 1000:.0f} ms, "
                f"p99 {pct(load['latencies'], 99) * 1000:.0f} ms (per request)",
                f"drained                  {_s(drained['drained_after'])} after the load ended",
                f"lost                     {drained['lost']} sends with fewer than 10 inbox rows",
                f"duplicates               {drained['duplicates']}",
                f"status rows              {drained['states']}",
                f"CPU                      {total:.1f} s = {total / n * 1e6:.0f} us per notification "
                f"({total / max(1, sends) * 1e3:.2f} ms per send); per group, us/notification: {per_group}; "
                f"Redis {run['redis_cpu'] / n * 1e6:.0f} ({run['redis_cpu']:.1f} s, private server)",
            ]
            print("\n".join(report[-13:]), flush=True)
    finally:
        procs.stop_all()
        if redis_proc is not None:
            redis_proc.terminate()
    print()
    print("\n".join(report))
    print(f"logs                     {logdir}")


def pg_cost(args, seeded) -> None:
    """The pgcost scenario: Postgres CPU per notification of a batch's write and of its fan-out."""
    import psutil
    from django.db import connection

    from notifications.delivery.fence import stream_deliver
    from notifications.send.services import sends_create_batch

    with connection.cursor() as cur:
        for ddl in args.ddl:
            cur.execute(ddl)
        cur.execute("SELECT pg_backend_pid()")
        backend = psutil.Process(cur.fetchone()[0])

    def pg() -> float:
        t = backend.cpu_times()
        return t.user + t.system

    def lsn() -> str:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_current_wal_insert_lsn()")
            return cur.fetchone()[0]

    def wal_bytes(start: str, end: str) -> int:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_wal_lsn_diff(%s, %s)", [end, start])
            return int(cur.fetchone()[0])

    members = seeded["members"]
    orgs = sorted(members)
    write = fan_out = 0.0
    wal_write = wal_fan_out = 0
    made = 0
    first_lsn = last_lsn = None
    for r in range(args.rounds):
        org = orgs[r % len(orgs)]
        ids = members[org]
        span = max(1, len(ids) - 10)
        sends = [{"recipients": ids[(i * 10) % span:(i * 10) % span + 10], "kind": "bench",
                  "data": {"title": f"n{r}-{i}", "body": "b"}} for i in range(args.batch_size)]
        l0, c0 = lsn(), pg()
        sends_create_batch(organization_id=org, sends=sends)
        c1, l1 = pg(), lsn()
        with connection.cursor() as cur:
            cur.execute("SELECT last_event_seq FROM organizations_organization WHERE id = %s", [org])
            last = cur.fetchone()[0]
        while True:
            stream_deliver(org_id=org, channel="inapp")
            with connection.cursor() as cur:
                cur.execute("SELECT delivered_seq FROM notifications_deliverystream WHERE organization_id = %s "
                            "AND channel = 'inapp'", [org])
                if cur.fetchone()[0] >= last:
                    break
        c2, l2 = pg(), lsn()
        if r >= 2:
            write, fan_out, made = write + c1 - c0, fan_out + c2 - c1, made + len(sends) * 10
            wal_write, wal_fan_out = wal_write + wal_bytes(l0, l1), wal_fan_out + wal_bytes(l1, l2)
            first_lsn, last_lsn = first_lsn or l0, l2
    with connection.cursor() as cur:
        cur.execute("SELECT state, count(*) FROM notifications_senddelivery GROUP BY 1")
        states = dict(cur.fetchall())
        cur.execute("SELECT pg_stat_force_next_flush()")
        cur.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                    "WHERE relname = 'notifications_senddelivery'")
        updates, hot = cur.fetchone()
        cur.execute("SELECT pg_relation_size('notifications_senddelivery'), "
                    "pg_indexes_size('notifications_senddelivery')")
        heap, indexes = cur.fetchone()
    n = max(1, made)
    print(f"== pgcost: {args.rounds - 2} batches of {args.batch_size} 10-recipient sends, each drained ==")
    print(f"notifications            {made}; status rows {states}; status-row updates {updates}, HOT {hot} "
          f"({hot / max(1, updates):.0%}); table {heap / 2**20:.1f} MB, its indexes {indexes / 2**20:.1f} MB")
    print(f"postgres CPU             {(write + fan_out) / n * 1e6:.1f} us per notification: batch write "
          f"{write / n * 1e6:.1f}, in-app fan-out {fan_out / n * 1e6:.1f}")
    print(f"WAL                      {(wal_write + wal_fan_out) / n:.0f} bytes per notification: batch write "
          f"{wal_write / n:.0f}, in-app fan-out {wal_fan_out / n:.0f} (cluster-wide: run it on a quiet server)")
    if first_lsn:
        for line in wal_by_relation(first_lsn, last_lsn, n):
            print(line)


def wal_by_relation(start: str, end: str, n: int) -> list[str]:
    """The WAL between two positions by relation (record and full-page-image bytes per notification),
    read with pg_walinspect (PostgreSQL 15+, superuser): this database's relations, and records of
    no relation (commits) by resource manager; a record counts for its first block's relation."""
    from django.db import DatabaseError, connection, transaction

    try:
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            cur.execute("""
                SELECT COALESCE(c.relname, r.rmgr) || ' ' || r.kind AS rel, sum(r.record_length) AS bytes,
                       sum(r.fpi_length) AS fpi, count(*) AS records
                FROM (SELECT resource_manager AS rmgr, record_type AS kind, record_length, fpi_length,
                             substring(block_ref from 'rel [0-9]+/[0-9]+/([0-9]+)')::oid AS node,
                             substring(block_ref from 'rel [0-9]+/([0-9]+)/')::oid AS db
                      FROM pg_get_wal_records_info(%s, LEAST(%s::pg_lsn, pg_current_wal_flush_lsn()))) r
                LEFT JOIN pg_class c ON c.relfilenode = r.node
                WHERE r.db IS NULL OR r.db = (SELECT oid FROM pg_database WHERE datname = current_database())
                GROUP BY 1 ORDER BY 2 DESC LIMIT 20""", [start, end])
            rows = cur.fetchall()
    except DatabaseError as exc:
        return [f"WAL by relation          n/a ({str(exc).splitlines()[0]})"]
    out = ["WAL by relation          bytes per notification (of which full-page images), records per notification"]
    out += [f"  {rel:<60} {b / n:7.0f} ({fpi / n:5.0f})  {k / n:5.2f}" for rel, b, fpi, k in rows]
    return out


def _s(value) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


if __name__ == "__main__":
    main()
