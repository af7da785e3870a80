"""Benchmark: CPU of the web tier per WebSocket delivery of the live feed (issue 12).

Only the live path: the web tier as the Procfile starts it (production settings, every Daphne
process), a private redis-server, N organizations x M members with one WebSocket client each (in
a process of its own, as in bench/capacity.py), and this process publishing `tracker.event` org
messages through notifications.realtime.publish at --rate (the shape the in-app drain publishes:
entry, audience, every member's notification id, title), so each event is one org message that
becomes a tracker.event frame and a notification.created frame on each member's socket. No HTTP
API, no drain, no Postgres writes: what is measured is the channel layer plus the consumers.

Prints CPU ms per event and per WebSocket delivery (one event reaching one socket) of the web
processes, Redis and the publisher (this process: the share a Celery worker pays to publish),
each above its idle cost (measured with every socket open before the load), p50/p99 publish ->
WebSocket, lost and order violations. `--profile` records the web processes with py-spy and
prints the functions with the most samples.

    .venv/bin/python bench/live_fanout.py                            # 100 x 5, 200 events/s, 20 s
    .venv/bin/python bench/live_fanout.py --orgs 1000 --members 10 --rate 200
    .venv/bin/python bench/live_fanout.py --profile
"""
import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.capacity import analyse_ws, free_port, listener_main, procfile_entries, start_redis, stack_env  # noqa: E402
from bench.common import pct, setup_database, wait_http  # noqa: E402


