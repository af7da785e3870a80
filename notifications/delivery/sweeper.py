"""The sweeper: a lost kick delays, never loses. Beat runs `streams_sweep` every few seconds.

A stream is stalled when it is active, not held, not waiting on a time it was given
(next_attempt_at in the future: backoff, Retry-After, a deferral), and its head entry has waited
longer than DELIVERY_STALL_SECONDS without the stream being touched. Oldest head first, so
streams that keep being re-kicked cannot crowd out a really lost one. Only organizations with
an entry in the lookback window are read (index org_recent_activity): a sweep costs what the
active organizations cost. Late sends of requeued dead letters whose task was lost are re-sent.
Every comparison uses Postgres' clock.
"""
import logging

from celery import current_app
from django.conf import settings
from django.db import connection
from prometheus_client.core import GaugeMetricFamily

from notifications import metrics
from notifications.delivery.kicks import streams_kick_swept

logger = logging.getLogger("herald.delivery")

LATE_TASK = "notifications.tasks.send_late_delivery"

_STALLED_SQL = """
SELECT s.organization_id, s.channel, s.destination
FROM organizations_organization o
JOIN notifications_deliverystream s ON s.organization_id = o.id
JOIN notifications_logentry e ON e.organization_id = s.organization_id AND e.seq = s.delivered_seq + 1
WHERE o.last_event_at > clock_timestamp() - make_interval(secs => %(lookback)s)
  AND s.delivered_seq < o.last_event_seq
  AND s.active AND NOT s.held
  AND s.updated_at < clock_timestamp() - make_interval(secs => %(stall)s)
  AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= clock_timestamp())
  AND e.occurred_at < clock_timestamp() - make_interval(secs => %(stall)s)
ORDER BY e.occurred_at
LIMIT %(limit)s
"""

_LATE_SQL = """
SELECT d.id FROM notifications_delivery d
WHERE d.status = 'pending' AND d.late AND d.created_at > clock_timestamp() - interval '7 days'
  AND d.updated_at < clock_timestamp() - make_interval(secs => %(stall)s)
ORDER BY d.id LIMIT %(limit)s
"""


def streams_stalled(*, older_than: float, lookback_hours: float = 24 * 7,
                    limit: int = 1000) -> list[tuple[int, str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(_STALLED_SQL, {"lookback": lookback_hours * 3600, "stall": older_than, "limit": limit})
        return cursor.fetchall()


def late_deliveries_stalled(*, older_than: float, limit: int = 1000) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(_LATE_SQL, {"stall": older_than, "limit": limit})
        return [row[0] for row in cursor.fetchall()]


def streams_sweep() -> int:
    stalled = streams_stalled(older_than=settings.DELIVERY_STALL_SECONDS)
    streams_kick_swept(stalled)
    late = late_deliveries_stalled(older_than=settings.DELIVERY_STALL_SECONDS * 3)
    for delivery_id in late:
        current_app.send_task(LATE_TASK, kwargs={"delivery_id": delivery_id})
    if stalled or late:
        logger.info("sweeper re-kicked stalled streams", extra={"count": len(stalled), "late": len(late)})
    metrics.SWEEPER_KICKS.inc(len(stalled) + len(late))
    return len(stalled) + len(late)


def backlog_by_channel() -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT s.channel, COALESCE(SUM(o.last_event_seq - s.delivered_seq), 0)
               FROM organizations_organization o JOIN notifications_deliverystream s ON s.organization_id = o.id
               WHERE o.last_event_at > clock_timestamp() - interval '7 days' AND s.active
                 AND s.delivered_seq < o.last_event_seq GROUP BY s.channel"""
        )
        return dict(cursor.fetchall())


class BacklogCollector:
    """Undelivered events per channel, read from Postgres at scrape time."""

    def collect(self):
        family = GaugeMetricFamily("herald_delivery_backlog", "Events not yet delivered, per channel",
                                   labels=["channel"])
        try:
            for channel, backlog in backlog_by_channel().items():
                family.add_metric([channel], float(backlog))
        except Exception:  # a scrape must not fail because Postgres is briefly away
            logger.warning("backlog metric unavailable", exc_info=True)
        yield family
