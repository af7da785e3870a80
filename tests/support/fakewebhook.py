"""A webhook receiver on loopback for tests: records every POST (headers, body), answers with a
configurable status (a queue of statuses, then a default), optionally slowly."""
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeWebhook:
    def __init__(self):
        self.requests: list[dict] = []
        self.answers: deque = deque()  # (status, headers) answered first, in order
        self.default = (200, {})
        self.slow_seconds = 0.0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> "FakeWebhook":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, *statuses, headers: dict | None = None) -> None:
        with self._lock:
            self.answers.extend((s, headers or {}) for s in statuses)

    def bodies(self) -> list[dict]:
        with self._lock:
            return [json.loads(r["body"]) for r in self.requests]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with fake._lock:
                    status, headers = fake.answers.popleft() if fake.answers else fake.default
                    fake.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                          "body": body, "status": status, "time": time.time()})
                    slow = fake.slow_seconds
                if slow:
                    time.sleep(slow)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        return Handler
