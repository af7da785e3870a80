"""A local stand-in for Slack's Web API (`chat.postMessage`), speaking the protocol slack-sdk speaks.

slack-sdk's WebClient POSTs `{base_url}chat.postMessage` with a JSON body and
`Authorization: Bearer xoxb-...`; with base_url `http://127.0.0.1:PORT/api/` the path is
`/api/chat.postMessage`. This server validates the token and the channel the way Slack does
(HTTP 200 with `{"ok": false, "error": ...}`), enforces Slack's per-channel limit (token bucket,
1 message/s, short bursts) and an optional global per-minute limit, answering 429 + Retry-After
when the client exceeds them and counting each such answer as a *breach* (the client broke the
limit). Faults are injected on demand: HTTP 500, 429 + Retry-After (not a breach: the provider's
own choice), slow answers, and a "down" switch (503, or the socket closed without an answer).

Used in a thread by tests (`with FakeSlack() as slack: ...`) and as a process by benchmarks:

    python -m tests.support.fakeslack --port 0 --port-file p --stats-file s.json --fail 0.1

The process is controlled over HTTP: `POST /_control/config` (JSON knobs), `GET /_control/stats`,
`GET /_control/messages[?channel=C]`, `GET /_control/in_flight`, `POST /_control/reset`.
"""
import argparse
import collections
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

DOWN_MODES = (None, "503", "close")


@dataclass
class FakeSlackConfig:
    valid_tokens: set[str] | None = None  # None: any token that starts with "xoxb-"
    known_channels: set[str] | None = None  # None: every channel exists
    channel_rate: float = 1.0  # chat.postMessage: messages per second per channel
    channel_burst: int = 3  # "short bursts" Slack tolerates
    global_per_minute: int | None = None  # across every channel and token
    fail_fraction: float = 0.0  # HTTP 500
    ratelimit_fraction: float = 0.0  # injected 429 + Retry-After
    retry_after: int = 1  # seconds, in injected 429s
    slow_fraction: float = 0.0  # sleep slow_seconds before answering
    slow_seconds: float = 0.0
    down: str | None = None  # None | "503" | "close"
    seed: int | None = None

    def update(self, **knobs) -> None:
        names = {f.name for f in fields(self)}
        for name, value in knobs.items():
            if name not in names:
                raise TypeError(f"unknown fake Slack knob {name!r}")
            if name in ("valid_tokens", "known_channels") and value is not None:
                value = set(value)
            if name == "down" and value not in DOWN_MODES:
                raise ValueError(f"down must be one of {DOWN_MODES}")
            setattr(self, name, value)

    def as_json(self) -> dict:
        data = asdict(self)
        for name in ("valid_tokens", "known_channels"):
            if data[name] is not None:
                data[name] = sorted(data[name])
        return data


def _new_stats() -> dict:
    return {
        "requests": 0,  # every POST to a Slack method
        "accepted": 0,  # messages posted (ok: true)
        "invalid_auth": 0,
        "channel_not_found": 0,
        "http_500": 0,
        "http_503": 0,
        "closed": 0,  # "down" in close mode: socket closed without an answer
        "ratelimited": 0,  # every 429 returned (breaches + injected)
        "ratelimited_injected": 0,
        "breaches": 0,  # 429s because the client exceeded a limit
        "slow": 0,
        "aborted": 0,  # the client was gone when the answer was written (timeout, killed worker)
        "max_channel_per_second": 0,  # most requests one channel got in any 1 s window
        "max_global_per_minute": 0,  # most requests in any 60 s window
    }


@dataclass
class _State:
    stats: dict = field(default_factory=_new_stats)
    messages: list = field(default_factory=list)
    log: list = field(default_factory=list)  # one entry per request: time, channel, outcome, seqs
    in_flight: dict = field(default_factory=dict)  # request id -> info, while a slow answer sleeps
    buckets: dict = field(default_factory=dict)  # channel -> [tokens, last refill (monotonic)]
    global_window: collections.deque = field(default_factory=collections.deque)  # monotonic times
    channel_windows: dict = field(default_factory=dict)  # channel -> deque of monotonic times
    next_id: int = 0


