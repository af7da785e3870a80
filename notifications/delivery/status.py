"""Per-recipient status of tracked entries (kinds with `tracked=True`, i.e. API sends) as the fence
sends them: generic, by (entry, channel, recipient), never by channel name.

- `run_claim`, inside the fence's transaction before a send: the run's tracked entries keep only
  those whose status row for this channel and recipient may still go out (queued, deferred,
  failed; or went out already to another of the recipient's destinations: push devices), and locks
  those rows, so a cancel that comes meanwhile skips them (they are going out)
  and one that committed before is seen (the entry is dropped from the run).
- `run_record`, in the transaction that records the outcome: sent / failed / dead / deferred
  (failed and dead set `failed_at`, which indexes an organization's failures; so does a provider's
  `failed` report).

Entries of untracked kinds (tracker events) cost nothing here: no statement runs for a run
without tracked entries.
"""
from django.db import connection

from notifications.kinds import KINDS

CLAIMABLE = ("queued", "deferred", "failed")
# A member may have several destinations on one channel (push: one stream per device) and one status
# row for them all: a row another of their devices already sent (or the provider delivered) does not
# take the entry out of this device's run. Recording never moves such a row back (from_states).
_ALSO_CLAIMED = ("sent", "delivered")

_CLAIM_SQL = """
SELECT entry_id FROM notifications_senddelivery
WHERE entry_id = ANY(%(entries)s::bigint[]) AND channel = %(channel)s AND state = ANY(%(states)s)
  AND (%(user)s::bigint IS NULL OR user_id = %(user)s::bigint)
FOR UPDATE
"""

_RECORD_SQL = """
UPDATE notifications_senddelivery
SET state = %(state)s::text, updated_at = now(), error = %(error)s,
    sent_at = CASE WHEN %(state)s::text = 'sent' THEN now() ELSE sent_at END,
    failed_at = CASE WHEN %(state)s::text IN ('failed', 'dead') THEN now() ELSE failed_at END,
    due_at = CASE WHEN %(state)s = 'deferred' THEN %(due)s::timestamptz ELSE due_at END
WHERE entry_id = ANY(%(entries)s::bigint[]) AND channel = %(channel)s AND state = ANY(%(states)s)
  AND (%(user)s::bigint IS NULL OR user_id = %(user)s::bigint)
"""


def is_tracked(entry) -> bool:
    kind = KINDS.get(entry.kind)
    return kind is not None and kind.tracked


def _tracked(entries: list) -> list[int]:
    return [e.id for e in entries if is_tracked(e)]


def run_claim(*, channel: str, recipient_id: int | None, entries: list) -> list:
    """The entries of the run that may go to this destination: every untracked one, and the tracked
    ones with a status row still to send (rows locked until the outcome is recorded)."""
    tracked = _tracked(entries)
    if not tracked:
        return entries
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"entries": tracked, "channel": channel, "states": [*CLAIMABLE, *_ALSO_CLAIMED],
                                    "user": recipient_id})
        claimable = {row[0] for row in cursor.fetchall()}
    tracked_ids = set(tracked)
    return [e for e in entries if e.id not in tracked_ids or e.id in claimable]


def run_record(*, channel: str, recipient_id: int | None, entries: list, state: str, error: str = "",
               from_states: tuple[str, ...] = CLAIMABLE, due_at=None) -> int:
    """Move the run's status rows for this channel (and recipient) from `from_states` to `state`
    (`deferred`: with `due_at`, when it goes); returns how many."""
    tracked = _tracked(entries)
    if not tracked:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(_RECORD_SQL, {"entries": tracked, "channel": channel, "states": list(from_states),
                                     "user": recipient_id, "state": state, "error": error[:2000],
                                     "due": due_at})
        return cursor.rowcount


# --- provider status callbacks -------------------------------------------------------------------
# A provider reports what became of a message it accepted (Twilio's StatusCallback, WhatsApp's
# status webhooks), naming it by the reference the fence recorded on the Delivery (`provider_ref`).
# The Delivery covers a run of the stream's entries; its member (the stream's user) and channel pick
# the status rows. States only move forward: sent -> failed -> delivered (a provider may report
# `delivered` after `failed` when the member has several devices; never `sent` after either), and
# only rows that went out (sent_at set) move: a row cancelled before the run is not touched.
REPORT_FROM = {"delivered": ("sent", "failed"), "failed": ("sent",)}

