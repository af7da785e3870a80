"""The HTTP handler (config/asgi_http.py): one thread hop per request on a thread kept between
requests, Django's contract kept (signals once per request, a view's async_to_sync back on its own
thread, streaming responses sent whole and closed after their last chunk)."""
import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core import signals
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

from config.asgi_http import OneHopASGIHandler

SEEN: dict = {}


def where(request):
    SEEN.setdefault("threads", []).append(threading.get_ident())

    async def back_to_my_thread():
        return await sync_to_async(threading.get_ident, thread_sensitive=True)()

    SEEN["async_to_sync_thread"] = async_to_sync(back_to_my_thread)()
    return JsonResponse({"ok": True})


def stream(request):
    def chunks():
        for i in range(3):
            SEEN.setdefault("chunks", []).append(i)
            yield f"part{i};".encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def fails(request):
    raise RuntimeError("boom")


def slow(request):
    SEEN["slow_started"].set()
    SEEN["slow_release"].wait(5)
    return HttpResponse("late")


urlpatterns = [path("where", where), path("stream", stream), path("fails", fails), path("slow", slow)]


@pytest.fixture
def handler(settings):
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["testserver"]
    SEEN.clear()
    return OneHopASGIHandler()


@pytest.fixture
def signal_log():
    log = []

    def started(**kwargs):
        log.append(("started", SEEN.get("chunks", []).copy()))

    def finished(**kwargs):
        log.append(("finished", SEEN.get("chunks", []).copy()))

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    yield log
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)


async def _get(app, url: str):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": url, "raw_path": url.encode(), "query_string": b"",
             "headers": [(b"host", b"testserver")], "http_version": "1.1", "scheme": "http",
             "server": ("testserver", 80), "client": ("127.0.0.1", 1), "root_path": ""}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_requests_run_on_one_kept_thread_off_the_event_loop(handler, signal_log):
    async def two_requests():
        loop_thread = threading.get_ident()
        first = await _get(handler, "/where")
        second = await _get(handler, "/where")
        return loop_thread, first, second

    loop_thread, first, second = asyncio.run(two_requests())

    assert first == second == (200, b'{"ok": true}')
    view_threads = SEEN["threads"]
    assert view_threads[0] == view_threads[1] != loop_thread  # the same thread, kept for the next request
    assert SEEN["async_to_sync_thread"] == view_threads[1]  # the view's async_to_sync came back to it
    assert len(handler.idle) == 1
    assert [kind for kind, _ in signal_log] == ["started", "finished", "started", "finished"]


def test_a_streaming_response_is_sent_whole_and_closed_after_its_last_chunk(handler, signal_log):
    status, body = asyncio.run(_get(handler, "/stream"))

    assert (status, body) == (200, b"part0;part1;part2;")
    assert signal_log == [("started", []), ("finished", [0, 1, 2])]


def test_an_error_in_a_view_is_a_500_answer_and_the_thread_is_kept(handler, signal_log):
    status, _ = asyncio.run(_get(handler, "/fails"))

    assert status == 500
    assert [kind for kind, _ in signal_log] == ["started", "finished"]
    assert len(handler.idle) == 1


def test_a_cancelled_request_does_not_lend_its_busy_thread_to_the_next(handler):
    SEEN["slow_started"], SEEN["slow_release"] = threading.Event(), threading.Event()

    async def cancel_one_then_ask_again():
        task = asyncio.create_task(_get(handler, "/slow"))
        while not SEEN["slow_started"].is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        idle_after_cancel = len(handler.idle)
        answer = await asyncio.wait_for(_get(handler, "/where"), timeout=2)  # not queued behind /slow
        SEEN["slow_release"].set()
        return idle_after_cancel, answer

    idle_after_cancel, answer = asyncio.run(cancel_one_then_ask_again())

    assert idle_after_cancel == 0
    assert answer == (200, b'{"ok": true}')


def test_the_application_serves_http_through_it():
    from config import asgi

    assert isinstance(asgi.django_asgi_app, OneHopASGIHandler)