class FakeSlack:
    """The server. Thread-safe; every public method may be called while requests are served."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **knobs):
        self.config = FakeSlackConfig()
        self.config.update(**knobs)
        self._lock = threading.Lock()
        self._state = _State()
        self._rng = random.Random(self.config.seed)
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """What SLACK_API_URL (slack-sdk's base_url) should be."""
        return f"http://127.0.0.1:{self.port}/api/"

    def start(self) -> "FakeSlack":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"fakeslack-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes slow answers
        if self._thread is not None:  # shutdown() would wait forever for a loop that never ran
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> "FakeSlack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- knobs and observations -------------------------------------------------------------------

    def configure(self, **knobs) -> None:
        """Change knobs at runtime, e.g. configure(fail_fraction=0.1, down="503")."""
        with self._lock:
            self.config.update(**knobs)
            if "seed" in knobs:
                self._rng = random.Random(knobs["seed"])

    def messages(self, channel: str | None = None) -> list[dict]:
        """Accepted messages in the order they were received."""
        with self._lock:
            return [dict(m) for m in self._state.messages if channel is None or m["channel"] == channel]

    def stats(self) -> dict:
        with self._lock:
            return dict(self._state.stats, in_flight=len(self._state.in_flight))

    def requests_log(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._state.log]

    def in_flight(self) -> list[dict]:
        """Requests received (and, if accepted, recorded) whose answer is still being delayed."""
        with self._lock:
            return [dict(v) for v in self._state.in_flight.values()]

    def reset(self, config: bool = False) -> None:
        """Forget messages, counters and buckets; with config=True also restore default knobs."""
        with self._lock:
            self._state = _State()
            if config:
                self.config = FakeSlackConfig()
                self._rng = random.Random(None)

    def wait_until(self, predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(interval)
        return bool(predicate(self))

    # --- the protocol -------------------------------------------------------------------------------

    def _limit(self, channel: str, now: float) -> int | None:
        """Take one request from the channel bucket and the global window, both or neither.
        Returns None when allowed, else the Retry-After (whole seconds) to answer. Lock held."""
        cfg, state = self.config, self._state
        tokens, last = state.buckets.get(channel, (float(cfg.channel_burst), now))
        tokens = min(float(cfg.channel_burst), tokens + (now - last) * cfg.channel_rate)
        retry_after = None
        if tokens < 1.0:
            retry_after = max(1, math.ceil((1.0 - tokens) / cfg.channel_rate))
        window = state.global_window
        while window and window[0] <= now - 60.0:
            window.popleft()
        if cfg.global_per_minute is not None and len(window) >= cfg.global_per_minute:
            retry_after = max(retry_after or 0, max(1, math.ceil(window[0] + 60.0 - now)))
        if retry_after is not None:
            state.buckets[channel] = (tokens, now)
            return retry_after
        state.buckets[channel] = (tokens - 1.0, now)
        window.append(now)
        per_channel = state.channel_windows.setdefault(channel, collections.deque())
        per_channel.append(now)
        while per_channel and per_channel[0] <= now - 1.0:
            per_channel.popleft()
        stats = state.stats
        stats["max_channel_per_second"] = max(stats["max_channel_per_second"], len(per_channel))
        stats["max_global_per_minute"] = max(stats["max_global_per_minute"], len(window))
        return None

    def _handle_post_message(self, token: str | None, body: dict, client: tuple) -> tuple:
        """Returns (status, payload, headers, action, slow_seconds); action is "answer" or "close"."""
        now_wall, now = time.time(), time.monotonic()
        channel = str(body.get("channel") or "")
        metadata = body.get("metadata") or {}
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except ValueError:
                metadata = {}
        payload = metadata.get("event_payload") or {}
        entry = {"time": now_wall, "channel": channel, "first_seq": payload.get("first_seq"),
                 "last_seq": payload.get("last_seq"), "client": list(client)}
        with self._lock:
            cfg, stats = self.config, self._state.stats
            stats["requests"] += 1
            self._state.log.append(entry)
            slow = cfg.slow_seconds if cfg.slow_fraction and self._rng.random() < cfg.slow_fraction else 0.0
            if cfg.down == "close":
                stats["closed"] += 1
                entry["outcome"] = "closed"
                return 0, None, {}, "close", slow
            if cfg.down == "503":
                stats["http_503"] += 1
                entry["outcome"] = "503"
                return 503, {"ok": False, "error": "service_unavailable"}, {}, "answer", slow
            valid = (token or "").startswith("xoxb-") if cfg.valid_tokens is None else token in cfg.valid_tokens
            if not token:
                stats["invalid_auth"] += 1
                entry["outcome"] = "not_authed"
                return 200, {"ok": False, "error": "not_authed"}, {}, "answer", slow
            if not valid:
                stats["invalid_auth"] += 1
                entry["outcome"] = "invalid_auth"
                return 200, {"ok": False, "error": "invalid_auth"}, {}, "answer", slow
            if not channel or (cfg.known_channels is not None and channel not in cfg.known_channels):
                stats["channel_not_found"] += 1
                entry["outcome"] = "channel_not_found"
                return 200, {"ok": False, "error": "channel_not_found"}, {}, "answer", slow
            retry_after = self._limit(channel, now)
            if retry_after is not None:
                stats["ratelimited"] += 1
                stats["breaches"] += 1
                entry["outcome"] = "breach"
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}, "answer", slow
            roll = self._rng.random()
            if roll < cfg.fail_fraction:
                stats["http_500"] += 1
                entry["outcome"] = "500"
                return 500, {"ok": False, "error": "internal_error"}, {}, "answer", slow
            if roll < cfg.fail_fraction + cfg.ratelimit_fraction:
                stats["ratelimited"] += 1
                stats["ratelimited_injected"] += 1
                entry["outcome"] = "429"
                return (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(cfg.retry_after)},
                        "answer", slow)
            stats["accepted"] += 1
            ts = f"{int(now_wall)}.{stats['accepted']:06d}"
            entry["outcome"] = "accepted"
            self._state.messages.append({
                "time": now_wall, "channel": channel, "text": body.get("text", ""), "ts": ts, "token": token,
                "metadata": metadata, "event_type": metadata.get("event_type"), "payload": payload,
                "org_id": payload.get("org_id"), "first_seq": payload.get("first_seq"),
                "last_seq": payload.get("last_seq"), "event_ids": payload.get("event_ids"),
            })
            return 200, {"ok": True, "channel": channel, "ts": ts, "message": {"text": body.get("text", "")}}, \
                {}, "answer", slow

    def _history(self, token: str | None, query: dict) -> tuple[int, dict]:
        """conversations.history: the channel's accepted messages, newest first, with their
        metadata when include_all_metadata is set (how a client checks a post it timed out on)."""
        with self._lock:
            cfg = self.config
            self._state.stats["history_calls"] = self._state.stats.get("history_calls", 0) + 1
            valid = (token or "").startswith("xoxb-") if cfg.valid_tokens is None else token in cfg.valid_tokens
            if not valid:
                return 200, {"ok": False, "error": "invalid_auth"}
            channel = query.get("channel", "")
            oldest = float(query.get("oldest") or 0)
            limit = int(query.get("limit") or 100)
            with_metadata = str(query.get("include_all_metadata", "")).lower() in ("1", "true")
            found = [m for m in self._state.messages if m["channel"] == channel and float(m["ts"]) >= oldest]
        found = sorted(found, key=lambda m: float(m["ts"]), reverse=True)[:limit]
        messages = [{"type": "message", "ts": m["ts"], "text": m["text"],
                     **({"metadata": m["metadata"]} if with_metadata and m["metadata"] else {})} for m in found]
        return 200, {"ok": True, "messages": messages, "has_more": False}

    def _control(self, method: str, path: str, query: dict, body: dict) -> tuple[int, object]:
        if path == "/_control/stats":
            return 200, self.stats()
        if path == "/_control/messages":
            return 200, self.messages((query.get("channel") or [None])[0])
        if path == "/_control/in_flight":
            return 200, self.in_flight()
        if path == "/_control/log":
            return 200, self.requests_log()
        if path == "/_control/config":
            if method == "POST":
                try:
                    self.configure(**body)
                except (TypeError, ValueError) as exc:
                    return 400, {"error": str(exc)}
            with self._lock:
                return 200, self.config.as_json()
        if path == "/_control/reset" and method == "POST":
            self.reset(config=bool(body.get("config")))
            return 200, {"ok": True}
        return 404, {"error": "unknown control"}


