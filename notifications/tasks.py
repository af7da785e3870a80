"""Celery entry points of the delivery pipeline. Thin: re-check state, call a service, reschedule.

deliver_stream is routed by config.routing: the in-app stream to the organization's partition queue,
Slack and email streams to the provider queue; correctness does not depend on that routing (see
notifications.services)."""
import logging

from celery import shared_task
from django.db import OperationalError

from notifications import services

logger = logging.getLogger("herald.delivery")

BUSY_RETRY_SECONDS = 0.2


@shared_task(name="notifications.tasks.deliver_stream", acks_late=True, time_limit=120, soft_time_limit=100,
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=None)
def deliver_stream(*, org_id: int, channel: str, destination: str = "", retry: bool = False) -> str:
    """retry=True marks the stream's one delayed-retry chain (see services.stream_retry_token)."""
    result = services.stream_drain(org_id=org_id, channel=channel, destination=destination)
    again = {"org_id": org_id, "channel": channel}
    if destination:
        again["destination"] = destination
    token = {"org_id": org_id, "channel": channel, "destination": destination, "owner": retry}
    if result.kind == "more":  # budget used up with work left: continue at once, same role
        deliver_stream.apply_async(kwargs={**again, "retry": retry})
    elif result.kind in ("busy", "wait"):
        # busy: another worker holds the stream and may have read the pending set before our event.
        # wait: backoff, limiter or breaker.
        delay = BUSY_RETRY_SECONDS if result.kind == "busy" else max(0.05, result.wait)
        if services.stream_retry_token(**token, delay=delay):
            deliver_stream.apply_async(kwargs={**again, "retry": True}, countdown=delay)
    elif services.stream_retry_token(**token, delay=None):
        deliver_stream.apply_async(kwargs=again)  # an event arrived while this chain was waiting
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


# --- email (notifications.email) ---------------------------------------------------------------

@shared_task(name="notifications.tasks.drain_outbound_email", acks_late=True, time_limit=120, soft_time_limit=100,
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=None)
def drain_outbound_email(*, lane: int = 0) -> str:
    """One drain lane of account emails (default queue). Reschedules itself while there is work;
    a lane's lease in Redis keeps at most one task per lane in flight."""
    from notifications import email

    result = email.outbound_drain()
    if result.kind == "more":
        email.outbound_lane_renew(lane=lane)
        drain_outbound_email.apply_async(kwargs={"lane": lane})
    elif result.kind == "wait":
        delay = max(0.05, result.wait)
        email.outbound_lane_renew(lane=lane, delay=delay)
        drain_outbound_email.apply_async(kwargs={"lane": lane}, countdown=delay)
    else:
        email.outbound_lane_release(lane=lane)
    return result.kind


@shared_task(name="notifications.tasks.sweep_email", acks_late=True, time_limit=60)
def sweep_email() -> int:
    from notifications import email

    return email.email_sweep()
