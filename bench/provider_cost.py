"""Benchmark: the provider worker's CPU per Slack event, with its Postgres and Redis share (issue 12).

Starts the Procfile's `providers` line (production settings) on a database of its own and a private
redis-server (so Redis's CPU is the worker's alone), and the Slack stand-in (1 message/s per channel,
bursts of 3, like bench/capacity.py). Seeds N organizations with a Slack channel each, then writes
tracker entries straight into the org log at the target rate (each organization on a fixed period,
as bench/capacity.py's API clients; the statements tracker_start uses) and kicks the Slack streams
as a commit does. The web tier and the partition workers are not running: every CPU second counted
is the provider worker's (its Celery parent and pool children), its Postgres backends' and Redis's.

Prints CPU per event per group (the worker split into its Celery parent and pool children), event ->
Slack p50/p95/p99, Slack requests, limit breaches, lost,
order violations and duplicates.

    .venv/bin/python bench/provider_cost.py                         # 100 orgs, 100 events/s, 30 s
    .venv/bin/python bench/provider_cost.py --profile 15            # + py-spy of the worker (raw stacks)
    .venv/bin/python bench/provider_cost.py --slack-latency 0.2     # Slack answering in 200 ms
    .venv/bin/python bench/provider_cost.py --command "celery -A config worker -Q providers -P threads -c 4"
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.capacity import free_port, pg_backend_pids, procfile_entries, stack_env, start_redis  # noqa: E402
from bench.common import analyse_slack, pct, setup_database, wait_http, wait_log  # noqa: E402
from bench.slack_delivery import GENERATE_SQL  # noqa: E402


def _cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


class Meter:
    """CPU seconds per group (provider worker tree, its Postgres backends, Redis) over a window."""

    def __init__(self, worker_pid: int, redis_pid: int, db_url: str, db_name: str, own_backend: int):
        self.worker_pid, self.redis_pid, self.db_url, self.db_name = worker_pid, redis_pid, db_url, db_name
        self.own_backend = own_backend
        self.before: dict[int, tuple[str, float]] = {}
        self.parts: dict[int, str] = {}

    def _groups(self) -> dict[int, str]:
        groups: dict[int, str] = {}
        try:
            root = psutil.Process(self.worker_pid)
            for p in [root] + root.children(recursive=True):
                groups[p.pid] = "provider worker"
                try:  # its parts, printed under it: the Celery parent (consumer) and the pool children
                    cmd = p.cmdline()
                    if cmd and cmd[0].rsplit("/", 1)[-1] not in ("sh", "bash") and "config.supervise" not in cmd \
                            and any(a.rsplit("/", 1)[-1] == "celery" for a in cmd[:3]):
                        self.parts[p.pid] = "celery parent" if p.children() else "pool children"
                except psutil.Error:
                    pass
        except psutil.NoSuchProcess:
            pass
        for pid in pg_backend_pids(self.db_url, self.db_name) - {self.own_backend}:
            groups[pid] = "postgres (worker backends)"
        groups[self.redis_pid] = "redis"
        return groups

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        return {pid: (group, _cpu(pid)) for pid, group in self._groups().items()}

    def start(self) -> None:
        self.t0, self.before = time.monotonic(), self._snapshot()

    def sample(self) -> None:
        for pid, (group, _) in self._snapshot().items():
            self.before.setdefault(pid, (group, 0.0))  # appeared in the window: its whole life counts

    def stop(self) -> tuple[dict[str, float], float]:
        after = self._snapshot()
        totals: dict[str, float] = defaultdict(float)
        for pid, (group, cpu) in after.items():
            spent = max(0.0, cpu - self.before.get(pid, (group, 0.0))[1])
            totals[group] += spent
            if pid in self.parts:
                totals["  " + self.parts[pid]] += spent
        return totals, time.monotonic() - self.t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orgs", type=int, default=100)
    ap.add_argument("--rate", type=float, default=100, help="events/s across every organization")
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--slack-global-per-minute", type=int, default=100000)
    ap.add_argument("--slack-latency", type=float, default=0.0,
                    help="seconds the Slack stand-in takes to answer every call (a slow provider)")
    ap.add_argument("--drain-timeout", type=float, default=60)
    ap.add_argument("--command", help="the provider worker's command (default: the Procfile's `providers` line)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the worker (repeatable)")
    ap.add_argument("--profile", type=float, default=0, help="py-spy record the worker for this many seconds")
    ap.add_argument("--db-name", default="herald_provider_cost")
    args = ap.parse_args()
    args.web_processes = 0  # stack_env's knobs that do not apply here

    tmp = Path(tempfile.mkdtemp(prefix="herald-provider-cost-"))
    redis_proc, redis_port = start_redis(tmp)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    os.environ.update({"REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url})
    from cryptography.fernet import Fernet

    os.environ.setdefault("HERALD_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    db_url = setup_database(args, os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald"))
    slack_port = free_port()
    os.environ["SLACK_API_URL"] = f"http://127.0.0.1:{slack_port}/api/"
    procs: list[subprocess.Popen] = []
    try:
        import django

        django.setup()
        import redis
        from django.core.management import call_command
        from django.db import connection, transaction

        from bench.seed import seed
        from notifications.delivery.kicks import stream_kick
        from notifications.ratelimit import RateLimiter

        client = redis.Redis.from_url(redis_url)
        RateLimiter(client).start_fresh()
        call_command("migrate", verbosity=0)
        seeded = seed(active_orgs=args.orgs, members=1, total_orgs=args.orgs, inactive_members=0,
                      slack_token="xoxb-bench-token")
        org_ids = seeded["active_org_ids"]
        env = stack_env(args, db_url, redis_url, free_port(), slack_port, str(tmp / "prom"))
        (tmp / "prom").mkdir()
        command = args.command or dict(procfile_entries())["providers"]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.support.fakeslack", "--port", str(slack_port), "--rate", "1",
             "--burst", "3", "--global-per-minute", str(args.slack_global_per_minute),
             *(["--slow", "1", "--slow-seconds", str(args.slack_latency)] if args.slack_latency else [])],
            cwd=REPO, env=env,
            stdout=open(tmp / "slack.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True))
        worker = subprocess.Popen(["sh", "-c", f"exec {command}" if args.command else command], cwd=REPO, env=env,
                                  stdout=open(tmp / "providers.log", "wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        procs.append(worker)
        wait_http(f"http://127.0.0.1:{slack_port}/_control/stats")
        wait_log(tmp / "providers.log", "ready", timeout=300)
        time.sleep(2)

        with connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            own_backend = cur.fetchone()[0]
        meter = Meter(worker.pid, redis_proc.pid, db_url, args.db_name, own_backend)
        period = len(org_ids) / args.rate  # each organization on a fixed period, phases spread
        next_at = {org: i * period / len(org_ids) for i, org in enumerate(org_ids)}
        generated: dict[int, list[tuple[int, float]]] = defaultdict(list)
        spies = []
        meter.start()
        start = time.monotonic()
        last_sample = start
        profiled = False
        while (elapsed := time.monotonic() - start) < args.duration:
            due = [org for org, at in next_at.items() if at <= elapsed]
            if due:
                with transaction.atomic(), connection.cursor() as cur:
                    cur.execute(GENERATE_SQL, {"orgs": due, "counts": [1] * len(due)})
                    rows = cur.fetchall()
                for org_id, seq, at in rows:
                    generated[org_id].append((seq, float(at)))
                for org in due:
                    next_at[org] += period
                    stream_kick(org_id=org, channel="slack")
            if args.profile and not profiled and elapsed > min(5.0, args.duration / 4):
                profiled = True
                for p in [psutil.Process(worker.pid)] + psutil.Process(worker.pid).children(recursive=True):
                    if "celery" not in " ".join(p.cmdline()):
                        continue
                    out = tmp / f"provider_worker-{p.pid}.txt"
                    spies.append(subprocess.Popen(
                        [str(REPO / ".venv" / "bin" / "py-spy"), "record", "-r", "67", "-d", str(int(args.profile)),
                         "--format", "raw", "--pid", str(p.pid), "-o", str(out)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL))
            if time.monotonic() - last_sample > 5:
                meter.sample()
                last_sample = time.monotonic()
            time.sleep(max(0.0, min(0.01, min(next_at.values()) - (time.monotonic() - start))))
        gen_seconds = time.monotonic() - start
        want = {o: max(s for s, _ in v) for o, v in generated.items()}
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            with connection.cursor() as cur:
                cur.execute("SELECT organization_id, delivered_seq FROM notifications_deliverystream "
                            "WHERE channel = 'slack'")
                done = dict(cur.fetchall())
            if all(done.get(o, 0) >= s for o, s in want.items()):
                break
            time.sleep(0.1)
        drained_after = time.monotonic() - start - gen_seconds
        cpu, window = meter.stop()
        for s in spies:
            s.wait()
        stats = httpx.get(f"http://127.0.0.1:{slack_port}/_control/stats", timeout=30).json()
        messages = httpx.get(f"http://127.0.0.1:{slack_port}/_control/messages", timeout=60).json()
        with connection.cursor() as cur:
            cur.execute("SELECT status, count(*) FROM notifications_delivery GROUP BY status")
            deliveries = dict(cur.fetchall())
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        redis_proc.terminate()
        redis_proc.wait()

    events = sum(len(v) for v in generated.values())
    sl = analyse_slack({"accepted": generated}, messages)
    print()
    print(f"== provider worker cost: {len(org_ids)} orgs, {args.rate:.0f} events/s for {args.duration:.0f}s, Slack "
          f"1/s per channel, {args.slack_global_per_minute}/min global"
          f"{f', answering in {args.slack_latency * 1000:.0f} ms' if args.slack_latency else ''} ==")
    print(f"worker                   {command}")
    print(f"events                   {events} generated ({events / gen_seconds:.1f}/s), drained "
          f"{drained_after:.1f}s after the load; Slack requests {stats['requests']}, mean batch "
          f"{sl['mean_batch']:.2f}; deliveries {deliveries}")
    print(f"event -> Slack           p50 {pct(sl['latencies'], 50) * 1000:.0f} ms, p95 "
          f"{pct(sl['latencies'], 95) * 1000:.0f} ms, p99 {pct(sl['latencies'], 99) * 1000:.0f} ms")
    print(f"lost / order / dups      lost {sl['lost']}, order violations {sl['violations']}, duplicates "
          f"{sl['duplicates']}; limit breaches {stats['breaches']}")
    print(f"CPU over {window:.1f}s window")
    requests = max(1, stats["requests"])
    for group in ("provider worker", "  celery parent", "  pool children", "postgres (worker backends)", "redis"):
        v = cpu.get(group, 0.0)
        print(f"  {group:<28} {v:7.2f} s  {v * 1000 / max(1, events):6.2f} ms/event  "
              f"{v * 1000 / requests:6.2f} ms/request")
    total = sum(v for g, v in cpu.items() if not g.startswith(" "))
    print(f"CPU per event            {total * 1000 / max(1, events):.2f} ms (worker + its Postgres + Redis); "
          f"per Slack request {total * 1000 / requests:.2f} ms")
    print(f"machine                  load average {os.getloadavg()[0]:.1f} on {psutil.cpu_count()} cores")
    print(f"logs                     {tmp}")


if __name__ == "__main__":
    main()