def _handler_for(fake: FakeSlack):
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeSlack/1.0"
        protocol_version = "HTTP/1.0"  # one request per connection, as urllib makes them

        def log_message(self, format, *args):  # noqa: A002  (quiet: tests read stats, not logs)
            pass

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if not raw:
                return {}
            if ctype == "application/json":
                try:
                    data = json.loads(raw)
                except ValueError:
                    return {}
                return data if isinstance(data, dict) else {}
            return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}

        def _answer(self, status: int, payload, headers: dict | None = None) -> bool:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                return True
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                return False

        def do_GET(self):
            url = urlparse(self.path)
            if url.path.startswith("/_control/"):
                self._answer(*fake._control("GET", url.path, parse_qs(url.query), {}))
            elif url.path == "/api/conversations.history":
                auth = self.headers.get("Authorization") or ""
                token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
                self._answer(*fake._history(token, {k: v[0] for k, v in parse_qs(url.query).items()}))
            else:
                self._answer(405, {"ok": False, "error": "method_not_supported_for_channel_type"})

        def do_POST(self):
            url = urlparse(self.path)
            body = self._body()
            if url.path.startswith("/_control/"):
                self._answer(*fake._control("POST", url.path, parse_qs(url.query), body))
                return
            auth = self.headers.get("Authorization") or ""
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else body.get("token")
            if url.path == "/api/conversations.history":
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                self._answer(*fake._history(token, {**query, **{k: str(v) for k, v in body.items()}}))
                return
            if url.path != "/api/chat.postMessage":
                self._answer(404, {"ok": False, "error": "unknown_method"})
                return
            status, payload, headers, action, slow = fake._handle_post_message(token, body, self.client_address)
            request_id = None
            if slow:
                with fake._lock:
                    fake._state.next_id += 1
                    request_id = fake._state.next_id
                    fake._state.stats["slow"] += 1
                    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
                    fake._state.in_flight[request_id] = {
                        "id": request_id, "client_port": self.client_address[1], "channel": body.get("channel"),
                        "status": status, "since": time.time(), "payload": (meta or {}).get("event_payload"),
                    }
            try:
                if slow:
                    fake._stopping.wait(slow)
                if action == "close":
                    self.close_connection = True
                    return
                delivered = self._answer(status, payload, headers)
            finally:
                if request_id is not None:
                    with fake._lock:
                        fake._state.in_flight.pop(request_id, None)
            if not delivered:
                with fake._lock:
                    fake._state.stats["aborted"] += 1

        def handle(self):
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                with fake._lock:
                    fake._state.stats["aborted"] += 1

    return Handler


