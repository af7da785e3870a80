"""Writes around delivery that are not the fence itself: dead letters (requeue, discard), held
streams, and the out-of-band send of a requeued dead letter. The fence, kicks and sweeper live
in notifications.delivery; channels in notifications.channels."""
import logging

from celery import current_app
from django.db import transaction

from config.errors import Conflict
from notifications.channels import registry
from notifications.channels.base import Run
from notifications.delivery import status
from notifications.delivery.streams import DbClock
from notifications.delivery.kicks import stream_kick
from notifications.delivery.types import DeliveryFailure, DrainResult, RateLimitedFailure
from notifications.errors import NotificationsError
from notifications.models import Delivery, DeliveryStream, LogEntry

logger = logging.getLogger("herald.delivery")


# --- dead letters ----------------------------------------------------------------------------

def _kick_on_commit(stream: DeliveryStream) -> None:
    transaction.on_commit(lambda: stream_kick(org_id=stream.organization_id, channel=stream.channel,
                                              destination=stream.destination, force=True), robust=True)


@transaction.atomic
def stream_release_hold(*, stream: DeliveryStream) -> None:
    """Resume a held stream (its dead head was fixed elsewhere): kick it, destination included."""
    DeliveryStream.objects.filter(pk=stream.pk, held=True).update(held=False, updated_at=DbClock())
    _kick_on_commit(stream)


@transaction.atomic
def delivery_requeue(*, delivery: Delivery) -> Delivery:
    """Send a dead letter again. On a held stream it is still the head: the stream resumes in order.
    On a stream that moved on, it goes out late (marked so), without moving the cursor back; if
    its task is lost, the sweeper sends it."""
    delivery = Delivery.objects.select_for_update().get(pk=delivery.pk)
    if delivery.status != Delivery.Status.DEAD:
        raise Conflict("Only dead letters can be requeued.", code=NotificationsError.NOT_DEAD_LETTER)
    stream = DeliveryStream.objects.select_for_update().get(pk=delivery.stream_id)
    if stream.held and stream.delivered_seq < delivery.first_seq:
        Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.PENDING, attempts=0, last_error="",
                                                       created_at=DbClock(), updated_at=DbClock(), verify_first=False)
        DeliveryStream.objects.filter(pk=stream.pk).update(held=False, head_attempts=0, next_attempt_at=None,
                                                           updated_at=DbClock())
        _kick_on_commit(stream)
    else:
        Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.PENDING, late=True, attempts=0,
                                                       last_error="", updated_at=DbClock())
        task = "notifications.tasks.send_late_delivery"
        transaction.on_commit(lambda: _send_task(task, {"delivery_id": delivery.pk}), robust=True)
    delivery.refresh_from_db()
    return delivery


def _send_task(name: str, kwargs: dict) -> None:
    current_app.send_task(name, kwargs=kwargs)


@transaction.atomic
def delivery_discard(*, delivery: Delivery) -> Delivery:
    """Give up on a dead letter for good (it stays recorded as discarded)."""
    if delivery.status == Delivery.Status.DEAD:
        Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.DISCARDED, updated_at=DbClock())
        stream = DeliveryStream.objects.select_for_update().get(pk=delivery.stream_id)
        if stream.held and stream.delivered_seq < delivery.first_seq:  # skip it and resume
            DeliveryStream.objects.filter(pk=stream.pk).update(
                held=False, delivered_seq=delivery.last_seq, head_attempts=0, next_attempt_at=None,
                updated_at=DbClock())
            _kick_on_commit(stream)
        delivery.refresh_from_db()
    return delivery


def late_delivery_send(*, delivery_id: int) -> DrainResult:
    """Send a requeued dead letter out of band, holding the stream's lock so it never interleaves
    with a regular send; the cursor is not touched. One attempt: a failure makes it dead again."""
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id, late=True,
                                                               status=Delivery.Status.PENDING).first()
        if delivery is None:
            return DrainResult("idle")
        stream = DeliveryStream.objects.select_for_update(skip_locked=True).filter(pk=delivery.stream_id).first()
        if stream is None:
            return DrainResult("busy")
        try:
            ch = registry.get(stream.channel)
        except registry.UnknownChannel:
            return DrainResult("idle")
        target = ch.target(organization_id=stream.organization_id, destination=stream.destination)
        if target is None:
            Delivery.objects.filter(pk=delivery.pk).update(
                status=Delivery.Status.DEAD, last_error="late send failed: destination gone", updated_at=DbClock())
            return DrainResult("delivered")
        gate = ch.gate(target, since=None, member=f"late:{delivery.pk}")
        if not gate.allowed:
            return DrainResult("wait", wait=gate.wait)
        entries = list(LogEntry.objects.filter(organization_id=stream.organization_id, seq__gte=delivery.first_seq,
                                               seq__lte=delivery.last_seq).order_by("seq"))
        run = Run(organization_id=stream.organization_id, destination=stream.destination, delivery_id=delivery.pk,
                  first_seq=delivery.first_seq, last_seq=delivery.last_seq, entries=entries,
                  attempt=delivery.attempts + 1, late=True)
        try:
            ref = ch.send(target, run, ch.render(target, run), gate)
        except RateLimitedFailure as exc:
            ch.pause(target, exc.scope, exc.retry_after)
            return DrainResult("wait", wait=exc.retry_after)
        except DeliveryFailure as exc:
            Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.DEAD, attempts=delivery.attempts + 1,
                                                           last_error=f"late send failed: {exc}"[:2000],
                                                           updated_at=DbClock())
            return DrainResult("delivered")
        # A requeued dead letter that went out: its status rows (dead) say so now.
        status.run_record(channel=ch.name, recipient_id=ch.recipient_id(target), entries=entries, state="sent",
                          from_states=("dead",))
        Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.SENT, sent_at=DbClock(),
                                                       provider_ref=ref[:120], attempts=delivery.attempts + 1,
                                                       updated_at=DbClock())
        return DrainResult("delivered", count=delivery.last_seq - delivery.first_seq + 1)
