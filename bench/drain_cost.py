"""Benchmark: the CPU of one drain, in process, without Celery or the web tier (issue 12).

Seeds N organizations x M members (Slack each), appends one tracker entry per organization the
way the API does, then runs the partition worker's and the provider worker's drain
(`stream_drain`: lock, read, fan-out or Slack post, cursor, publish) once per organization and
prints CPU per drain of this process and of its Postgres backend, and the statements per drain.
Production settings (DEBUG off); Slack is the local stand-in (a process of its own, not counted).
A single process on a busy box: the CPU figures are robust, wall-clock ones are not.

    .venv/bin/python bench/drain_cost.py --orgs 300 --members 10
    .venv/bin/python bench/drain_cost.py --orgs 300 --profile inapp     # cProfile of the in-app drains
    .venv/bin/python bench/drain_cost.py --orgs 300 --partition         # in-app through drain_partition

`--partition`: the in-app streams are drained as the partition workers drain them, by one
`partition_drain` per partition over its dirty set (every organization kicked, batches of
DELIVERY_PARTITION_BATCH, one publish per batch), instead of one `stream_drain` per organization.
"""
import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import setup_database, wait_http  # noqa: E402
from bench.capacity import free_port  # noqa: E402


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orgs", type=int, default=300)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3,
                    help="entries per organization, one drain each (the first counts statements, the rest CPU)")
    ap.add_argument("--profile", choices=["inapp", "slack"], help="cProfile that channel's drains")
    ap.add_argument("--partition", action="store_true", help="in-app through partition_drain (see above)")
    ap.add_argument("--db-name", default="herald_drain_cost")
    args = ap.parse_args()

    from cryptography.fernet import Fernet

    slack_port = free_port()
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "config.settings.production", "DEBUG": "false", "SECRET_KEY": "bench-" + "x" * 50,
        "HERALD_BASE_URL": "http://127.0.0.1:1", "SECURE_SSL_REDIRECT": "false", "LOG_LEVEL": "WARNING",
        "SLACK_API_URL": f"http://127.0.0.1:{slack_port}/api/", "SLACK_GLOBAL_PER_MINUTE": "1000000",
    })
    os.environ.setdefault("HERALD_ENCRYPTION_KEYS", Fernet.generate_key().decode())
    setup_database(args, os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.production"
    tmp = Path(tempfile.mkdtemp(prefix="herald-drain-cost-"))
    slack = subprocess.Popen([sys.executable, "-m", "tests.support.fakeslack", "--port", str(slack_port),
                              "--rate", "1000", "--burst", "1000"], cwd=REPO, stdout=open(tmp / "slack.log", "wb"),
                             stderr=subprocess.STDOUT)
    try:
        import django

        django.setup()
        import redis
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connection, transaction
        from django.test.utils import CaptureQueriesContext

        from bench.seed import seed
        from notifications import publish
        from config.routing import org_partition
        from notifications.delivery import kicks
        from notifications.delivery.drain import partition_drain, stream_drain
        from notifications.ratelimit import RateLimiter

        client = redis.Redis.from_url(settings.REDIS_URL)
        client.flushdb()
        RateLimiter(client).start_fresh()
        call_command("migrate", verbosity=0)
        seeded = seed(active_orgs=args.orgs, members=args.members, total_orgs=args.orgs, inactive_members=0,
                      slack_token="xoxb-bench-token")
        wait_http(f"http://127.0.0.1:{slack_port}/_control/stats")
        org_ids = seeded["active_org_ids"]
        trackers = seeded["trackers"]
        backend = connection.cursor().execute("SELECT pg_backend_pid()").fetchone()[0]
        totals = {"inapp": [0.0, 0.0, 0, 0], "slack": [0.0, 0.0, 0, 0]}  # cpu, pg cpu, queries, drains
        # CPU time, not wall time: the waits on Postgres and Slack are not this process's cost.
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        for round_no in range(args.rounds):
            for org_id in org_ids:  # as the API appends them (the kick's Celery message is not consumed)
                with transaction.atomic():
                    publish.publish(organization_id=org_id, kind="tracker.event",
                                    payload={"tracker_id": trackers[org_id], "tracker_name": "Main tracker",
                                             "action": "start" if round_no % 2 == 0 else "stop"})
            client.flushdb()  # the kick flags the appends set (no worker consumes their messages)
            RateLimiter(client).start_fresh()
            for channel in ("inapp", "slack"):
                t = totals[channel]
                if channel == "inapp" and args.partition:  # kicked as on commit, then one task per partition
                    for org_id in org_ids:
                        kicks.partition_kick(partition=org_partition(org_id),
                                             members=[kicks.stream_member(org_id, "inapp")])
                    partitions = sorted({org_partition(org_id) for org_id in org_ids})

                    def drain_all() -> int:
                        return sum(partition_drain(partition=k, linger_seconds=0, budget_seconds=600).count
                                   for k in partitions)

                    if round_no == 0:  # statements counted on the first round, CPU on the others
                        with CaptureQueriesContext(connection) as queries:
                            assert drain_all() == len(org_ids)
                        t[2] = len(queries.captured_queries) / len(org_ids)
                        continue
                    t0, p0 = time.process_time(), _proc_cpu(backend)
                    if profiler and args.profile == channel:
                        profiler.enable()
                    done = drain_all()
                    if profiler and args.profile == channel:
                        profiler.disable()
                    assert done == len(org_ids), done
                    t[0] += time.process_time() - t0
                    t[1] += _proc_cpu(backend) - p0
                    t[3] += len(org_ids)
                    continue
                if round_no == 0:  # statements counted on the first round, CPU on the others
                    with CaptureQueriesContext(connection) as queries:
                        for org_id in org_ids:
                            stream_drain(org_id=org_id, channel=channel)
                    t[2] = len(queries.captured_queries) / len(org_ids)
                    continue
                t0, p0 = time.process_time(), _proc_cpu(backend)
                if profiler and args.profile == channel:
                    profiler.enable()
                for org_id in org_ids:
                    result = stream_drain(org_id=org_id, channel=channel)
                    assert result.count == 1, (channel, org_id, result)
                if profiler and args.profile == channel:
                    profiler.disable()
                t[0] += time.process_time() - t0
                t[1] += _proc_cpu(backend) - p0
                t[3] += len(org_ids)
        how = "in-app by partition_drain (every round)" if args.partition else "one drain per entry"
        print(f"== drain cost: {args.orgs} orgs x {args.members} members, {args.rounds} entries each, {how}, "
              f"production settings ==")
        for channel, (cpu, pg, n_queries, drains) in totals.items():
            print(f"{channel:6} {cpu * 1000 / drains:6.2f} ms CPU per drain (this process), Postgres backend "
                  f"{pg * 1000 / drains:5.2f} ms, {n_queries:.1f} statements per drain ({drains} drains measured)")
        print(f"machine: load average {os.getloadavg()[0]:.1f}")
        if profiler:
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(int(os.environ.get("PROFILE_LINES", "45")))
    finally:
        slack.terminate()
        slack.wait()


if __name__ == "__main__":
    main()
