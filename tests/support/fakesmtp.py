"""A local SMTP provider for tests and benchmarks: aiosmtpd on 127.0.0.1 speaking real SMTP.

Records every accepted message with its receive time, envelope, headers and text/HTML parts, and
counts accepted messages per sliding window (`max_per_minute`, `max_in_window(seconds)`) so a test
can prove the sender never exceeded a rate. Faults on demand:

- `down()` / `up()`: stop listening (connections are refused) and listen again on the same port;
- `temp_fail="421"`: answer MAIL FROM with 421 (service not available, closing);
  `temp_fail="451"`: answer RCPT TO with 451 (try again later);
- `reject={"a@x"}`: answer RCPT TO for those recipients with 550 (permanent);
- `slow_seconds=N`: wait N seconds before answering DATA.

In a thread:   with FakeSMTP() as smtp: ... smtp.port, smtp.messages(), smtp.configure(temp_fail="451")
As a process:  python -m tests.support.fakesmtp --port 0 --port-file p --stats-file s.json
               [--messages-file m.jsonl] [--temp-fail 451] [--reject a@x] [--slow 2]
(the stats file is rewritten every 0.5 s and on SIGTERM/SIGINT; messages are appended as JSON lines).
"""
import argparse
import asyncio
import bisect
import collections
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from email import message_from_bytes
from email import policy as email_policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

TEMP_FAIL_MODES = (None, "421", "451")


@dataclass
class FakeSMTPConfig:
    temp_fail: str | None = None  # None | "421" (at MAIL FROM) | "451" (at RCPT TO)
    reject: set[str] = field(default_factory=set)  # recipients answered 550 at RCPT TO
    slow_seconds: float = 0.0  # delay before answering DATA

    def update(self, **knobs) -> None:
        names = {f.name for f in fields(self)}
        for name, value in knobs.items():
            if name not in names:
                raise TypeError(f"unknown fake SMTP knob {name!r}")
            if name == "temp_fail":
                value = None if value in (None, "", "none") else str(value)
                if value not in TEMP_FAIL_MODES:
                    raise ValueError(f"temp_fail must be one of {TEMP_FAIL_MODES}")
            if name == "reject":
                value = {v.lower() for v in (value or ())}
            setattr(self, name, value)


def _new_stats() -> dict:
    return {
        "connections": 0,
        "accepted": 0,  # messages accepted (250 after DATA)
        "temp_failed": 0,  # 421/451 answers
        "rejected": 0,  # 550 answers
        "slow": 0,
        "max_per_minute": 0,  # most messages accepted in any 60 s window
    }


class _Handler:
    def __init__(self, fake: "FakeSMTP"):
        self.fake = fake

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        with self.fake._lock:
            mode = self.fake.config.temp_fail
            if mode == "421":
                self.fake._stats["temp_failed"] += 1
        if mode == "421":
            return "421 4.3.2 Service not available, closing transmission channel"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        with self.fake._lock:
            cfg, stats = self.fake.config, self.fake._stats
            if cfg.temp_fail == "451":
                stats["temp_failed"] += 1
                return "451 4.3.0 Temporary failure, try again later"
            if address.lower() in cfg.reject:
                stats["rejected"] += 1
                return "550 5.1.1 Recipient address rejected: user unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        with self.fake._lock:
            slow = self.fake.config.slow_seconds
            if slow:
                self.fake._stats["slow"] += 1
        if slow:
            await asyncio.sleep(slow)
        self.fake._record(envelope)
        return "250 2.0.0 OK: queued"


class _CountingSMTP(SMTP):
    def __init__(self, *args, fake: "FakeSMTP", **kwargs):
        super().__init__(*args, **kwargs)
        self._fake = fake

    def connection_made(self, transport):
        with self._fake._lock:
            self._fake._stats["connections"] += 1
        super().connection_made(transport)


