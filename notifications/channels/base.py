"""The interface every channel implements (a template, as django-anymail's backends are): the
fence asks a channel what its destination is, whether it may send now, how a run of log entries
reads for one destination, and to send it. A channel never touches cursors, streams or delivery
states: it answers, or raises one of the failures of notifications.delivery.types.

A channel that sends to an outside provider (`external = True`) gets a Delivery record per
request, retries, dead letters, breakers and limiter scopes. A local channel (in-app) applies a
run inside the fence's transaction instead (`apply`).
"""
import functools
import os
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import redis
from django.conf import settings
from django.core.checks import Error

from notifications import policy
from notifications.breaker import CircuitBreaker
from notifications.delivery.types import Gate
from notifications.kinds import KINDS
from notifications.ratelimit import Check, Scope, limiter


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process for the channels' calls to their providers (Slack's
    HTTPS, SMTP's STARTTLS): building one loads the system's CA store, ~20 ms of CPU on this box,
    which a library left to itself pays per connection (http.client) or per email (Django's SMTP
    backend)."""
    return ssl.create_default_context()


_CLIENTS: dict[int, httpx.Client] = {}


def http_client() -> httpx.Client:
    """This process's HTTP client for calls to providers and webhook endpoints: one TLS context and
    one connection pool per process. `httpx.request` makes a Client per call, and each Client loads
    the CA bundle into a new SSL context: ~38 ms of CPU per call on this box, plus a TCP (and TLS)
    handshake a kept connection saves. Keyed by process id, so a Celery prefork child never shares
    its parent's sockets. Redirects are not followed (as httpx.request); timeouts are per call."""
    pid = os.getpid()
    client = _CLIENTS.get(pid)
    if client is None:
        client = _CLIENTS[pid] = httpx.Client(follow_redirects=False)
    return client


@dataclass(frozen=True)
class Run:
    """What a send covers: the stream's organization and destination, the delivery record (its id
    is stable across attempts: use it for idempotency keys) and its log entries in seq order."""

    organization_id: int
    destination: str
    delivery_id: int | None
    first_seq: int
    last_seq: int
    entries: list
    attempt: int = 1
    late: bool = False  # a requeued dead letter sent out of band, after the stream moved on


