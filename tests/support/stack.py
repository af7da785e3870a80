"""Runs Herald's real processes (Daphne, Celery workers, beat) against the test database, for
tests and benchmarks.

Children get the environment of the calling process's database and Redis: DATABASE_URL is built
from `django.db.connection.settings_dict` (under pytest its NAME is the test database),
REDIS_URL / TEST_REDIS_URL from settings.REDIS_URL, DJANGO_SETTINGS_MODULE=config.settings.test,
SLACK_API_URL pointing at the fake Slack, plus overrides. Each child runs in its own process
group, so `kill(name, signal.SIGKILL)` also takes a prefork worker's pool children with it.
Output goes to one log file per process under a temporary directory (kept when
HERALD_STACK_KEEP_LOGS is set).

    with Stack(slack_url=fake.base_url, env={"SWEEP_INTERVAL_SECONDS": "1"}) as stack:
        stack.start_daphne()
        stack.start_worker("orgs-a", queues=DELIVERY_QUEUES)
        stack.wait_ready()
        with stack.dump_logs_on_failure():
            ...
"""
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Every queue a delivery task can be routed to (config.routing): the org partitions and the
# provider queue. A worker on all of them can run any stream's drain.
DELIVERY_QUEUES = [f"org-{k}" for k in range(8)] + ["providers"]
BIN = Path(sys.executable).parent
WORKER_READY = re.compile(r"@\S+ ready\.")
BEAT_READY = re.compile(r"beat: Starting|Scheduler: Sending|DatabaseScheduler: Schedule changed")


# `python -c _CLOCK_OFFSET_BOOT <seconds> <celery args>`: celery with time.time() shifted (prefork
# pool children inherit the patch).
_CLOCK_OFFSET_BOOT = (
    "import sys, time; offset = float(sys.argv.pop(1)); real = time.time; "
    "time.time = lambda: real() + offset; sys.argv[0] = 'celery'; "
    "from celery.__main__ import main; sys.exit(main())"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(settings_dict: dict | None = None) -> str:
    """postgres:// URL of Django's default connection (the test database under pytest)."""
    if settings_dict is None:
        from django.db import connection

        settings_dict = connection.settings_dict
    user = quote(settings_dict.get("USER") or "", safe="")
    password = quote(settings_dict.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or (settings_dict.get("OPTIONS") or {}).get("host") or "127.0.0.1"
    port = settings_dict.get("PORT") or "5432"
    name = quote(settings_dict["NAME"], safe="")
    if host.startswith("/"):  # a unix socket directory (the embedded server): as config.backing spells it
        if host == host.lower():
            return f"postgres://{auth}{quote(host, safe='')}:{port}/{name}"
        return f"postgres://{auth}/{name}?host={quote(host, safe='/')}&port={port}"
    return f"postgres://{auth}{host}:{port}/{name}"


def child_env(*, slack_url: str | None = None, overrides: dict | None = None) -> dict[str, str]:
    """The environment every child process gets (see the module docstring)."""
    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "TEST_REDIS_URL": settings.REDIS_URL,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    })
    if slack_url:
        env["SLACK_API_URL"] = slack_url
    env.update({k: str(v) for k, v in (overrides or {}).items()})
    return env


class DbConnectionMonitor:
    """Samples how many server connections the database has (pg_stat_activity) on a thread; `peak`
    is the most seen. For leaks: every process of the stack is a client of the same database."""

    def __init__(self, url: str | None = None, interval: float = 0.2):
        self.url, self.interval = url or database_url(), interval
        self.name = self.url.rsplit("/", 1)[1]
        self.peak = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-connection-monitor", daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                (count,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                        [self.name]).fetchone()
                self.samples.append(count)
                self.peak = max(self.peak, count)
                self._stop.wait(self.interval)

    def __enter__(self) -> "DbConnectionMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class Proc:
    name: str
    kind: str  # daphne | worker | beat | other
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    port: int | None = None
    popen: subprocess.Popen | None = None
    log_offset: int = 0  # readiness is looked for after this offset (restarts append to the log)
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class StackError(RuntimeError):
    pass


