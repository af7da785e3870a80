"""Keep processes running: restart one that exits, stop them all on SIGINT/SIGTERM.

`make run` starts the Procfile under honcho, which stops *everything* as soon as one process
exits. A Celery worker killed by the OOM killer or by `kill -9` must not take the whole stack down
with it, so every long-running Procfile entry runs under a supervisor: the web tier
(`config.serve`), the partition workers (`run_partition_workers`) and, through this module's
command line, the default worker, the provider worker and beat. In production the same entries
run under systemd or Kubernetes, which restart them too.

    python -m config.supervise --name providers -- celery -A config worker -Q providers -c 4

A child that dies soon after it started is restarted after a growing pause (1 s doubling to 30 s),
so a process that cannot start (broker down, bad settings) does not spin.
"""
import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable

QUICK_EXIT_SECONDS = 5.0
MAX_PAUSE_SECONDS = 30.0


class Supervisor:
    """Runs one child per name, from `spawners[name]()`, until SIGINT/SIGTERM."""

    def __init__(self, label: str, spawners: dict[str, Callable[[], subprocess.Popen]],
                 stop_timeout: float = 20.0, poll: float = 0.5):
        self.label, self.spawners, self.stop_timeout, self.poll = label, spawners, stop_timeout, poll
        self.children: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}
        self.pause: dict[str, float] = {name: 0.0 for name in spawners}
        self.restart_at: dict[str, float] = {}
        self.stopping = False

    def say(self, text: str) -> None:
        sys.stderr.write(f"{self.label}: {text}\n")
        sys.stderr.flush()

    def _spawn(self, name: str) -> None:
        self.children[name] = self.spawners[name]()
        self.started[name] = time.monotonic()

    def _stop(self, signum, frame) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def check(self) -> None:
        """Restart children that exited (once their pause is over)."""
        now = time.monotonic()
        for name, child in list(self.children.items()):
            if self.stopping or child.poll() is None:
                continue
            if name not in self.restart_at:
                quick = now - self.started[name] < QUICK_EXIT_SECONDS
                self.pause[name] = min(MAX_PAUSE_SECONDS, max(1.0, self.pause[name] * 2)) if quick else 0.0
                self.restart_at[name] = now + self.pause[name]
                self.say(f"{name} (pid {child.pid}) exited with {child.returncode}; "
                         f"restarting{f' in {self.pause[name]:.0f}s' if self.pause[name] else ''}")
            if now >= self.restart_at[name]:
                del self.restart_at[name]
                self._spawn(name)

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        for name in self.spawners:
            self._spawn(name)
        while not self.stopping:
            time.sleep(self.poll)
            self.check()
        deadline = time.monotonic() + self.stop_timeout
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        return 0


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn_isolated(argv: list[str]) -> subprocess.Popen:
    """Start `argv` in a session of its own, so a signal sent to the supervisor's process group
    (Ctrl-C, honcho's stop) reaches the child once, from the supervisor, and not twice (celery beat
    signalled both ways at once could hang past honcho's 5 s grace)."""
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=_die_with_parent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="child", help="label in the supervisor's messages")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to keep running")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command is required after --")
    return Supervisor(args.name, {args.name: lambda: spawn_isolated(command)}).run()


if __name__ == "__main__":
    sys.exit(main())
