"""Publishing to WebSocket groups from sync code (workers, services) over the Channels layer.

The pub/sub layer publishes from the calling thread with a blocking Redis client. For the queue
layer each process keeps one event loop on a background thread so the channel layer's Redis pool
stays warm; async_to_sync would build a new loop and connection per call. A call's messages go
out in the order given (the pub/sub layer pipelines its PUBLISHes: one round trip), and the call
returns once Redis has them: two calls in a row reach every subscriber in that order.
"""
import asyncio
import os
import threading

from channels.layers import get_channel_layer

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None


def _get_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid():  # after a fork, start afresh
            _loop = asyncio.new_event_loop()
            _loop_pid = os.getpid()
            threading.Thread(target=_loop.run_forever, name="herald-realtime", daemon=True).start()
        return _loop


async def _send_all(messages: list[tuple[str, dict]]) -> None:
    layer = get_channel_layer()
    send_many = getattr(layer, "group_send_many", None)
    if send_many is not None:
        await send_many(messages)
        return
    for group, message in messages:  # sequential: order within a group is the order given
        await layer.group_send(group, message)


def publish(messages: list[tuple[str, dict]], timeout: float = 10.0) -> None:
    """Send (group, message) pairs in order; raises if the channel layer is unreachable."""
    if not messages:
        return
    send_sync = getattr(get_channel_layer(), "group_send_many_sync", None)
    if send_sync is not None:  # the pub/sub layer: straight from this thread
        send_sync(messages, timeout=timeout)
        return
    future = asyncio.run_coroutine_threadsafe(_send_all(messages), _get_loop())
    future.result(timeout=timeout)


def org_group(org_id: int) -> str:
    return f"org.{org_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def membership_changed_push(*, user_id: int) -> None:
    """Tell the user's open connections to re-read their memberships (call after commit)."""
    publish([(user_group(user_id), {"type": "membership.changed"})])
