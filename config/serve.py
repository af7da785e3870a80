"""Run the web tier: several server processes on one port, so it uses every core.

Each process runs Django's sync views on one thread; one process per core is how it scales on a
host. This parent binds one listening socket per child on the same port with SO_REUSEPORT (the
kernel spreads new connections evenly over them; with one shared socket, whichever process woke
first took nearly every keep-alive connection and the others idled), hands each child its
descriptor (`--fd`), restarts a child that dies (its socket stays open meanwhile, so connections
queue rather than fail), and stops them all on SIGINT/SIGTERM.

By default every process is Daphne and serves both HTTP and /ws/. `--ws-processes M`
(WEB_WS_PROCESSES) splits the tier: the `--processes` N serve HTTP on `--port`, and M Daphne
processes serve /ws/ on `--ws-port` (HERALD_WS_PORT, default port + 1), so a refusal or an API
answer never waits in an event loop behind socket writes. The HTTP processes are told the socket
port (HERALD_WS_PORT) and render it into the pages (LIVE_WEBSOCKET_URL, see
config.context_processors). `--server` (WEB_SERVER) picks the HTTP server: daphne, or uvicorn /
granian where installed (docs/benchmarks.md compares them).

    python -m config.serve --host 127.0.0.1 --port 8000 --processes 2
    python -m config.serve --port 8000 --processes 2 --ws-processes 1    # HTTP :8000, /ws/ :8001
"""
import argparse
import importlib.util
import os
import socket
import subprocess
import sys

from config.supervise import Supervisor

SERVERS = ("daphne", "uvicorn", "granian")


def listen(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on host:port (port 0: the first free one, shared by the others)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if count > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        sock.listen(1024)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def server_command(server: str, fd: int, websockets: bool) -> list[str]:
    app = "config.asgi:application"
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--fd", str(fd), "--proxy-headers", "--loop", "uvloop",
                "--http", "httptools", "--lifespan", "off", "--no-access-log", "--log-level", "warning",
                *([] if websockets else ["--ws", "none"]), app]
    return [sys.executable, "-m", "daphne", "--fd", str(fd), "--proxy-headers",
            "-v", os.environ.get("WEB_VERBOSITY", "1"), app]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("HERALD_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("HERALD_PORT", "8000")))
    parser.add_argument("--processes", type=int, default=int(os.environ.get("WEB_PROCESSES", "2")))
    parser.add_argument("--ws-processes", type=int, default=int(os.environ.get("WEB_WS_PROCESSES", "0")),
                        help="Daphne processes for /ws/ on --ws-port (0: every process serves both)")
    parser.add_argument("--ws-port", type=int, default=int(os.environ.get("HERALD_WS_PORT") or 0) or None,
                        help="default: --port + 1")
    parser.add_argument("--server", choices=SERVERS, default=os.environ.get("WEB_SERVER", "daphne"))
    args = parser.parse_args()
    if importlib.util.find_spec(args.server) is None:
        parser.error(f"--server {args.server}: not installed here (not in requirements.txt; docs/benchmarks.md)")

    count, ws_count = max(1, args.processes), max(0, args.ws_processes)
    # granian takes no descriptor: it binds the port itself and runs its own worker processes.
    http_sockets = listen(args.host, args.port, count if args.server != "granian" else 1)
    port = http_sockets[0].getsockname()[1]
    if args.server == "granian":
        http_sockets.pop().close()
    ws_sockets = listen(args.host, args.ws_port or port + 1, ws_count) if ws_count else []
    ws_port = ws_sockets[0].getsockname()[1] if ws_sockets else port

    # Each request's sync code runs on a thread of its own process: bound DB connections with a pool.
    child_env = dict(os.environ)
    child_env.setdefault("DB_POOL", "true")
    child_env.pop("WEB_WS_INDEX", None)
    if ws_count:  # the pages' socket address, and the socket processes' lag to read (config.admission)
        child_env.update(HERALD_WS_PORT=str(ws_port), WEB_WS_PROCESSES=str(ws_count))
    else:
        child_env.pop("HERALD_WS_PORT", None)
        child_env["WEB_WS_PROCESSES"] = "0"

    def spawn(sock: socket.socket, server: str, websockets: bool, env: dict | None = None) -> subprocess.Popen:
        fd = sock.fileno()
        return subprocess.Popen(server_command(server, fd, websockets), pass_fds=(fd,),
                                env={**child_env, **(env or {})})

    def spawn_granian() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "granian", "--interface", "asginl", "--host", args.host, "--port", str(port),
             "--workers", str(count), "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
             *([] if not ws_count else ["--no-ws"]), "config.asgi:application"], env=child_env)

    if args.server == "granian":
        spawners = {"granian": spawn_granian}
    else:
        spawners = {f"{args.server}-{i}": (lambda s=s: spawn(s, args.server, not ws_count))
                    for i, s in enumerate(http_sockets)}
    spawners.update({f"daphne-ws-{i}": (lambda i=i, s=s: spawn(s, "daphne", True, {"WEB_WS_INDEX": str(i)}))
                     for i, s in enumerate(ws_sockets)})
    if ws_count:
        print(f"web: http://{args.host}:{port} ({count} {args.server} processes for HTTP; {ws_count} Daphne "
              f"processes for live sockets at ws://{args.host}:{ws_port}/ws/)", flush=True)
    else:
        print(f"web: http://{args.host}:{port} ({count} {args.server} processes, HTTP and live sockets "
              f"at ws://{args.host}:{port}/ws/)", flush=True)
    return Supervisor("web", spawners, stop_timeout=10).run()


if __name__ == "__main__":
    sys.exit(main())