def tree_cpu(pid: int, skip_root: bool = False) -> float:
    try:
        root = psutil.Process(pid)
        procs = ([] if skip_root else [root]) + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            if "config.serve" in " ".join(p.cmdline()) or p.name() == "sh":
                continue  # the supervisor of the Daphne processes
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def me_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def top_functions(paths: list[Path], limit: int = 25) -> list[tuple[str, float]]:
    """Inclusive share of samples per function over py-spy raw (collapsed) outputs."""
    inclusive: Counter = Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            for frame in set(stack.split(";")):
                inclusive[frame] += n
    return [(f, 100.0 * n / max(1, total)) for f, n in inclusive.most_common(limit)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orgs", type=int, default=100)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--rate", type=float, default=200, help="events (org messages) per second")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--batch", type=int, default=1, help="entries of one org per publish call (a drain's run)")
    ap.add_argument("--web-processes", type=int, default=0, help="WEB_PROCESSES (default: the Procfile's)")
    ap.add_argument("--idle-seconds", type=float, default=6)
    ap.add_argument("--profile", action="store_true", help="py-spy record the web processes during the load")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the web tier (repeatable)")
    ap.add_argument("--db-name", default="herald_live_fanout")
    args = ap.parse_args()
    args.slack_global_per_minute = 100000

    tmp = Path(tempfile.mkdtemp(prefix="herald-fanout-"))
    redis_proc, redis_port = start_redis(tmp)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    os.environ["REDIS_URL"] = redis_url
    from cryptography.fernet import Fernet

    os.environ.setdefault("HERALD_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    db_url = setup_database(args, os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald"))
    web_proc = None
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        from bench.seed import seed

        seeded = seed(active_orgs=args.orgs, members=args.members, total_orgs=args.orgs, inactive_members=0,
                      slack_token="xoxb-bench-token")
        connection.close()
        from django.conf import settings

        from notifications import realtime
        from notifications.events import tracker_event_message

        web_port = free_port()
        env = stack_env(args, db_url, redis_url, web_port, free_port(), str(tmp))
        command = dict(procfile_entries())["web"]
        web_proc = subprocess.Popen(["sh", "-c", command], cwd=REPO, env=env, stdout=open(tmp / "web.log", "wb"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
        web = f"http://127.0.0.1:{web_port}"
        wait_http(f"{web}/healthz", timeout=90)

        by_org: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for org_id, user_id, token in seeded["tokens"]:
            by_org[org_id].append((user_id, token))
        pairs = [(o, u, t) for o, members in by_org.items() for u, t in members]
        parent_end, child_end = multiprocessing.get_context("spawn").Pipe()
        listener = multiprocessing.get_context("spawn").Process(
            target=listener_main, args=(child_end, web, f"ws://127.0.0.1:{web_port}", pairs), daemon=True)
        listener.start()
        reply = parent_end.recv()
        if reply[0] != "connected":
            raise RuntimeError(f"websocket listeners failed: {reply}")
        print(f"{reply[1]} websocket clients connected to {args.orgs} orgs x {args.members} members", flush=True)
        realtime.publish([(realtime.user_group(0), {"type": "warm.up"})])  # the publisher's loop and pool
        time.sleep(1)

        def snapshot():
            return {"web": tree_cpu(web_proc.pid, skip_root=True), "redis": tree_cpu(redis_proc.pid),
                    "publisher": me_cpu()}

        before, t0 = snapshot(), time.monotonic()
        time.sleep(args.idle_seconds)
        after = snapshot()
        idle = {k: (after[k] - before[k]) / (time.monotonic() - t0) for k in before}

        orgs = sorted(by_org)
        seq: dict[int, int] = defaultdict(int)
        notification_ids = iter(range(1, 10**9))
        accepted: dict[int, list[tuple[int, float]]] = defaultdict(list)
        spies = []
        if args.profile:
            pids = [p.pid for p in psutil.Process(web_proc.pid).children(recursive=True)
                    if "daphne" in " ".join(p.cmdline())]
            for pid in pids:
                out = tmp / f"web-{pid}.txt"
                spies.append((out, subprocess.Popen(
                    [str(REPO / ".venv" / "bin" / "py-spy"), "record", "-r", "67", "-d",
                     str(max(1, int(args.duration) - 2)), "--format", "raw", "--pid", str(pid), "-o", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        before, t0 = snapshot(), time.monotonic()
        interval = args.batch / args.rate
        next_at, i = t0, 0
        while next_at < t0 + args.duration:
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            org_id = orgs[i % len(orgs)]
            i += 1
            messages = []
            for _ in range(args.batch):
                seq[org_id] += 1
                occurred = datetime.now(UTC)
                message = tracker_event_message(
                    org_id=org_id, seq=seq[org_id], event_id=seq[org_id], tracker_id=1, tracker_name="Bench tracker",
                    action="start" if seq[org_id] % 2 else "stop", actor="bench", occurred_at=occurred)
                message.update(audience=None, title=f"bench {'started' if seq[org_id] % 2 else 'stopped'} Bench "
                               "tracker", body="",
                               notifications={str(u): next(notification_ids) for u, _ in by_org[org_id]})
                messages.append((realtime.org_group(org_id), message))
                accepted[org_id].append((seq[org_id], occurred.timestamp()))
            realtime.publish(messages)
            next_at += interval
        published_in = time.monotonic() - t0
        expected = {o: max(s for s, _ in v) for o, v in accepted.items()}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            parent_end.send(("missing", expected))
            if not parent_end.recv()[1]:
                break
            time.sleep(0.1)
        window = time.monotonic() - t0
        after = snapshot()
        parent_end.send(("stop",))
        _, got, dropped = parent_end.recv()
        listener.join(timeout=30)
        for _, spy in spies:
            spy.wait()
    finally:
        if web_proc is not None and web_proc.poll() is None:
            os.killpg(web_proc.pid, signal.SIGTERM)
            try:
                web_proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(web_proc.pid, signal.SIGKILL)
        redis_proc.terminate()
        redis_proc.wait()

    receipts: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
    for org_id, user_id, s, t in got:
        receipts[(org_id, user_id)].append((s, t))
    ws = analyse_ws({"accepted": accepted, "receipts": receipts, "listened": [(o, u) for o, u, _ in pairs]})
    events = sum(len(v) for v in accepted.values())
    deliveries = events * args.members
    print()
    print(f"== live fan-out: {args.orgs} orgs x {args.members} members ({len(pairs)} sockets), {events} events "
          f"published in {published_in:.1f}s ({events / published_in:.0f}/s, batch {args.batch}), "
          f"{deliveries} deliveries; {settings.CHANNEL_LAYERS['default']['BACKEND'].rsplit('.', 1)[1]} ==")
    print(f"publish -> WebSocket     p50 {pct(ws['latencies'], 50) * 1000:.0f} ms, p99 "
          f"{pct(ws['latencies'], 99) * 1000:.0f} ms, max {pct(ws['latencies'], 100) * 1000:.0f} ms")
    print(f"lost / order violations  lost {ws['lost']}, order violations {ws['violations']}, duplicates "
          f"{ws['duplicates']} (sockets closed by the server: {dropped})")
    print(f"CPU over {window:.1f}s (idle cost per second subtracted)")
    for group in ("web", "redis", "publisher"):
        used = max(0.0, after[group] - before[group] - idle[group] * window)
        print(f"  {group:<10} {after[group] - before[group]:6.2f} s, idle {idle[group] * 1000:5.0f} ms/s  ->  "
              f"{used * 1000 / events:6.3f} ms/event  {used * 1e6 / deliveries:7.1f} us/delivery")
    if spies:
        print("web profile (inclusive % of samples, every Daphne process):")
        for frame, share in top_functions([out for out, _ in spies if out.exists()]):
            print(f"  {share:5.1f}%  {frame[:150]}")
    print(f"logs {tmp}")


if __name__ == "__main__":
    main()
