"""Run one Celery worker per org partition queue, each at concurrency 1 (DESIGN.md, Ordering 2).

`--partitions 0-3` runs a subset, so partitions can be spread across hosts. A worker that exits
is restarted; SIGINT/SIGTERM stop them all."""
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


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
        procs: dict[int, subprocess.Popen] = {}
        stopping = False

        def spawn(k: int) -> subprocess.Popen:
            return subprocess.Popen([
                sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", f"org-{k}", "-c", "1",
                "-n", f"org-{k}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-l", loglevel, "--prefetch-multiplier", "1",
            ])

        def stop(signum, frame):
            nonlocal stopping
            stopping = True
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for k in ks:
            procs[k] = spawn(k)
        self.stdout.write(f"partition workers running for org-{ks[0]}..org-{ks[-1]} ({len(ks)} queues)")
        while not stopping:
            time.sleep(1)
            for k, proc in list(procs.items()):
                if proc.poll() is not None and not stopping:
                    self.stderr.write(f"worker org-{k} exited with {proc.returncode}; restarting")
                    procs[k] = spawn(k)
        deadline = time.monotonic() + 20
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
