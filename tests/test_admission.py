"""Admission control (config/admission.py): the excess over a web process's capacity is answered at
once with 503 service_unavailable + Retry-After, in the one error format, instead of queueing
until the client times out; probes are never refused."""
import asyncio
import json
import time

import pytest
from channels.testing import HttpCommunicator
from django.test import RequestFactory

from config import admission
from config.asgi import application
from config.admission import AdmissionControl, QueueDeadlineMiddleware, QueueState


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


def _scope(path="/api/v1/me"):
    return {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": [],
            "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}


async def _call(app, path="/api/v1/me"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    started = time.monotonic()
    await app(_scope(path), receive, send)
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
