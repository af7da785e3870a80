"""The common part of the HTTP provider stand-ins (fake Twilio, FCM, WhatsApp Cloud API): a
threaded HTTP server on 127.0.0.1 that records every request and lets a test script faults.

A subclass implements `handle(request) -> (status, headers, body)` with the provider's protocol.
Faults, answered before `handle` runs, in order:
- `fail(status, *more, headers=, body=)`: the next requests get these statuses (e.g. 429 with a
  Retry-After, 500, 503) with the provider's error body (`error_body(status)` of the subclass);
- `outage = 503`: every request gets that status until `outage = None`;
- `slow_seconds = N`: wait N s before answering (a client with a shorter timeout times out after
  its request was sent);
- `down()` / `up()`: stop listening (connections are refused) and listen again on the same port.
"""
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes
    at: float
    status: int = 0
    extra: dict = field(default_factory=dict)

    def json(self):
        return json.loads(self.body or b"null")

    def form(self) -> dict:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeHTTPProvider:
    def __init__(self, port: int = 0):
        self.requests: list[Recorded] = []
        self.faults: deque = deque()
        self.outage: int | None = None
        self.slow_seconds = 0.0
        self.lock = threading.Lock()
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def up(self) -> None:
        self._server = _Server(("127.0.0.1", self._port), self._handler())
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        if self._server is None:
            self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # --- scripting ---------------------------------------------------------------------------
    def fail(self, *statuses: int, headers: dict | None = None, body: dict | None = None) -> None:
        with self.lock:
            self.faults.extend((s, headers or {}, body) for s in statuses)

    def error_body(self, status: int) -> dict:
        return {"status": status}

    def handle(self, request: Recorded) -> tuple[int, dict, dict | bytes]:
        raise NotImplementedError

    def accepted(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    # --- server ------------------------------------------------------------------------------
    def _answer(self, request: Recorded) -> tuple[int, dict, bytes]:
        with self.lock:
            fault = self.faults.popleft() if self.faults else None
            outage = self.outage
        if fault is not None:
            status, headers, body = fault
            return status, headers, json.dumps(body or self.error_body(status)).encode()
        if outage:
            return outage, {}, json.dumps(self.error_body(outage)).encode()
        status, headers, body = self.handle(request)
        return status, headers, body if isinstance(body, bytes) else json.dumps(body).encode()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Recorded(method=self.command, path=parts.path, query=parse_qs(parts.query),
                                   headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                                   at=time.time())
                status, headers, payload = fake._answer(request)
                request.status = status
                with fake.lock:
                    fake.requests.append(request)
                    slow = fake.slow_seconds
                if slow:
                    time.sleep(slow)
                try:
                    self.send_response(status)
                    headers = {"Content-Type": "application/json", **headers}
                    for key, value in headers.items():
                        self.send_header(key, str(value))
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self):
                self._serve()

            def do_POST(self):
                self._serve()

            def do_DELETE(self):
                self._serve()

        return Handler
