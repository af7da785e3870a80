"""In-app + WebSocket: the inbox row of every audience member and one live message per entry.

A local channel: `apply` runs inside the fence's transaction (one INSERT ... SELECT per run,
idempotent), `published` pushes the messages after commit to group org.<id>. Each message
carries the entry's audience and the members' notification ids; each member's consumer turns
its own id into `notification.created` and shows members outside the audience only the seq.
"""
import json
import logging
from dataclasses import dataclass

from django.core.serializers.json import DjangoJSONEncoder

from django.db import connection
from django.utils import timezone

from notifications import metrics, policy, realtime
from notifications.channels.base import Channel
from notifications.delivery.lag import LagRecorder
from notifications.events import entry_message
from notifications.kinds import kind_get

logger = logging.getLogger("herald.delivery")
LAG = LagRecorder()  # this process's observations of how late the fan-out runs (config/admission.py)

# A row per (entry, audience member still active who gets the entry's category in-app: their
# preferences, the organization's defaults, notifications.policy; and who does not have it held for
# a digest), titles rendered by the entry's kind. Idempotent: a redelivered run inserts nothing twice.
# Every lookup per row is a scalar subquery (one index probe), so the join search has three
# relations (policy.effective_sql says why: with the member and preference tables joined, planning
# cost more than the INSERT itself). The entries come as arrays (`_FANOUT_SQL`), for which Postgres
# makes a custom plan on every execution, or, for a run of one entry (the usual drain), as scalars
# (`_FANOUT_ONE_SQL`): the same plan whatever the values, so Postgres keeps the generic one once
# psycopg has prepared the statement, and stops planning it per drain (0.5 ms of planning against
# 0.2 ms of execution per call, pg_stat_statements under bench/capacity.py, 2026-12-04).
_PREF_ON = policy.effective_sql(user="a.user_id", org="l.organization_id", channel="%(channel)s::text",
                                category="v.category", builtin="true")
_FANOUT_TEMPLATE = f"""
INSERT INTO notifications_notification
    (organization_id, recipient_id, entry_id, seq, kind, title, body, data, created_at, read_at)
SELECT l.organization_id, a.user_id, l.id, l.seq, l.kind, v.title, v.body, l.payload, now(), NULL
FROM {{entries}} AS v(entry_id, title, body, category, locked)
JOIN notifications_logentry l ON l.id = v.entry_id
CROSS JOIN LATERAL unnest(l.audience) AS a(user_id)
WHERE (SELECT u.is_active FROM organizations_user u WHERE u.id = a.user_id)
  AND (v.locked OR {_PREF_ON})
  AND NOT EXISTS (SELECT 1 FROM notifications_digestitem di WHERE di.entry_id = l.id AND di.user_id = a.user_id)
ORDER BY l.seq, a.user_id
ON CONFLICT (recipient_id, entry_id) WHERE entry_id IS NOT NULL DO NOTHING
RETURNING id, recipient_id, seq
"""
_FANOUT_SQL = _FANOUT_TEMPLATE.format(entries="unnest(%(ids)s::bigint[], %(titles)s::text[], %(bodies)s::text[], "
                                              "%(categories)s::text[], %(locked)s::boolean[])")
_FANOUT_ONE_SQL = _FANOUT_TEMPLATE.format(entries="(SELECT %(id)s::bigint, %(title)s::text, %(body)s::text, "
                                                  "%(category)s::text, %(locked)s::boolean)")
_FANOUT_COLUMNS = {"ids": "id", "titles": "title", "bodies": "body", "categories": "category", "locked": "locked"}

