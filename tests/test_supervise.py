"""config.supervise: a Procfile process killed with SIGKILL comes back; SIGTERM stops it and its
child; a child that cannot start is retried with a growing pause, not in a hot loop."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from config.supervise import Supervisor

CHILD = "import os, sys, time; open(sys.argv[1], 'a').write(f'{os.getpid()}\\n'); time.sleep(120)"


def pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_killed_child_is_restarted_and_sigterm_stops_everything(tmp_path):
    log = tmp_path / "pids"
    supervisor = subprocess.Popen([sys.executable, "-m", "config.supervise", "--name", "t", "--",
                                   sys.executable, "-c", CHILD, str(log)], stderr=subprocess.PIPE, text=True)
    try:
        [first] = wait_for(lambda: pids(log))
        os.kill(first, signal.SIGKILL)

        second = wait_for(lambda: pids(log)[1:])[0]  # restarted (after a 1 s pause: it died young)
        assert second != first and alive(second)

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=15) == 0
        wait_for(lambda: not alive(second), timeout=5)
        assert "exited with -9; restarting" in supervisor.stderr.read()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        for pid in pids(log):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_child_that_keeps_dying_is_restarted_with_a_growing_pause():
    spawned = []

    def spawn():
        spawned.append(time.monotonic())
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    supervisor = Supervisor("t", {"broken": spawn}, poll=0.05)
    supervisor._spawn("broken")
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        supervisor.check()
        time.sleep(0.05)
    supervisor._stop(signal.SIGTERM, None)

    gaps = [b - a for a, b in zip(spawned, spawned[1:])]
    assert 2 <= len(spawned) <= 3, spawned  # a hot loop would have spawned dozens
    assert all(g >= 0.9 for g in gaps), gaps
    if len(gaps) == 2:
        assert gaps[1] >= 1.8, gaps  # 1 s, then 2 s


def test_a_child_does_not_outlive_a_supervisor_killed_with_sigkill(tmp_path):
    """Children run in a session of their own (so a group signal reaches them once, through the
    supervisor); if the supervisor itself is SIGKILLed they are told to stop (PR_SET_PDEATHSIG)."""
    log = tmp_path / "pids"
    supervisor = subprocess.Popen([sys.executable, "-m", "config.supervise", "--name", "t", "--",
                                   sys.executable, "-c", CHILD, str(log)], stderr=subprocess.DEVNULL)
    try:
        [child] = wait_for(lambda: pids(log))
        assert os.getpgid(child) != os.getpgid(supervisor.pid)  # its own process group

        supervisor.kill()
        supervisor.wait(timeout=5)

        wait_for(lambda: not alive(child), timeout=5)
    finally:
        for pid in pids(log):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
