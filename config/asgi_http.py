"""Django's ASGI handler with one thread hop per request instead of five.

Herald's views and middleware are synchronous. Under Django's stock ASGIHandler a request crosses
between the event loop and a thread about five times: the request_started signal, the middleware
chain (run in a thread because its innermost middleware is sync-only), back to the loop for URL
resolution (`async_to_sync`), the view (a thread again), and `response.close()` with the
request_finished signal; and every request gets a thread of its own, created and joined
(asgiref's ThreadSensitiveContext without an executor). This handler builds the middleware
chain in sync mode, as under WSGI, and runs the whole of it (signals, request, middleware, view,
close) in one `sync_to_async` call, on a thread-sensitive executor kept from one request to the
next (asgiref's ThreadSensitiveContext(executor=...): one request at a time per executor, so a
view's `async_to_sync` calls still come back to its own thread, as Django's contract says).

Streaming responses (file downloads) are sent as Django sends them, and closed after their last
chunk; any other response is closed (request_finished: the database connection goes back to its
pool) before its bytes go out: the body is already built.
"""
import asyncio
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.exceptions import RequestAborted
from django.http import FileResponse
from django.urls import set_script_prefix

MAX_IDLE_EXECUTORS = 64  # threads kept for the next requests (beyond it, a burst's extra threads end)


class OneHopASGIHandler(ASGIHandler):
    def __init__(self):
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.idle.pop() if self.idle else ThreadPoolExecutor(max_workers=1,
                                                                           thread_name_prefix="request")
        finished = False
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
            finished = True
        finally:
            if finished and len(self.idle) < MAX_IDLE_EXECUTORS:
                self.idle.append(executor)
            else:  # cancelled mid-request, its thread may still run the view: not reused
                executor.shutdown(wait=False)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        try:
            response = await sync_to_async(self.respond, thread_sensitive=True)(scope, body_file)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client went away while the answer was sent
            if response.streaming:
                await sync_to_async(response.close, thread_sensitive=True)()
        finally:
            body_file.close()

    def respond(self, scope, body_file):
        """Everything synchronous about a request, on its thread: request_started, the request,
        the middleware and the view, and (unless it streams) the response's close."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        if not response.streaming:
            response.close()
        return response
