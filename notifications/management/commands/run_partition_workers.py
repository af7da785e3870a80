"""Run one Celery worker per org partition queue, each at concurrency 1 (DESIGN.md, Ordering 2).

`--partitions 0-3` runs a subset, so partitions can be spread across hosts. A worker that exits
is restarted; SIGINT/SIGTERM stop them all."""
import os
import subprocess
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.supervise import Supervisor


def _parse(spec: str, total: int) -> list[int]:
    if not spec:
        return list(range(total))
    result: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        result += list(range(int(lo), int(hi or lo) + 1))
    if any(k < 0 or k >= total for k in result):
        raise CommandError(f"partitions must be within 0..{total - 1}")
    return sorted(set(result))


class Command(BaseCommand):
    help = "Run a Celery worker (concurrency 1) for each org-<k> partition queue."

    def add_arguments(self, parser):
        parser.add_argument("--partitions", default="", help="e.g. 0-3,6 (default: all)")
        parser.add_argument("--loglevel", default="WARNING")

    def handle(self, *args, partitions: str, loglevel: str, **options):
        ks = _parse(partitions, settings.ORG_QUEUE_PARTITIONS)

        # Only deliver_stream runs here, and it retries an OperationalError: no `SELECT 1` health
        # check per task (config.settings.base, DB_CONN_HEALTH_CHECKS).
        env = {**os.environ, "DB_CONN_HEALTH_CHECKS": os.environ.get("DB_CONN_HEALTH_CHECKS", "false")}

        def spawn(k: int) -> subprocess.Popen:
            return subprocess.Popen([
                sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", f"org-{k}", "-c", "1",
                "-n", f"org-{k}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-l", loglevel, "--prefetch-multiplier", "1",
            ], env=env)

        self.stdout.write(f"partition workers running for org-{ks[0]}..org-{ks[-1]} ({len(ks)} queues)")
        self.stdout.flush()
        Supervisor("orgs", {f"org-{k}": (lambda k=k: spawn(k)) for k in ks}).run()
