"""Celery entry points of the delivery pipeline. Thin: call a service, apply the policy it returns.

drain_partition drains every kicked local stream of one org partition (queue org-<k>);
deliver_stream drains one stream (external channels, and a local stream's delayed-retry chain).
Both are routed by config.routing (partition tasks and local channels to the partition queue,
provider channels to the provider queue); correctness does not depend on that routing (see
notifications.delivery.fence)."""
import logging

from celery import shared_task
from django.db import OperationalError

from notifications import digests, email, retention, services
from notifications.channels import callbacks
from notifications.delivery import drain, kicks, sweeper
from notifications.send import idempotency as send_idempotency
from notifications.send import services as send_services

logger = logging.getLogger("herald.delivery")


@shared_task(name="notifications.tasks.deliver_stream", acks_late=True, time_limit=120, soft_time_limit=100,
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=None)
def deliver_stream(*, org_id: int, channel: str, destination: str = "", retry: bool = False) -> str:
    """retry=True marks the stream's one delayed-retry chain (see kicks.stream_retry_token)."""
    result = drain.stream_drain(org_id=org_id, channel=channel, destination=destination)
    step = drain.drain_next(org_id=org_id, channel=channel, destination=destination, retry=retry, result=result)
    if step.again:
        kicks.drain_enqueue(org_id=org_id, channel=channel, destination=destination, retry=step.retry,
                            countdown=step.countdown)
    return result.kind


@shared_task(name="notifications.tasks.drain_partition", acks_late=True, time_limit=120, soft_time_limit=100,
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=None)
def drain_partition(*, partition: int) -> str:
    """One wake of a partition: drains its dirty streams until none is left (then releases the
    partition's flag) or its budget is spent (then hands over to a new task, keeping the flag)."""
    result = drain.partition_drain(partition=partition)
    if result.kind == "more":
        kicks.partition_enqueue(partition=partition)
    return result.kind


@shared_task(name="notifications.tasks.sweep_streams", acks_late=True, time_limit=60)
def sweep_streams() -> int:
    return sweeper.streams_sweep()


@shared_task(name="notifications.tasks.send_late_delivery", acks_late=True, time_limit=60)
def send_late_delivery(*, delivery_id: int) -> str:
    result = services.late_delivery_send(delivery_id=delivery_id)
    if result.kind in ("busy", "wait"):
        send_late_delivery.apply_async(kwargs={"delivery_id": delivery_id},
                                       countdown=max(drain.BUSY_RETRY_SECONDS, result.wait))
    return result.kind


# --- account emails (notifications.email) -----------------------------------------------------

@shared_task(name="notifications.tasks.drain_outbound_email", acks_late=True, time_limit=120, soft_time_limit=100,
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=None)
def drain_outbound_email(*, lane: int = 0) -> str:
    """One drain lane of account emails (default queue). Reschedules itself while there is work;
    a lane's lease in Redis keeps at most one task per lane in flight."""
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
    return email.email_sweep()


@shared_task(name="notifications.tasks.archive_notifications", acks_late=True, time_limit=6 * 3600,
             soft_time_limit=6 * 3600 - 60)
def archive_notifications() -> dict:
    """Daily: archive and remove notifications and delivery records past the retention."""
    return {a.model: a.rows for a in retention.notifications_archive()}


# --- the send API (notifications.send) --------------------------------------------------------

@shared_task(name="notifications.tasks.sweep_due_sends", acks_late=True, time_limit=60)
def sweep_due_sends() -> int:
    """Publish scheduled sends that fell due (beat, every SEND_DISPATCH_INTERVAL_SECONDS)."""
    return send_services.sends_dispatch_due()


@shared_task(name="notifications.tasks.publish_due_digests", acks_late=True, time_limit=120)
def publish_due_digests() -> int:
    """Members' digests whose window ended, one entry each (beat, every DIGEST_INTERVAL_SECONDS)."""
    return digests.digests_publish_due()


@shared_task(name="notifications.tasks.sweep_idempotency_keys", acks_late=True, time_limit=300)
def sweep_idempotency_keys() -> int:
    return send_idempotency.idempotency_keys_purge()


@shared_task(name="notifications.tasks.sweep_early_status_reports", acks_late=True, time_limit=60)
def sweep_early_status_reports() -> int:
    """Provider status reports that overtook the commit of their send (beat)."""
    return callbacks.held_reports_sweep()
