"""Admission control (config/admission.py): the excess over a web process's capacity is answered at
once with 503 service_unavailable + Retry-After, in the one error format, instead of queueing
until the client times out; probes are never refused."""
import asyncio
import json
import time
from datetime import timedelta

import pytest
from channels.testing import HttpCommunicator
from django.test import RequestFactory
from django.utils import timezone

from config import admission
from config.asgi import application
from config.admission import AdmissionControl, QueueDeadlineMiddleware, QueueState
from notifications.channels import inapp
from notifications.delivery import lag
from notifications.delivery.fence import stream_deliver
from notifications.delivery.kicks import redis_client
from notifications.models import LogEntry
from organizations.services import user_token_create


@pytest.fixture(autouse=True)
def _fresh_queue_state():
    QueueState.last_wait = 0.0
    yield
    QueueState.last_wait = 0.0


class SlowApp:
    """An ASGI app that answers 200 after `release` is set."""

    def __init__(self):
        self.release = asyncio.Event()
        self.started = 0

    async def __call__(self, scope, receive, send):
        self.started += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _scope(path="/api/v1/me", method="GET"):
    return {"type": "http", "method": method, "path": path, "query_string": b"", "headers": [],
            "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}


async def _call(app, path="/api/v1/me", method="GET"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    started = time.monotonic()
    await app(_scope(path, method), receive, send)
    return sent, time.monotonic() - started


def _status_headers_body(sent):
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_requests_over_the_in_flight_bound_are_refused_at_once(settings):
    settings.WEB_RETRY_AFTER_SECONDS = 2
    slow = SlowApp()
    gate = AdmissionControl(slow, max_in_flight=2)

    async def body():
        first = [asyncio.create_task(_call(gate)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert gate.in_flight == 2
        refused, took = await _call(gate)
        status, headers, payload = _status_headers_body(refused)
        assert status == 503
        assert headers[b"retry-after"] == b"2"
        assert json.loads(payload) == {"message": admission.MESSAGE, "code": "service_unavailable",
                                       "extra": {"reason": "overloaded"}}
        assert took < 0.1
        assert slow.started == 2  # the refused one never reached the app
        slow.release.set()
        for task in first:
            sent, _ = await task
            assert _status_headers_body(sent)[0] == 200
        assert gate.in_flight == 0
        assert _status_headers_body((await _call(gate))[0])[0] == 200  # room again

    asyncio.run(body())


def test_while_the_queue_is_over_budget_new_arrivals_are_refused_at_the_door(settings):
    settings.WEB_MAX_QUEUE_SECONDS = 0.2
    slow = SlowApp()
    gate = AdmissionControl(slow, max_in_flight=100)

    async def body():
        QueueState.last_wait = 0.5  # the last request to start had queued 0.5 s
        # Nothing in flight: admitted (it measures the queue again when it starts).
        lone = asyncio.create_task(_call(gate))
        await asyncio.sleep(0.05)
        assert gate.in_flight == 1
        status, headers, _ = _status_headers_body((await _call(gate))[0])
        assert (status, headers[b"retry-after"]) == (503, b"1")
        QueueState.last_wait = 0.01  # the queue drained
        other = asyncio.create_task(_call(gate))
        await asyncio.sleep(0.05)
        assert gate.in_flight == 2
        slow.release.set()
        for task in (lone, other):
            assert _status_headers_body((await task)[0])[0] == 200

    asyncio.run(body())


def test_probes_are_never_refused(settings):
    slow = SlowApp()
    slow.release.set()
    gate = AdmissionControl(slow, max_in_flight=1)
    gate.in_flight = 5
    for path in ("/healthz", "/readyz", "/metrics"):
        assert _status_headers_body(asyncio.run(_call(gate, path))[0])[0] == 200


def test_a_request_that_queued_past_the_deadline_is_answered_without_work(settings):
    settings.WEB_MAX_QUEUE_SECONDS = 0.2
    calls = []
    middleware = QueueDeadlineMiddleware(lambda request: calls.append(request) or "served")
    request = RequestFactory().get("/api/v1/me")
    request.scope = {"herald_arrived": time.monotonic() - 1.0}
    response = middleware(request)
    assert response.status_code == 503
    assert response["Retry-After"] == str(settings.WEB_RETRY_AFTER_SECONDS)
    assert json.loads(response.content)["code"] == "service_unavailable"
    assert calls == []
    assert QueueState.last_wait >= 1.0
    request.scope = {"herald_arrived": time.monotonic()}
    assert middleware(request) == "served"
    assert QueueState.last_wait < 0.2


@pytest.mark.django_db(transaction=True)
def test_the_asgi_application_refuses_over_its_bound_with_the_error_format(settings):
    """Through config.asgi: the wrapper sits in front of Django; under the bound requests pass."""
    settings.WEB_MAX_IN_FLIGHT = 1

    async def body():
        comm = HttpCommunicator(application, "GET", "/api/v1/me")
        response = await comm.get_response(timeout=10)
        assert response["status"] == 401  # passed to Django (no credentials)
        gate = application.application_mapping["http"]
        gate.in_flight += 1  # one request in flight somewhere
        try:
            comm = HttpCommunicator(application, "GET", "/api/v1/me")
            response = await comm.get_response(timeout=10)
        finally:
            gate.in_flight -= 1
        assert response["status"] == 503
        assert dict(response["headers"])[b"retry-after"] == b"1"
        assert json.loads(response["body"])["code"] == "service_unavailable"

    asyncio.run(body())


# --- the delivery-lag guard ---------------------------------------------------------------------

@pytest.fixture
def lag_keys(settings):
    client = redis_client()
    keys = [lag.lag_key(slot) for slot in range(lag.LAG_SLOTS)]
    client.delete(*keys)
    yield client
    client.delete(*keys)


def test_the_drains_record_the_largest_lag_seen_with_a_short_life(lag_keys):
    recorder = lag.LagRecorder()
    now = time.time()
    recorder.observe(organization_id=lag.LAG_SLOTS + 3, occurred_at=now - 2.0)  # the first observation flushes at once
    recorder.observe(organization_id=lag.LAG_SLOTS + 3, occurred_at=now - 5.0)  # held until the next flush ...
    recorder.observe(organization_id=lag.LAG_SLOTS + 3, occurred_at=now - 1.0)  # ... as the largest seen
    recorder.observe(organization_id=5, occurred_at=now + 1.0)  # a clock ahead reads as no lag, not negative
    assert 1.9 < float(lag_keys.get(lag.lag_key(3))) < 3.0
    recorder.flush()
    assert 4.9 < float(lag_keys.get(lag.lag_key(3))) < 6.0
    assert float(lag_keys.get(lag.lag_key(5))) == 0.0
    assert 0 < lag_keys.pttl(lag.lag_key(3)) <= lag.LAG_TTL_SECONDS * 1000  # a stopped drain's value expires


def test_writes_of_new_entries_are_refused_while_the_fan_out_lags_reads_are_served(settings, lag_keys):
    settings.WEB_MAX_DELIVERY_LAG_SECONDS = 1.0
    settings.WEB_RETRY_AFTER_SECONDS = 2
    served = SlowApp()
    served.release.set()
    gate = AdmissionControl(served, max_in_flight=100)

    async def body():
        lag_keys.set(lag.lag_key(2), "0.4", ex=5)
        assert _status_headers_body((await _call(gate, "/api/v1/trackers/7/start", "POST"))[0])[0] == 200
        lag_keys.set(lag.lag_key(6), "1.7", ex=5)
        gate.lag.read_at = float("-inf")  # read again now (the reader caches for LAG_READ_SECONDS)
        assert _status_headers_body((await _call(gate, "/api/v1/send", "POST"))[0])[0] == 200  # 1 of 2 late
        lag_keys.set(lag.lag_key(9), "2.5", ex=5)  # most of the fan-out is late now
        gate.lag.read_at = float("-inf")
        for path in ("/api/v1/trackers/7/start", "/api/v1/trackers/7/stop", "/api/v1/send",
                     "/api/v1/trackers/7/comments/"):
            refused, took = await _call(gate, path, "POST")
            status, headers, payload = _status_headers_body(refused)
            assert (status, headers[b"retry-after"]) == (503, b"2"), path
            assert json.loads(payload) == {"message": admission.MESSAGE, "code": "service_unavailable",
                                           "extra": {"reason": "backlog"}}
            assert took < 0.1
        before = served.started
        for path, method in (("/api/v1/trackers/7/start", "GET"), ("/api/v1/me", "GET"),
                             ("/api/v1/me/preferences", "POST"), ("/api/v1/send/12", "DELETE")):
            assert _status_headers_body((await _call(gate, path, method))[0])[0] == 200, (path, method)
        assert served.started == before + 4
        lag_keys.delete(lag.lag_key(6), lag.lag_key(9))  # caught up (or the values expired)
        gate.lag.read_at = float("-inf")
        assert _status_headers_body((await _call(gate, "/api/v1/send", "POST"))[0])[0] == 200

    asyncio.run(body())


def test_the_lag_guard_never_refuses_on_a_guess(settings, lag_keys):
    settings.WEB_MAX_DELIVERY_LAG_SECONDS = 1.0
    lag_keys.set(lag.lag_key(1), "9", ex=5)
    served = SlowApp()
    served.release.set()
    gate = AdmissionControl(served, max_in_flight=100)

    async def body():
        settings.WEB_MAX_DELIVERY_LAG_SECONDS = 0  # off
        assert _status_headers_body((await _call(gate, "/api/v1/send", "POST"))[0])[0] == 200
        settings.WEB_MAX_DELIVERY_LAG_SECONDS = 1.0
        settings.REDIS_URL = "redis://127.0.0.1:1/0"  # Redis unreachable: no lag known, nothing refused
        gate.lag = lag.LagReader()
        assert _status_headers_body((await _call(gate, "/api/v1/send", "POST"))[0])[0] == 200
        assert gate.lag.value == 0.0

    asyncio.run(body())


@pytest.mark.django_db(transaction=True)
def test_a_late_in_app_drain_makes_the_web_refuse_new_events_until_it_catches_up(settings, lag_keys,
                                                                                 org_with_members):
    """End to end in one process: the real start endpoint writes an entry, the real in-app drain
    delivers it 3 s after it happened and records that, and the ASGI application (config.asgi)
    then refuses the next start/stop with 503 backlog while it still serves reads."""
    settings.WEB_MAX_DELIVERY_LAG_SECONDS = 1.0
    o = org_with_members
    tracker = o.org.trackers.get()
    token = user_token_create(user=o.owner)
    headers = [(b"authorization", f"Token {token}".encode())]
    gate = application.application_mapping["http"]

    async def call(method, path):
        gate.lag.read_at = float("-inf")
        comm = HttpCommunicator(application, method, path, headers=headers)
        return await comm.get_response(timeout=10)

    assert asyncio.run(call("POST", f"/api/v1/trackers/{tracker.pk}/start"))["status"] == 200
    LogEntry.objects.filter(organization=o.org).update(occurred_at=timezone.now() - timedelta(seconds=3))
    inapp.LAG.flushed_at = float("-inf")
    while stream_deliver(org_id=o.org.pk, channel="inapp").kind != "idle":
        pass
    assert 2.5 < float(lag_keys.get(lag.lag_key(o.org.pk % lag.LAG_SLOTS))) < 10

    refused = asyncio.run(call("POST", f"/api/v1/trackers/{tracker.pk}/stop"))
    assert refused["status"] == 503 and json.loads(refused["body"])["extra"] == {"reason": "backlog"}
    assert asyncio.run(call("GET", "/api/v1/me"))["status"] == 200
    lag_keys.delete(lag.lag_key(o.org.pk % lag.LAG_SLOTS))  # caught up
    assert asyncio.run(call("POST", f"/api/v1/trackers/{tracker.pk}/stop"))["status"] == 200


@pytest.fixture
def live_lag():
    for name in ("current", "previous", "started"):
        setattr(admission.LiveLag, name, 0.0)
    admission.LiveLag.publisher = None
    yield admission.LiveLag
    for name in ("current", "previous", "started"):
        setattr(admission.LiveLag, name, 0.0)
    admission.LiveLag.publisher = None


def test_the_live_lag_is_the_largest_age_of_the_last_second_or_two(live_lag, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(admission.time, "monotonic", lambda: now[0])
    live_lag.observe(0.3)
    live_lag.observe(1.4)
    live_lag.observe(0.2)
    assert live_lag.value() == 1.4
    now[0] += 1.2  # the next second: the previous one still counts
    live_lag.observe(0.1)
    assert live_lag.value() == 1.4
    now[0] += 1.0
    assert live_lag.value() == 0.1
    now[0] += 5.0  # nothing observed for a while: no lag
    assert live_lag.value() == 0.0


def test_writes_are_refused_while_this_process_s_sockets_get_messages_late(settings, live_lag, lag_keys):
    settings.WEB_MAX_DELIVERY_LAG_SECONDS = 1.0
    served = SlowApp()
    served.release.set()
    gate = AdmissionControl(served, max_in_flight=100)

    async def body():
        live_lag.observe(0.5)
        assert _status_headers_body((await _call(gate, "/api/v1/trackers/3/stop", "POST"))[0])[0] == 200
        live_lag.observe(2.5)  # the consumers forward messages 2.5 s after they happened
        status, _, payload = _status_headers_body((await _call(gate, "/api/v1/trackers/3/stop", "POST"))[0])
        assert status == 503 and json.loads(payload)["extra"] == {"reason": "backlog"}
        assert _status_headers_body((await _call(gate, "/api/v1/me", "GET"))[0])[0] == 200

    asyncio.run(body())


def test_a_split_tier_s_http_processes_refuse_while_a_socket_process_forwards_late(settings, live_lag, lag_keys):
    """config.serve --ws-processes: the sockets live in other processes; theirs is the lag that counts."""
    settings.WEB_MAX_DELIVERY_LAG_SECONDS = 1.0
    settings.WEB_WS_PROCESSES = 2
    live_keys = [lag.live_lag_key(i) for i in range(2)]
    lag_keys.delete(*live_keys)
    served = SlowApp()
    served.release.set()

    async def socket_process():  # WEB_WS_INDEX=1: its consumers forward messages 2.5 s late
        live_lag.observe(2.5)
        await asyncio.gather(*live_lag.publisher.tasks)

    settings.WEB_WS_INDEX = "1"
    try:
        asyncio.run(socket_process())
    finally:
        settings.WEB_WS_INDEX = ""
    assert 2.4 < float(lag_keys.get(live_keys[1])) < 2.6
    assert 0 < lag_keys.pttl(live_keys[1]) <= lag.LAG_TTL_SECONDS * 1000  # a stopped process's value expires
    for name in ("current", "previous", "started"):  # the HTTP process: no sockets of its own
        setattr(live_lag, name, 0.0)

    async def http_process():
        gate = AdmissionControl(served, max_in_flight=100)
        status, _, payload = _status_headers_body((await _call(gate, "/api/v1/trackers/3/stop", "POST"))[0])
        assert status == 503 and json.loads(payload)["extra"] == {"reason": "backlog"}
        assert _status_headers_body((await _call(gate, "/api/v1/me", "GET"))[0])[0] == 200
        lag_keys.delete(*live_keys)  # caught up
        gate = AdmissionControl(served, max_in_flight=100)
        assert _status_headers_body((await _call(gate, "/api/v1/trackers/3/stop", "POST"))[0])[0] == 200

    try:
        asyncio.run(http_process())
    finally:
        lag_keys.delete(*live_keys)
