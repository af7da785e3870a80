"""In-app + WebSocket: the inbox row of every audience member and one live message per entry.

A local channel: `apply` runs inside the fence's transaction (one INSERT ... SELECT per run,
idempotent), `published` pushes the messages after commit to group org.<id>. Each message
carries the entry's audience and the members' notification ids; each member's consumer turns
its own id into `notification.created` and shows members outside the audience only the seq.
"""
import logging
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from notifications import metrics, realtime
from notifications.channels.base import Channel
from notifications.events import entry_message
from notifications.kinds import kind_get

logger = logging.getLogger("herald.delivery")

# A row per (entry, audience member still active), titles rendered by the entry's kind.
# Idempotent: a redelivered run inserts nothing twice.
_FANOUT_SQL = """
INSERT INTO notifications_notification
    (organization_id, recipient_id, entry_id, seq, kind, title, body, data, created_at, read_at)
SELECT l.organization_id, u.id, l.id, l.seq, l.kind, v.title, v.body, l.payload, now(), NULL
FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(entry_id, title, body)
JOIN notifications_logentry l ON l.id = v.entry_id
CROSS JOIN LATERAL unnest(l.audience) AS a(user_id)
JOIN organizations_user u ON u.id = a.user_id AND u.is_active
ORDER BY l.seq, u.id
ON CONFLICT (recipient_id, entry_id) WHERE entry_id IS NOT NULL DO NOTHING
RETURNING id, recipient_id, seq
"""


@dataclass
class Published:
    messages: list
    entries: list
    rows: int


class InAppChannel(Channel):
    external = False
    provider_queue = False
    default_options = {"batch_max": 50}

    def target(self, *, organization_id: int, destination: str):
        return organization_id

    def apply(self, *, organization_id: int, entries: list) -> Published:
        titles, bodies, inbox = [], [], ([], [], [])
        for entry in entries:
            kind, view = kind_get(entry.kind), entry.view()
            title, body = kind.title(view)[:255], kind.body(view)
            titles.append(title)
            bodies.append(body)
            if self.name in kind.channels:  # else live only: no inbox row
                for column, value in zip(inbox, (entry.id, title, body), strict=True):
                    column.append(value)
        rows = []
        if inbox[0]:
            with connection.cursor() as cursor:
                cursor.execute(_FANOUT_SQL, list(inbox))
                rows = cursor.fetchall()
        by_seq: dict[int, dict[str, int]] = {}
        for notification_id, recipient_id, seq in rows:
            by_seq.setdefault(seq, {})[str(recipient_id)] = notification_id
        group = realtime.org_group(organization_id)
        messages = []
        for entry, title, body in zip(entries, titles, bodies, strict=True):
            message = entry_message(entry=entry)
            message.update(audience=entry.audience, notifications=by_seq.get(entry.seq, {}), title=title, body=body)
            messages.append((group, message))
        return Published(messages=messages, entries=entries, rows=len(rows))

    def published(self, result: Published) -> None:
        try:
            realtime.publish(result.messages)
        except Exception:  # the inbox rows are committed; sockets catch up from the log
            logger.warning("live messages not published (channel layer unavailable)", exc_info=True)
        now = timezone.now()
        metrics.DELIVERIES.labels(channel="inapp", outcome="sent").inc(result.rows)
        metrics.DELIVERIES.labels(channel="websocket", outcome="sent").inc(len(result.entries))
        for entry in result.entries:
            metrics.LATENCY.labels(channel="inapp").observe(max(0.0, (now - entry.occurred_at).total_seconds()))
