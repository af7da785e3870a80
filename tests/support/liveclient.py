"""A WebSocket client on /ws/ in a thread, as a member's open tab: records every frame it gets.

    client = LiveClient(stack.ws_url("web"), origin=stack.url("web"), token=token)
    client.start(); client.wait_ready()
    ... client.seqs(org_id) ...
    client.stop()
"""
import json
import threading
import time

from websockets.sync.client import connect


class LiveClient(threading.Thread):
    def __init__(self, url: str, origin: str, token: str, query: str = ""):
        super().__init__(name="live-client", daemon=True)
        self.url, self.origin, self.token, self.query = url, origin, token, query
        self.frames: list[dict] = []
        self.hello: dict | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def run(self):
        try:
            with connect(f"{self.url}/ws/?token={self.token}{self.query}", origin=self.origin, open_timeout=15,
                         close_timeout=2, ping_interval=None) as ws:
                self.hello = json.loads(ws.recv(timeout=15))
                self.ready.set()
                while not self.stopping.is_set():
                    try:
                        raw = ws.recv(timeout=0.2)
                    except TimeoutError:
                        continue
                    with self._lock:
                        self.frames.append(json.loads(raw))
        except BaseException as exc:  # noqa: BLE001  (reported by the test, not lost in a thread)
            if not self.stopping.is_set():
                self.error = exc
            self.ready.set()

    def wait_ready(self, timeout: float = 15) -> dict:
        assert self.ready.wait(timeout), "no hello"
        assert self.error is None, self.error
        return self.hello

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.frames)

    def seqs(self, org_id: int, types=("tracker.event", "log.entry")) -> list[int]:
        return [f["seq"] for f in self.snapshot() if f.get("type") in types and f.get("org_id") == org_id]

    def of_type(self, type_: str) -> list[dict]:
        return [f for f in self.snapshot() if f.get("type") == type_]

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            if self.error is not None:
                raise AssertionError(f"client failed: {self.error!r}")
            time.sleep(0.1)
        return predicate(self)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