# --- standalone process (benchmarks) ------------------------------------------------------------

def _write_json_atomic(path: str, data) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _csv(value: str | None) -> set[str] | None:
    return None if value is None else {v for v in value.split(",") if v}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Slack Web API (chat.postMessage) for tests and benchmarks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = ephemeral (see --port-file / stdout)")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--stats-file", help="JSON stats, rewritten every --stats-interval and at exit")
    parser.add_argument("--messages-file", help="JSON list of accepted messages, written at exit")
    parser.add_argument("--stats-interval", type=float, default=1.0)
    parser.add_argument("--tokens", help="comma-separated valid tokens (default: any xoxb-...)")
    parser.add_argument("--channels", help="comma-separated known channels (default: all)")
    parser.add_argument("--rate", type=float, default=1.0, help="per-channel messages per second")
    parser.add_argument("--burst", type=int, default=3, help="per-channel burst")
    parser.add_argument("--global-per-minute", type=int, default=None)
    parser.add_argument("--fail", type=float, default=0.0, help="fraction answered HTTP 500")
    parser.add_argument("--ratelimit", type=float, default=0.0, help="fraction answered 429 + Retry-After")
    parser.add_argument("--retry-after", type=int, default=1)
    parser.add_argument("--slow", type=float, default=0.0, help="fraction answered after --slow-seconds")
    parser.add_argument("--slow-seconds", type=float, default=0.0)
    parser.add_argument("--down", choices=["503", "close"], default=None)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    fake = FakeSlack(
        host=args.host, port=args.port, valid_tokens=_csv(args.tokens), known_channels=_csv(args.channels),
        channel_rate=args.rate, channel_burst=args.burst, global_per_minute=args.global_per_minute,
        fail_fraction=args.fail, ratelimit_fraction=args.ratelimit, retry_after=args.retry_after,
        slow_fraction=args.slow, slow_seconds=args.slow_seconds, down=args.down, seed=args.seed,
    )
    done = threading.Event()

    def stop(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    fake.start()
    if args.port_file:
        _write_json_atomic(args.port_file, fake.port)
    print(f"fakeslack listening on {fake.base_url}", flush=True)
    try:
        while not done.wait(args.stats_interval):
            if args.stats_file:
                _write_json_atomic(args.stats_file, fake.stats())
    finally:
        fake.stop()
        if args.stats_file:
            _write_json_atomic(args.stats_file, fake.stats())
        if args.messages_file:
            _write_json_atomic(args.messages_file, fake.messages())
    return 0


if __name__ == "__main__":
    sys.exit(main())
