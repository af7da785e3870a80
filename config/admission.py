"""Admission control for the web tier: the excess is refused fast, never left to time out.

Django runs sync views one at a time per process (one thread), so a process offered more than it
serves builds a queue whose wait grows until clients time out. Two bounds keep it at capacity:

- `WEB_MAX_IN_FLIGHT` HTTP requests per process (ASGI, before any thread hop): one more is answered
  at once with 503 `service_unavailable` {"reason": "overloaded"} and `Retry-After`;
- `WEB_MAX_QUEUE_SECONDS`: a request that waited longer than this for the process's thread before
  its view started (QueueDeadlineMiddleware, first in MIDDLEWARE) is answered the same way
  without touching Postgres: its client was better told to come back than served late. While the
  last request to start had waited that long, new arrivals are refused at the door (at once,
  before queueing), as long as another request is in flight to measure the queue again: the
  refusals of an overload take milliseconds, not the queue's length.

- `WEB_MAX_DELIVERY_LAG_SECONDS`: while the fan-out delivers entries later than this after they
  happened (the in-app drains: notifications.delivery.lag, read from Redis at most every 250 ms; or
  this process's own sockets: LiveLag, fed by the live consumers; in a split tier, the socket
  processes' values through Redis), requests that would
  write new log entries (`WEB_LAG_GUARDED_PATHS`: tracker start/stop, sends, comments) are refused
  the same way, with {"reason": "backlog"}: the web alone can accept more than the workers deliver,
  and every event accepted then would wait in a growing queue. Reads are still served.

Health and metrics probes are never refused (they say themselves whether the process is well).
WebSockets are not counted: a connection costs nothing while idle, and its messages are the
fan-out's, already paced by the workers.
"""
import json
import re
import time

from django.conf import settings
from django.http import JsonResponse

from config.api import error_payload
from notifications.delivery.lag import LagReader, LiveLagPublisher

EXEMPT_PATHS = ("/healthz", "/readyz", "/metrics")
MESSAGE = "The server is at capacity; retry shortly."


def _overloaded_body(reason: str = "overloaded") -> bytes:
    return json.dumps(error_payload(MESSAGE, "service_unavailable", {"reason": reason})).encode()


class QueueState:
    """How long the last request of this process to reach its view had queued (seconds)."""

    last_wait = 0.0


class LiveLag:
    """How late this process's WebSocket connections get the org messages they forward: the largest
    age (now - occurred_at) the live consumers observed in the current and the previous second.
    The web's own end of the fan-out: when its event loop cannot keep up with the sockets, messages
    wait in the layer's queues, which no drain sees."""

    window = 1.0
    current = 0.0
    previous = 0.0
    started = 0.0

    publisher: LiveLagPublisher | None = None

    @classmethod
    def observe(cls, age: float) -> None:
        cls._roll(time.monotonic())
        if age > cls.current:
            cls.current = age
        if settings.WEB_WS_INDEX != "":  # a socket process of a split tier: tell the HTTP processes
            if cls.publisher is None:
                cls.publisher = LiveLagPublisher(int(settings.WEB_WS_INDEX))
            cls.publisher.offer(max(cls.current, cls.previous))

    @classmethod
    def value(cls) -> float:
        cls._roll(time.monotonic())
        return max(cls.current, cls.previous)

    @classmethod
    def _roll(cls, now: float) -> None:
        if now - cls.started >= cls.window:
            cls.previous = cls.current if now - cls.started < 2 * cls.window else 0.0
            cls.current, cls.started = 0.0, now


class AdmissionControl:
    """ASGI wrapper: at most `max_in_flight` HTTP requests of this process inside `app`, and none
    admitted while the queue in front of the view thread is over its budget."""

    def __init__(self, app, max_in_flight: int | None = None):
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.refused = 0
        self.lag = LagReader()
        self._guarded: tuple[tuple, re.Pattern] | None = None

    def guarded(self, scope) -> bool:
        """A request that writes a new log entry (the lag guard applies to it)."""
        if scope.get("method") != "POST":
            return False
        patterns = tuple(settings.WEB_LAG_GUARDED_PATHS)
        if self._guarded is None or self._guarded[0] != patterns:
            self._guarded = (patterns, re.compile("|".join(f"(?:{p})" for p in patterns) or r"(?!)"))
        return self._guarded[1].match(scope.get("path", "")) is not None

    async def backlogged(self, scope) -> bool:
        budget = settings.WEB_MAX_DELIVERY_LAG_SECONDS
        if not budget or not self.guarded(scope):
            return False
        return LiveLag.value() > budget or await self.lag.lag() > budget

    def limit(self) -> int:
        return self.max_in_flight if self.max_in_flight is not None else settings.WEB_MAX_IN_FLIGHT

    def overloaded(self) -> bool:
        limit = self.limit()
        if limit and self.in_flight >= limit:
            return True
        budget = settings.WEB_MAX_QUEUE_SECONDS
        return bool(budget) and self.in_flight > 0 and QueueState.last_wait > budget

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").rstrip("/") in EXEMPT_PATHS:
            return await self.app(scope, receive, send)
        if self.overloaded():
            self.refused += 1
            return await self._refuse(send)
        if await self.backlogged(scope):
            self.refused += 1
            return await self._refuse(send, reason="backlog")
        scope["herald_arrived"] = time.monotonic()
        self.in_flight += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(self, send, reason: str = "overloaded") -> None:
        body = _overloaded_body(reason)
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"),
            (b"retry-after", str(settings.WEB_RETRY_AFTER_SECONDS).encode()),
            (b"content-length", str(len(body)).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})


class QueueDeadlineMiddleware:
    """First middleware: a request that queued longer than WEB_MAX_QUEUE_SECONDS for this
    process's thread is answered 503 + Retry-After before any work (no query, no session)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        arrived = request.scope.get("herald_arrived") if hasattr(request, "scope") else None
        if arrived is None:
            return self.get_response(request)
        waited = QueueState.last_wait = time.monotonic() - arrived
        budget = settings.WEB_MAX_QUEUE_SECONDS
        if budget and waited > budget:
            response = JsonResponse(error_payload(MESSAGE, "service_unavailable", {"reason": "overloaded"}),
                                    status=503)
            response["Retry-After"] = str(settings.WEB_RETRY_AFTER_SECONDS)
            return response
        return self.get_response(request)