_REF_SQL = """
SELECT d.id FROM notifications_delivery d
WHERE d.channel = %s AND d.provider_ref = %s
ORDER BY d.id DESC LIMIT 1
"""

_REPORT_SQL = """
UPDATE notifications_senddelivery sd
SET state = %(state)s::text, updated_at = now(),
    delivered_at = CASE WHEN %(state)s::text = 'delivered' THEN COALESCE(%(at)s::timestamptz, now())
                        ELSE sd.delivered_at END,
    failed_at = CASE WHEN %(state)s::text = 'failed' THEN now() ELSE sd.failed_at END,
    error = %(error)s
FROM notifications_delivery d
JOIN notifications_deliverystream s ON s.id = d.stream_id
JOIN notifications_logentry e ON e.organization_id = d.organization_id AND e.seq BETWEEN d.first_seq AND d.last_seq
WHERE d.id = %(delivery)s AND sd.entry_id = e.id AND sd.channel = d.channel AND sd.user_id = s.user_id
  AND sd.state = ANY(%(from_states)s) AND sd.sent_at IS NOT NULL
"""


def provider_report(*, channel: str, ref: str, state: str, at=None, error: str = "") -> int | None:
    """Record a provider's report (`delivered` or `failed`) on the status rows of the message it
    names. Returns how many rows moved (0: a repeat, an older report, or entries without status
    rows such as tracker events), or None when no Delivery has this reference (not ours, or the
    report overtook the commit of the send: the caller counts it)."""
    if state not in REPORT_FROM:
        raise ValueError(state)
    with connection.cursor() as cursor:
        cursor.execute(_REF_SQL, [channel, ref[:120]])
        row = cursor.fetchone()
        if row is None:
            return None
        cursor.execute(_REPORT_SQL, {"delivery": row[0], "state": state, "at": at,
                                     "error": error[:2000] if state == "failed" else "",
                                     "from_states": list(REPORT_FROM[state])})
        return cursor.rowcount


# A report can overtake the commit that records the reference (the fence sends, then commits):
# `provider_report` answers None, the callback holds the report, and the sweep applies it once the
# reference is known. Reports are applied failed-before-delivered, so the furthest state wins
# whatever order they were held in.
_HOLD_SQL = """
INSERT INTO notifications_earlystatusreport (channel, provider_ref, state, reported_at, error, received_at)
VALUES (%s, %s, %s, %s, %s, now())
"""

_HELD_SQL = """
SELECT id, channel, provider_ref, state, reported_at, error FROM notifications_earlystatusreport
ORDER BY provider_ref, CASE state WHEN 'failed' THEN 0 ELSE 1 END, id
LIMIT %s
FOR UPDATE SKIP LOCKED
"""

_HELD_EXPIRE_SQL = """
DELETE FROM notifications_earlystatusreport WHERE received_at < now() - make_interval(secs => %s)
"""


def provider_report_hold(*, channel: str, ref: str, state: str, at=None, error: str = "") -> None:
    """Keep a report whose reference is not known yet (see the sweep below)."""
    if state not in REPORT_FROM:
        raise ValueError(state)
    with connection.cursor() as cursor:
        cursor.execute(_HOLD_SQL, [channel, ref[:120], state, at, error[:2000] if state == "failed" else ""])


def held_reports_apply(*, wait_seconds: float, batch: int = 500) -> tuple[list[tuple[str, int]], int]:
    """Apply the held reports whose reference is known now, and drop them; drop those held longer
    than `wait_seconds` (no message of ours had that reference: the fence records it within
    moments of the send). Returns ([(channel, rows moved)] for the applied ones, dropped). Each
    lookup is provider_report's own indexed probe; the table holds only the last minutes' reports.
    Runs in the caller's transaction."""
    applied: list[tuple[str, int]] = []
    done: list[int] = []
    with connection.cursor() as cursor:
        cursor.execute(_HELD_SQL, [batch])
        for report_id, channel, ref, state, at, error in cursor.fetchall():
            moved = provider_report(channel=channel, ref=ref, state=state, at=at, error=error)
            if moved is not None:
                applied.append((channel, moved))
                done.append(report_id)
        if done:
            cursor.execute("DELETE FROM notifications_earlystatusreport WHERE id = ANY(%s)", [done])
        cursor.execute(_HELD_EXPIRE_SQL, [wait_seconds])
        return applied, cursor.rowcount