class _Controller(Controller):
    """aiosmtpd's threaded controller, bound to an ephemeral port (port=0) when asked."""

    def __init__(self, fake: "FakeSMTP", *args, **kwargs):
        self._fake = fake
        super().__init__(*args, **kwargs)

    def factory(self):
        return _CountingSMTP(self.handler, fake=self._fake, **self.SMTP_kwargs)

    def _trigger_server(self):
        if self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class FakeSMTP:
    """The server. Thread-safe; knobs may change while messages are being received."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, on_message=None, **knobs):
        self.host = host
        self.port = port
        self.config = FakeSMTPConfig()
        self.config.update(**knobs)
        self.on_message = on_message  # called (outside the lock) with every recorded message
        self._lock = threading.Lock()
        self._messages: list[dict] = []
        self._times: list[float] = []  # monotonic receive times, sorted
        self._window: collections.deque = collections.deque()
        self._stats = _new_stats()
        self._controller: _Controller | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "FakeSMTP":
        if self._controller is not None:
            return self
        controller = _Controller(self, _Handler(self), hostname=self.host, port=self.port, ready_timeout=10,
                                 server_hostname="fakesmtp.local", enable_SMTPUTF8=True)
        controller.start()
        # The trigger connection made by start() is not a client's.
        with self._lock:
            self._stats["connections"] = max(0, self._stats["connections"] - 1)
        self.port = controller.port
        self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def down(self) -> None:
        """Stop listening: new connections are refused until up()."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port."""
        self.start()

    @property
    def listening(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> "FakeSMTP":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- knobs and observations -------------------------------------------------------------------

    def configure(self, **knobs) -> None:
        """e.g. configure(temp_fail="451"), configure(reject={"x@example.com"}), configure(slow_seconds=3)."""
        with self._lock:
            self.config.update(**knobs)

    def _record(self, envelope) -> None:
        parsed = message_from_bytes(envelope.original_content or envelope.content, policy=email_policy.default)
        text = html = ""
        for part in parsed.walk():
            if part.is_multipart():
                continue
            ctype = part.get_content_type()
            if ctype == "text/plain" and not text:
                text = part.get_content()
            elif ctype == "text/html" and not html:
                html = part.get_content()
        headers = {k.lower(): str(v) for k, v in parsed.items()}
        now_wall, now = time.time(), time.monotonic()
        message = {
            "time": now_wall, "mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(parsed.get("Subject", "")), "message_id": str(parsed.get("Message-ID", "")),
            "headers": headers, "text": text, "html": html, "content_type": parsed.get_content_type(),
        }
        with self._lock:
            self._messages.append(message)
            self._times.append(now)
            self._stats["accepted"] += 1
            window = self._window
            window.append(now)
            while window and window[0] <= now - 60.0:
                window.popleft()
            self._stats["max_per_minute"] = max(self._stats["max_per_minute"], len(window))
        if self.on_message is not None:
            self.on_message(dict(message))

    def messages(self, to: str | None = None) -> list[dict]:
        """Accepted messages in the order they were received (optionally only those to `to`)."""
        with self._lock:
            return [dict(m) for m in self._messages if to is None or to.lower() in (r.lower() for r in m["rcpt_tos"])]

    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats)

    def max_in_window(self, seconds: float) -> int:
        """Most messages accepted within any `seconds`-long window (half-open, like max_per_minute)."""
        with self._lock:
            times = list(self._times)
        best = 0
        for i, start in enumerate(times):
            j = bisect.bisect_left(times, start + seconds, lo=i)
            best = max(best, j - i)
        return best

    def reset(self) -> None:
        with self._lock:
            self._messages, self._times, self._window = [], [], collections.deque()
            self._stats = _new_stats()

    def wait_until(self, predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(interval)
        return bool(predicate(self))


# --- as a process ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--stats-file", help="JSON stats, rewritten every 0.5 s and at exit")
    parser.add_argument("--messages-file", help="append every accepted message as one JSON line")
    parser.add_argument("--temp-fail", choices=["421", "451"])
    parser.add_argument("--reject", action="append", default=[], help="recipient answered 550 (repeatable)")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds before answering DATA")
    args = parser.parse_args(argv)

    sink = open(args.messages_file, "a", buffering=1) if args.messages_file else None  # noqa: SIM115

    def write_message(message: dict) -> None:
        if sink is not None:
            sink.write(json.dumps(message) + "\n")

    fake = FakeSMTP(host=args.host, port=args.port, on_message=write_message, temp_fail=args.temp_fail,
                    reject=set(args.reject), slow_seconds=args.slow)
    fake.start()
    if args.port_file:
        with open(args.port_file, "w") as fh:
            fh.write(str(fake.port))
    stopping = threading.Event()

    def write_stats() -> None:
        if args.stats_file:
            data = dict(fake.stats(), port=fake.port, max_per_10s=fake.max_in_window(10.0),
                        max_per_second=fake.max_in_window(1.0))
            with open(args.stats_file + ".tmp", "w") as fh:
                json.dump(data, fh)
            os.replace(args.stats_file + ".tmp", args.stats_file)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    print(f"fake SMTP listening on {args.host}:{fake.port}", flush=True)
    while not stopping.wait(0.5):
        write_stats()
    fake.stop()
    write_stats()
    if sink is not None:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def smtp_settings(primary: "FakeSMTP", secondary: "FakeSMTP") -> dict:
    """The EMAIL_* settings (or environment) pointing Herald at two fake providers."""
    return {"EMAIL_PRIMARY_HOST": primary.host, "EMAIL_PRIMARY_PORT": primary.port,
            "EMAIL_SECONDARY_HOST": secondary.host, "EMAIL_SECONDARY_PORT": secondary.port,
            "EMAIL_USE_TLS": False}
