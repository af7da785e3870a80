"""Run several Daphne processes on one port, so the web tier uses every core.

Daphne runs Django's sync views on one thread per process; one process per core is how it scales
on a host. This parent binds one listening socket per child on the same port with SO_REUSEPORT
(the kernel spreads new connections evenly over them; with one shared socket, whichever process
woke first took nearly every keep-alive connection and the others idled), hands each child its
descriptor (`daphne --fd`), restarts a child that dies (its socket stays open meanwhile, so
connections queue rather than fail), and stops them all on SIGINT/SIGTERM.

    python -m config.serve --host 127.0.0.1 --port 8000 --processes 2
"""
import argparse
import os
import socket
import subprocess
import sys

from config.supervise import Supervisor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("HERALD_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("HERALD_PORT", "8000")))
    parser.add_argument("--processes", type=int, default=int(os.environ.get("WEB_PROCESSES", "2")))
    args = parser.parse_args()

    count = max(1, args.processes)
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if count > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((args.host, args.port))
        args.port = sock.getsockname()[1]  # --port 0: the others join the port the first one got
        sock.listen(1024)
        sock.set_inheritable(True)
        sockets.append(sock)

    # Daphne runs each request's sync code on its own thread: bound DB connections with a pool.
    child_env = dict(os.environ)
    child_env.setdefault("DB_POOL", "true")

    def spawn(i: int) -> subprocess.Popen:
        fd = sockets[i].fileno()
        return subprocess.Popen(
            [sys.executable, "-m", "daphne", "--fd", str(fd), "--proxy-headers",
             "-v", os.environ.get("WEB_VERBOSITY", "1"), "config.asgi:application"],
            pass_fds=(fd,), env=child_env,
        )

    print(f"web: {count} Daphne processes on http://{args.host}:{args.port}", flush=True)
    return Supervisor("web", {f"daphne-{i}": (lambda i=i: spawn(i)) for i in range(count)},
                      stop_timeout=10).run()


if __name__ == "__main__":
    sys.exit(main())