# Entries of tracked kinds (API sends): the rows still `queued` for this channel are claimed
# (-> sent) in the same statement that writes their inbox rows, so a cancelled, suppressed or
# shed recipient gets nothing, and a cancel that commits first is seen (the UPDATE re-checks the
# row after waiting for its lock). Title and body in each recipient's locale.
_TRACKED_SQL = """
WITH claimed AS (
    UPDATE notifications_senddelivery d SET state = 'sent', sent_at = now(), updated_at = now()
    FROM organizations_user u
    WHERE d.entry_id = ANY(%(ids)s::bigint[]) AND d.channel = %(channel)s AND d.state = 'queued'
      AND u.id = d.user_id AND u.is_active
    RETURNING d.entry_id, d.user_id, d.locale
)
INSERT INTO notifications_notification
    (organization_id, recipient_id, entry_id, seq, kind, title, body, data, created_at, read_at)
SELECT l.organization_id, c.user_id, l.id, l.seq, l.kind, COALESCE(v.title, f.title), COALESCE(v.body, f.body),
       f.data::jsonb, now(), NULL
FROM claimed c
JOIN notifications_logentry l ON l.id = c.entry_id
JOIN unnest(%(ids)s::bigint[], %(titles)s::text[], %(bodies)s::text[], %(data)s::text[])
     AS f(entry_id, title, body, data) ON f.entry_id = c.entry_id
LEFT JOIN unnest(%(v_ids)s::bigint[], %(v_locales)s::text[], %(v_titles)s::text[], %(v_bodies)s::text[])
     AS v(entry_id, locale, title, body) ON v.entry_id = c.entry_id AND v.locale = c.locale
ORDER BY l.seq, c.user_id
ON CONFLICT (recipient_id, entry_id) WHERE entry_id IS NOT NULL DO NOTHING
RETURNING id, recipient_id, seq
"""


_SEGMENT_COLUMNS = ("ids", "titles", "bodies", "categories", "locked", "data", "v_ids", "v_locales", "v_titles",
                    "v_bodies")


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
        titles, bodies, segments = [], [], []
        for entry in entries:
            kind, view = kind_get(entry.kind), entry.view()
            title, body = kind.title(view)[:255], kind.body(view)
            titles.append(title)
            bodies.append(body)
            if self.name not in kind.channels:  # live only: no inbox row
                continue
            if not segments or segments[-1][0] != kind.tracked:  # one statement per run of alike entries
                segments.append((kind.tracked, {k: [] for k in _SEGMENT_COLUMNS}))
            columns = segments[-1][1]
            category = policy.entry_category(entry)
            for name, value in (("ids", entry.id), ("titles", title), ("bodies", body), ("categories", category),
                                ("locked", policy.is_locked(category))):
                columns[name].append(value)
            if kind.tracked:
                columns["data"].append(json.dumps(kind.inbox_data(view), cls=DjangoJSONEncoder))
                for locale, (v_title, v_body) in (kind.localized(view) if kind.localized else {}).items():
                    for name, value in (("v_ids", entry.id), ("v_locales", locale), ("v_titles", v_title[:255]),
                                        ("v_bodies", v_body)):
                        columns[name].append(value)
        rows = []
        with connection.cursor() as cursor:
            for tracked, columns in segments:  # in seq order, so inbox ids follow the log
                if tracked:
                    cursor.execute(_TRACKED_SQL, {**columns, "channel": self.name})
                elif len(columns["ids"]) == 1:
                    cursor.execute(_FANOUT_ONE_SQL, {one: columns[name][0] for name, one in _FANOUT_COLUMNS.items()}
                                   | {"channel": self.name})
                else:
                    cursor.execute(_FANOUT_SQL, {name: columns[name] for name in _FANOUT_COLUMNS}
                                   | {"channel": self.name})
                rows += cursor.fetchall()
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

    def published_batch(self, results: list[Published]) -> None:
        """Several drains' messages in one publish (in commit order, so each group's order holds);
        each run is counted and observed as on its own."""
        self._publish([m for r in results for m in r.messages])
        for result in results:
            self._record(result)

    def published(self, result: Published) -> None:
        self._publish(result.messages)
        self._record(result)

    def _publish(self, messages: list) -> None:
        try:
            realtime.publish(messages)
        except Exception:  # the inbox rows are committed; sockets catch up from the log
            logger.warning("live messages not published (channel layer unavailable)", exc_info=True)

    def _record(self, result: Published) -> None:
        now = timezone.now()
        metrics.DELIVERIES.labels(channel="inapp", outcome="sent").inc(result.rows)
        metrics.DELIVERIES.labels(channel="websocket", outcome="sent").inc(len(result.entries))
        for entry in result.entries:
            metrics.LATENCY.labels(channel="inapp").observe(max(0.0, (now - entry.occurred_at).total_seconds()))
        if result.entries:  # the run's first entry waited longest: the admission control's lag signal
            LAG.observe(organization_id=result.entries[0].organization_id,
                        occurred_at=result.entries[0].occurred_at.timestamp())
