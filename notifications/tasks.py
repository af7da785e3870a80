"""Celery entry points of the delivery pipeline. Thin: re-check state, call a service, reschedule.

deliver_stream is routed to the organization's partition queue (config.routing) because it takes
`org_id`; correctness does not depend on that routing (see notifications.services)."""
import logging

from celery import shared_task
from django.db import OperationalError

from notifications import services

logger = logging.getLogger("herald.delivery")

BUSY_RETRY_SECONDS = 0.2


@shared_task(name="notifications.tasks.deliver_stream", acks_late=True, time_limit=120, soft_time_limit=100,
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=None)
def deliver_stream(*, org_id: int, channel: str, destination: str = "") -> str:
    result = services.stream_drain(org_id=org_id, channel=channel, destination=destination)
    again = {"org_id": org_id, "channel": channel}
    if destination:
        again["destination"] = destination
    if result.kind == "more":
        deliver_stream.apply_async(kwargs=again)
    elif result.kind == "busy":
        # Another worker holds the stream; it may have read the pending set before our event.
        deliver_stream.apply_async(kwargs=again, countdown=BUSY_RETRY_SECONDS)
    elif result.kind == "wait":
        deliver_stream.apply_async(kwargs=again, countdown=max(0.05, result.wait))
    return result.kind


@shared_task(name="notifications.tasks.sweep_streams", acks_late=True, time_limit=60)
def sweep_streams() -> int:
    return services.streams_sweep()


@shared_task(name="notifications.tasks.send_late_delivery", acks_late=True, time_limit=60)
def send_late_delivery(*, delivery_id: int) -> str:
    result = services.late_delivery_send(delivery_id=delivery_id)
    if result.kind in ("busy", "wait"):
        send_late_delivery.apply_async(kwargs={"delivery_id": delivery_id},
                                       countdown=max(BUSY_RETRY_SECONDS, result.wait))
    return result.kind