class Stack:
    def __init__(self, *, slack_url: str | None = None, env: dict | None = None, workdir: str | None = None,
                 keep_logs: bool = False):
        self.slack_url = slack_url
        self.env_overrides = dict(env or {})
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="herald-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_logs = keep_logs or bool(os.environ.get("HERALD_STACK_KEEP_LOGS"))
        self.procs: dict[str, Proc] = {}

    # --- starting ------------------------------------------------------------------------------

    def _env(self, extra: dict | None) -> dict[str, str]:
        return child_env(slack_url=self.slack_url, overrides={**self.env_overrides, **(extra or {})})

    def add(self, name: str, argv: list[str], *, kind: str = "other", env: dict | None = None,
            port: int | None = None, start: bool = True) -> Proc:
        if name in self.procs and self.procs[name].alive():
            raise StackError(f"{name} is already running")
        proc = Proc(name=name, kind=kind, argv=argv, log_path=self.workdir / f"{name}.log",
                    env=self._env(env), port=port)
        self.procs[name] = proc
        if start:
            self._spawn(proc)
        return proc

    def _spawn(self, proc: Proc) -> None:
        with open(proc.log_path, "ab") as log:
            proc.log_offset = log.tell()
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {proc.name}: {' '.join(proc.argv)}\n".encode())
            log.flush()
            proc.popen = subprocess.Popen(
                proc.argv, cwd=self.workdir, env=proc.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,  # own process group: kill takes the pool too
            )

    def start_daphne(self, name: str = "web", port: int | None = None, env: dict | None = None) -> Proc:
        port = port or free_port()
        argv = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
        return self.add(name, argv, kind="daphne", env=env, port=port)

    def start_web(self, name: str = "web", *, processes: int = 1, ws_processes: int = 1, env: dict | None = None,
                  server: str = "daphne") -> Proc:
        """The web tier as the Procfile runs it (`config.serve`): `processes` HTTP processes on one port
        and, with `ws_processes`, Daphne processes for /ws/ on another (`ws_url` points there)."""
        port, ws_port = free_port(), free_port()
        argv = [sys.executable, "-m", "config.serve", "--host", "127.0.0.1", "--port", str(port),
                "--processes", str(processes), "--ws-processes", str(ws_processes), "--ws-port", str(ws_port),
                "--server", server]
        proc = self.add(name, argv, kind="daphne", env=env, port=port)
        proc.extra["ws_port"] = ws_port if ws_processes else port
        return proc

    def start_worker(self, name: str, queues: list[str] | str, *, concurrency: int = 1, pool: str = "prefork",
                     loglevel: str = "INFO", extra_args: list[str] | None = None, env: dict | None = None,
                     clock_offset: float = 0.0, start: bool = True) -> Proc:
        """A Celery worker. `clock_offset` shifts the worker's time.time() (a host whose wall clock is
        off, or stepped by NTP); datetime and the database clock are left alone."""
        queues = queues if isinstance(queues, str) else ",".join(queues)
        python = [sys.executable, "-c", _CLOCK_OFFSET_BOOT, str(clock_offset)] if clock_offset else \
            [sys.executable, "-m", "celery"]
        argv = [*python, "-A", "config", "worker", "-Q", queues, "-c", str(concurrency),
                "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-P", pool, "-l", loglevel, "--prefetch-multiplier", "1", *(extra_args or [])]
        return self.add(name, argv, kind="worker", env=env, start=start)

    def start_beat(self, name: str = "beat", env: dict | None = None) -> Proc:
        argv = [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "INFO",
                "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler",
                "--pidfile", str(self.workdir / f"{name}.pid")]
        return self.add(name, argv, kind="beat", env=env)

    # --- readiness -----------------------------------------------------------------------------

    def url(self, name: str = "web") -> str:
        return f"http://127.0.0.1:{self.procs[name].port}"

    def ws_url(self, name: str = "web") -> str:
        proc = self.procs[name]
        return f"ws://127.0.0.1:{proc.extra.get('ws_port', proc.port)}"

    def _ready(self, proc: Proc) -> bool:
        if proc.kind == "daphne":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/healthz", timeout=1) as resp:
                    return resp.status == 200
            except (urllib.error.URLError, OSError):
                return False
        pattern = {"worker": WORKER_READY, "beat": BEAT_READY}.get(proc.kind)
        if pattern is None:
            return True
        return bool(pattern.search(self._read_log(proc, since_start=True)))

    def wait_ready(self, *names: str, timeout: float = 60.0) -> None:
        """Wait until every named (default: every) process is ready; raise with its log if one dies."""
        pending = list(names or [name for name, proc in self.procs.items() if proc.popen is not None])
        deadline = time.monotonic() + timeout
        while pending:
            for name in list(pending):
                proc = self.procs[name]
                if not proc.alive():
                    raise StackError(f"{name} exited with {proc.popen.returncode if proc.popen else None} "
                                     f"before it was ready:\n{self.log_tail(name, 60)}")
                if self._ready(proc):
                    pending.remove(name)
            if pending and time.monotonic() > deadline:
                tails = "\n".join(self.log_tail(n, 40) for n in pending)
                raise StackError(f"not ready after {timeout}s: {pending}\n{tails}")
            if pending:
                time.sleep(0.1)

    @staticmethod
    def node(name: str) -> str:
        """The Celery node name of worker `name` (started with -n name@%h)."""
        return f"{name}@{socket.gethostname()}"

    # --- faults and stopping ---------------------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: bool = True) -> None:
        """Signal the whole process group (a prefork worker's pool children included)."""
        proc = self.procs[name]
        if proc.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)
        if wait and sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)
            if sig == signal.SIGKILL:
                self._wait_group_gone(proc.popen.pid, timeout=5)

    def _wait_group_gone(self, pgid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.group_pids(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def start(self, name: str) -> Proc:
        """Start a process added with start=False (or stopped)."""
        proc = self.procs[name]
        if proc.alive():
            raise StackError(f"{name} is already running")
        self._spawn(proc)
        return proc

    def pause(self, name: str) -> None:
        """SIGSTOP the process group: alive but unresponsive (a long GC pause, a starved host)."""
        self.kill(name, signal.SIGSTOP, wait=False)

    def resume(self, name: str) -> None:
        self.kill(name, signal.SIGCONT, wait=False)

    def restart(self, name: str, wait: bool = True, timeout: float = 60.0) -> Proc:
        proc = self.procs[name]
        if proc.alive():
            self.kill(name, signal.SIGTERM)
            if proc.alive():
                self.kill(name, signal.SIGKILL)
        self._spawn(proc)
        if wait:
            self.wait_ready(name, timeout=timeout)
        return proc

    def stop_all(self, timeout: float = 5.0) -> None:
        """SIGTERM every group at once, SIGKILL what is left after `timeout`."""
        live = [p for p in self.procs.values() if p.alive()]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
                os.killpg(proc.popen.pid, signal.SIGCONT)  # a paused process must run to exit
        deadline = time.monotonic() + timeout
        for proc in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.05, deadline - time.monotonic()))
        for proc in self.procs.values():
            if proc.popen is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)  # stragglers, and orphaned pool children
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
            self._wait_group_gone(proc.popen.pid, timeout=5)

    def close(self) -> None:
        self.stop_all()
        if self._own_workdir and not self.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and not issubclass(exc_type, (KeyboardInterrupt,)):
                self.dump_logs()
        finally:
            self.close()

    # --- inspection ----------------------------------------------------------------------------

    @staticmethod
    def group_pids(pgid: int) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields_after_comm = stat.rsplit(")", 1)[1].split()
            if fields_after_comm[0] != "Z" and int(fields_after_comm[2]) == pgid:
                pids.append(int(entry))
        return pids

    def pids(self, name: str) -> list[int]:
        proc = self.procs[name]
        return self.group_pids(proc.popen.pid) if proc.popen else []

    def owner_of_local_port(self, port: int) -> str | None:
        """Which of our processes has a TCP socket bound locally to `port` (e.g. the worker whose
        request the fake Slack is answering)."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as fh:
                    next(fh)
                    for line in fh:
                        parts = line.split()
                        if int(parts[1].rsplit(":", 1)[1], 16) == port:
                            inodes.add(parts[9])
            except OSError:
                continue
        targets = {f"socket:[{inode}]" for inode in inodes if inode != "0"}
        if not targets:
            return None
        for name in self.procs:
            for pid in self.pids(name):
                with contextlib.suppress(OSError):
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        with contextlib.suppress(OSError):
                            if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                                return name
        return None

    def _read_log(self, proc: Proc, since_start: bool = False) -> str:
        try:
            with open(proc.log_path, "rb") as fh:
                if since_start:
                    fh.seek(proc.log_offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log(self, name: str) -> str:
        return self._read_log(self.procs[name])

    def log_tail(self, name: str, lines: int = 80) -> str:
        text = self.log(name).splitlines()[-lines:]
        return f"===== {name} ({self.procs[name].log_path}) =====\n" + "\n".join(text)

    def dump_logs(self, lines: int = 80, file=None) -> None:
        out = file or sys.stdout
        for name in self.procs:
            print(self.log_tail(name, lines), file=out)
        out.flush()

    @contextlib.contextmanager
    def dump_logs_on_failure(self, lines: int = 80):
        """Print every process's log tail if the block raises (pytest shows it with the failure)."""
        try:
            yield self
        except BaseException:
            self.dump_logs(lines)
            raise
