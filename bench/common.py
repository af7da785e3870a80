"""Plumbing shared by the benchmarks: processes, readiness, a database of their own, analysis."""
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse, urlunparse

REPO = Path(__file__).resolve().parent.parent


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


class Procs:
    def __init__(self, logdir: Path, env: dict):
        self.logdir, self.env, self.procs = logdir, env, {}

    def start(self, name: str, argv: list[str]) -> None:
        log = open(self.logdir / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wait_http(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def provider_worker_argv(py: str, concurrency: int = 4) -> list[str]:
    """The Procfile's `providers` process: Slack and email sends, several at once."""
    return [py, "-m", "celery", "-A", "config", "worker", "-Q", "providers", "-c", str(concurrency),
            "-n", "providers@%h", "--without-gossip", "--without-mingle", "-l", "INFO", "--prefetch-multiplier", "1"]


def wait_log(path: Path, needle: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{path.name}: '{needle}' not seen")


def setup_database(args, base_db_url: str) -> str:
    import psycopg

    parsed = urlparse(base_db_url)
    db_url = urlunparse(parsed._replace(path=f"/{args.db_name}"))
    admin_url = urlunparse(parsed._replace(path="/postgres"))
    os.environ["DATABASE_URL"] = db_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.local"
    os.environ["DEBUG"] = "false"
    import dj_database_url

    params = dj_database_url.parse(admin_url)
    conninfo = {"dbname": "postgres", "user": params["USER"], "host": params["HOST"] or None,
                "port": params["PORT"] or None}
    if params.get("PASSWORD"):
        conninfo["password"] = params["PASSWORD"]
    with psycopg.connect(**{k: v for k, v in conninfo.items() if v is not None}, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{args.db_name}"')
    return db_url


def analyse_slack(result, messages: list[dict]) -> dict:
    occurred = {}
    for org_id, evs in result["accepted"].items():
        for seq, t in evs:
            occurred[(org_id, seq)] = t
    per_org: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    for m in messages:  # in the order the stand-in accepted them
        if m.get("org_id") is not None:
            per_org[int(m["org_id"])].append((int(m["first_seq"]), int(m["last_seq"]), float(m["time"])))
    latencies, violations, lost, dups, batch_sizes = [], 0, 0, 0, []
    for org_id, evs in result["accepted"].items():
        ranges = per_org.get(org_id, [])
        seen: dict[int, int] = defaultdict(int)
        last = 0
        for first, last_seq, t in ranges:  # in arrival order
            if first <= last:
                if last_seq > last:
                    violations += 1  # overlaps and extends: out of order
            elif first != last + 1:
                violations += 1  # a gap: something behind overtook
            last = max(last, last_seq)
            batch_sizes.append(last_seq - first + 1)
            for s in range(first, last_seq + 1):
                seen[s] += 1
                if seen[s] == 1 and (org_id, s) in occurred:
                    latencies.append(t - occurred[(org_id, s)])
        dups += sum(c - 1 for c in seen.values() if c > 1)
        lost += len({s for s, _ in evs} - set(seen))
    return {"latencies": latencies, "violations": violations, "lost": lost, "duplicates": dups,
            "mean_batch": statistics.mean(batch_sizes) if batch_sizes else 0, "requests": len(batch_sizes)}


def pgbench_ceiling(db_url: str, clients: int, seconds: int = 10) -> str:
    import dj_database_url

    p = dj_database_url.parse(db_url)
    env = dict(os.environ, PGHOST=p["HOST"] or "127.0.0.1", PGPORT=str(p["PORT"] or 5432), PGUSER=p["USER"],
               PGDATABASE=p["NAME"])
    subprocess.run(["psql", "-q", "-c", "CREATE TABLE IF NOT EXISTS bench_ceiling (id bigserial primary key, "
                    "org bigint, at timestamptz default now())"], env=env, check=True)
    # The stack just stopped: its backends may still be exiting (max_connections would refuse pgbench).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        busy = subprocess.run(["psql", "-Atq", "-c", "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                               "current_database() AND pid <> pg_backend_pid()"], env=env, capture_output=True,
                              text=True).stdout.strip()
        if busy == "0":
            break
        time.sleep(0.5)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("INSERT INTO bench_ceiling (org) VALUES (1);\n")
    out = subprocess.run(["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", f.name],
                         env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("tps"):
            return line.strip()
    return (out.stdout + out.stderr).strip()[-300:]