class Channel:
    name: str = ""
    external: bool = True
    # Drains run on the provider queue (settings.DELIVERY_PROVIDER_QUEUE), so a slow provider
    # never pins an organization's partition worker; local channels run on the partition queue.
    provider_queue: bool = True
    # Contiguous pending entries for one destination go as one request (up to batch_max).
    coalesce: bool = True
    # The limiter's first scope is shared by every destination (a provider's global limit):
    # waiters are served oldest pending entry first.
    fair: bool = False
    # A destination is one member (their address, phone, device): it gets only the entries whose
    # audience holds that member. Otherwise the destination is the organization's (a Slack channel,
    # a webhook endpoint) and gets only entries for the whole organization (kinds not private).
    per_recipient: bool = False
    # A per-recipient channel whose destination is the member's account (one stream per member,
    # destination str(user id): email), opt-in: a transactional send (its category cannot be turned
    # off) to a member without an active stream makes one that carries sends only
    # (DeliveryStream.sends_only) instead of suppressing the row. Channels whose destinations follow
    # the member's profile (a phone, devices) keep a stream for every reachable one already.
    on_demand: bool = False
    default_options: dict = {}

    def __init__(self, name: str, options: dict | None = None):
        self.name = name
        self.options = {**self.default_options, **(options or {})}

    @property
    def no_destination(self) -> str:
        """Per-recipient channels: why a member without an active stream is suppressed (the error
        of their status row)."""
        return f"no active {self.name} destination for this member"

    # --- configuration -----------------------------------------------------------------------
    def check(self) -> list[Error]:
        """System-check errors of this channel's configuration."""
        return []

    @property
    def batch_max(self) -> int:
        return int(self.options.get("batch_max", 50))

    @property
    def retry_seconds(self) -> float:
        """How long a failing head is retried before it becomes a dead letter."""
        return float(self.options.get("retry_seconds", 24 * 3600))

    def validate(self, part: dict) -> None:
        """The send API's check of a rendered part for this channel (e.g. an SMS over 1,600
        characters): raise ApplicationError with the channel's code. Default: any part goes."""

    # --- destination ------------------------------------------------------------------------
    def target(self, *, organization_id: int, destination: str) -> Any | None:
        """The destination's current configuration (an integration, a user, an endpoint), or None
        when it is gone or disabled: the fence then deactivates the stream."""
        raise NotImplementedError

    def recipient_id(self, target) -> int | None:
        """Per-recipient channels: the user a destination belongs to."""
        return None

    def wants(self, target, entry) -> bool:
        """Does this destination get this log entry? Decided from the entry (its kind and audience)
        and the destination's identity only, so every attempt of a run carries the same entries."""
        kind = KINDS.get(entry.kind)
        if kind is None or self.name not in kind.channels:
            return False
        if self.per_recipient:
            return self.recipient_id(target) in (entry.audience or ())
        return not kind.private

    def member_destinations(self, user) -> dict[str, bool] | None:
        """Per-recipient channels whose destinations follow a member's profile (a phone number,
        registered devices): each of the member's destinations -> whether it is reachable now
        (notifications.preferences.recipient_streams_sync keeps their streams so). None: the
        channel keeps its streams itself (email follows the member's preferences)."""
        return None

    def scopes(self, target) -> list[Scope]:
        return []

    def breaker_names(self, target) -> list[str]:
        return [self.name]

    def gate(self, target, *, since: float | None, member: str) -> Gate:
        """May a request go now? Asks the breaker(s) then the limiter; waiting spends nothing.
        `since`: when the oldest pending entry occurred (fair share); `member`: the stream.
        A fair channel whose breakers carry its limiter's hash tag (Slack: `{slack}`) asks both in
        one Redis call."""
        self._declare_limits()
        names = self.breaker_names(target)
        scopes = self.scopes(target)
        if self.fair and scopes and names and {s.tag for s in scopes} == set(names) and len(names) == 1:
            return self._gate_at_once(CircuitBreaker(names[0]), scopes, since=since, member=member)
        for name in names:
            decision = CircuitBreaker(name).allow()
            if not decision.allowed:
                return Gate(False, wait=max(0.05, decision.wait), reason=f"breaker {name} {decision.state}")
        if scopes:
            if self.fair:
                decision = limiter.acquire_fair(scopes, member=member, since=since, lookahead=8)
            else:
                decision = limiter.acquire(scopes)
            if not decision.allowed:
                return Gate(False, wait=decision.wait, reason=f"limit {decision.blocked_by.name}")
        return Gate.go()

    def _gate_at_once(self, breaker: CircuitBreaker, scopes: list[Scope], *, since: float | None,
                      member: str) -> Gate:
        """gate() in one Redis call: the breaker's allow runs first in the limiter's script, with the
        same answers as the two calls (a breaker that says no takes no place in the limiter's queue;
        Redis unavailable fails closed, as the breaker alone does)."""
        check = Check(breaker.ALLOW_SOURCE, breaker.keys, breaker.allow_args())
        try:
            decision = limiter.acquire_fair(scopes, member=member, since=since, lookahead=8, checks=[check])
        except redis.RedisError as exc:
            closed = breaker.unavailable(exc)
            return Gate(False, wait=max(0.05, closed.wait), reason=f"breaker {breaker.name} {closed.state}")
        answer = breaker.allow_answer(decision.checks[0])
        if decision.stopped_by is not None:
            return Gate(False, wait=max(0.05, answer.wait), reason=f"breaker {breaker.name} {answer.state}")
        if not decision.allowed:
            return Gate(False, wait=decision.wait, reason=f"limit {decision.blocked_by.name}")
        return Gate.go()

    def admit(self, target, run: Run, *, now: datetime, first_attempt: bool) -> Gate:
        """Inside the fence's transaction, before the send: a destination-level rule that may defer
        the run. Per-recipient channels: the member's daily cap on this channel (a calendar day of
        their time zone), spent once per message, never on a retry; over it the run is deferred
        to their next local midnight (notifications.policy). Others: go."""
        if not self.per_recipient or not first_attempt or run.delivery_id is None:
            return Gate.go()
        user_id = self.recipient_id(target)
        if user_id is None:
            return Gate.go()
        category = policy.entry_category(run.entries[0]) if run.entries else ""
        return policy.daily_cap_admit(user_id=user_id, channel=self.name, delivery_id=run.delivery_id,
                                      category=category, now=now)

    def pause(self, target, scope: str, seconds: float) -> None:
        """A 429: pause the named scope ("global" = scopes[0], else the destination's own)."""
        self._declare_limits()
        scopes = self.scopes(target)
        if not scopes:
            return
        chosen = scopes[0] if scope == "global" or len(scopes) == 1 else scopes[-1]
        limiter.pause(chosen, seconds)

    # --- sending ----------------------------------------------------------------------------
    def render(self, target, run: Run) -> Any:
        raise NotImplementedError

    def send(self, target, run: Run, message: Any, gate: Gate) -> str:
        """Deliver; return the provider's reference. Raise a DeliveryFailure otherwise."""
        raise NotImplementedError

    def verify(self, target, run: Run) -> str | None:
        """After an UncertainFailure: the provider's reference if the run did arrive, else None."""
        return None

    def sent(self, target, run: Run, *, at: datetime) -> None:
        """After a successful send, inside the fence's transaction (e.g. close a deferral)."""

    # --- local channels --------------------------------------------------------------------
    def apply(self, *, organization_id: int, entries: list) -> Any:
        """Local channels: write the run inside the fence's transaction; return what `published`
        gets after commit."""
        raise NotImplementedError

    def published(self, result: Any) -> None:
        """Local channels: after commit (e.g. push WebSocket messages)."""

    def published_batch(self, results: list) -> None:
        """Local channels: the outcomes of several committed runs (of several streams, in commit
        order), announced together; a channel that can send them in one go overrides this."""
        for result in results:
            self.published(result)

    def rate_limits(self) -> dict:
        """Limiter scopes this channel declares ({name: {"rate", "burst"}}); an entry of the same
        name in settings.HERALD_RATE_LIMITS wins."""
        return {}

    def _declare_limits(self) -> None:
        limits = settings.HERALD_RATE_LIMITS
        for name, limit in self.rate_limits().items():
            if name not in limits:
                limits[name] = limit

    # --- API --------------------------------------------------------------------------------
    def urlpatterns(self) -> list:
        """REST endpoints the channel contributes under /api/v1/ (e.g. webhook endpoints)."""
        return []
