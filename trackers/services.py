"""Tracker writes. A start or stop changes the tracker and its TimeEntry and appends a
"tracker.event" entry to the organization's log (notifications.publish), in one transaction;
delivery is kicked only after commit."""
from typing import NamedTuple

from django.db import connection, transaction
from django.utils import timezone

from config.errors import ApplicationError, Conflict, Forbidden, NotFound
from config.rawrows import RowReader
from notifications import publish
from organizations.models import Membership, Organization
from organizations.selectors import ApiKeyPrincipal, role_in_organization
from trackers.errors import TrackerErrorCode
from trackers.selectors import comment_thread_participant_ids
from trackers.models import Comment, TimeEntry, Tracker

START, STOP = "start", "stop"


def tracker_create(*, organization: Organization, name: str) -> Tracker:
    return Tracker.objects.create(organization=organization, name=name)


def _actor_name(actor) -> str:
    return getattr(actor, "username", None) or str(actor or "")


def _user_or_none(actor):
    return actor if getattr(actor, "pk", None) else None


def _record_event(*, tracker: Tracker, action: str, actor, now):
    return publish.publish(
        organization_id=tracker.organization_id, kind="tracker.event", actor=actor,
        payload={"tracker_id": tracker.id, "tracker_name": tracker.name, "action": action}, occurred_at=now,
    )


class TrackerChange(NamedTuple):
    tracker: Tracker  # as written (started_by is the actor object: serializing it needs no query)
    entry: "publish.LogEntry"


# Start and stop run on every tracker event: their statements are written out (config.rawrows: the
# ORM cost about a millisecond of CPU per statement). The tracker's UPDATE takes its row lock
# (lock order everywhere: tracker row, then organization row in publish) and checks the state and,
# with a principal, access in its WHERE clause; when it matches no row, one more SELECT tells a
# tracker the principal cannot see (404) from one in the wrong state (409). The event's time is
# Postgres's clock_timestamp() once the lock is held (a statement that waited for the lock is
# re-evaluated on the row as the other transaction left it): a stop that waited for a start is
# never timed before it (tests/trackers/test_concurrency.py).
_TRACKER_ROW = RowReader(Tracker, "t")

_START_SQL = f"""
WITH t AS (
    UPDATE trackers_tracker t SET is_running = true, started_at = clock_timestamp(), started_by_id = %(user_id)s
    WHERE t.id = %(tracker_id)s AND NOT t.is_running {{access}}
    RETURNING {_TRACKER_ROW.columns}
), entry AS (
    INSERT INTO trackers_timeentry (organization_id, tracker_id, started_by_id, stopped_by_id, started_at,
                                    stopped_at, duration, notes)
    SELECT t.organization_id, t.id, %(user_id)s, NULL, t.started_at, NULL, NULL, '' FROM t
)
SELECT {_TRACKER_ROW.columns}, t.started_at FROM t
"""

_STOP_SQL = f"""
UPDATE trackers_tracker t SET is_running = false, started_at = NULL, started_by_id = NULL
WHERE t.id = %(tracker_id)s AND t.is_running {{access}}
RETURNING {_TRACKER_ROW.columns}, clock_timestamp()
"""

# A statement of its own, after the tracker's lock is held: a writable CTE would read the entries
# with the snapshot taken before it waited for that lock, and miss the entry of the start it waited for.
_CLOSE_ENTRY_SQL = """
UPDATE trackers_timeentry SET stopped_at = %(now)s, stopped_by_id = %(user_id)s, duration = %(now)s - started_at
WHERE tracker_id = %(tracker_id)s AND stopped_at IS NULL
"""

_STATE_SQL = "SELECT t.is_running FROM trackers_tracker t WHERE t.id = %(tracker_id)s {access}"


def _access(principal) -> tuple[str, dict]:
    """The WHERE clause (on alias t) limiting trackers to those `principal` may see; None: any."""
    if principal is None:
        return "", {}
    if isinstance(principal, ApiKeyPrincipal):
        return "AND t.organization_id = %(access_org_id)s", {"access_org_id": principal.organization_id}
    return ("AND t.organization_id IN (SELECT m.organization_id FROM organizations_membership m "
            "WHERE m.user_id = %(access_user_id)s)", {"access_user_id": principal.pk})


def _change(*, sql: str, conflict: Conflict, tracker_id: int, principal, user_id) -> tuple[Tracker, object]:
    """(the tracker as written, the time of the change)."""
    access, params = _access(principal)
    params.update(tracker_id=tracker_id, user_id=user_id)
    with connection.cursor() as cursor:
        cursor.execute(sql.format(access=access), params)
        row = cursor.fetchone()
        if row is not None:
            return _TRACKER_ROW.build(row[:-1]), row[-1]
        cursor.execute(_STATE_SQL.format(access=access), params)
        state = cursor.fetchone()
    if state is None:
        raise NotFound("Tracker not found.", code=TrackerErrorCode.TRACKER_NOT_FOUND)
    raise conflict


def _start(*, tracker_id: int, actor, principal) -> TrackerChange:
    user = _user_or_none(actor)
    tracker, now = _change(sql=_START_SQL, tracker_id=tracker_id, principal=principal,
                           user_id=user.pk if user else None,
                           conflict=Conflict("The tracker is already running.",
                                             code=TrackerErrorCode.TRACKER_ALREADY_RUNNING))
    tracker.started_by = user
    return TrackerChange(tracker, _record_event(tracker=tracker, action=START, actor=actor, now=now))


def _stop(*, tracker_id: int, actor, principal) -> TrackerChange:
    user = _user_or_none(actor)
    tracker, now = _change(sql=_STOP_SQL, tracker_id=tracker_id, principal=principal,
                           user_id=user.pk if user else None,
                           conflict=Conflict("The tracker is not running.",
                                             code=TrackerErrorCode.TRACKER_NOT_RUNNING))
    with connection.cursor() as cursor:
        cursor.execute(_CLOSE_ENTRY_SQL, {"tracker_id": tracker.id, "now": now, "user_id": user.pk if user else None})
    tracker.started_by = None
    return TrackerChange(tracker, _record_event(tracker=tracker, action=STOP, actor=actor, now=now))


@transaction.atomic
def tracker_start_for(*, tracker_id: int, principal) -> TrackerChange:
    """Start the tracker as `principal` (a user or an org API key; a tracker it cannot see is
    404): the tracker's UPDATE and the time entry's INSERT in one statement, then the log entry."""
    return _start(tracker_id=tracker_id, actor=principal, principal=principal)


@transaction.atomic
def tracker_stop_for(*, tracker_id: int, principal) -> TrackerChange:
    """Stop the tracker as `principal`: UPDATE the tracker, close its open time entry (the
    duration computed by Postgres), append the log entry."""
    return _stop(tracker_id=tracker_id, actor=principal, principal=principal)


@transaction.atomic
def tracker_start(*, tracker_id: int, actor) -> "publish.LogEntry":
    """Start the tracker (no access check: the caller made it); returns the log entry."""
    return _start(tracker_id=tracker_id, actor=actor, principal=None).entry


@transaction.atomic
def tracker_stop(*, tracker_id: int, actor) -> "publish.LogEntry":
    return _stop(tracker_id=tracker_id, actor=actor, principal=None).entry


@transaction.atomic
def time_entry_update(*, entry: TimeEntry, notes: str) -> TimeEntry:
    entry.notes = notes
    entry.save(update_fields=["notes"])
    return entry


# --- Comments -----------------------------------------------------------------------------------

def _comment_path_segment(comment_id: int) -> str:
    return str(comment_id).zfill(Comment.PATH_WIDTH)


def _next_comment_id() -> int:
    # The id is needed before the INSERT: the row's own path and root contain it.
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence('trackers_comment', 'id'))")
        return cursor.fetchone()[0]


@transaction.atomic
def comment_create(*, tracker: Tracker, author, body: str, parent_id: int | None = None,
                   time_entry: TimeEntry | None = None) -> Comment:
    """A comment on `tracker` (or on its `time_entry`), or a reply to `parent_id` in the same thread."""
    if not getattr(author, "pk", None) or isinstance(author, ApiKeyPrincipal):
        raise Forbidden("Comments are written by people, not organization API keys.",
                        code=TrackerErrorCode.USER_REQUIRED)
    time_entry_id = time_entry.id if time_entry is not None else None
    parent = None
    if parent_id is not None:
        parent = Comment.objects.filter(id=parent_id, organization_id=tracker.organization_id).first()
        if parent is None:
            raise ApplicationError("The parent comment does not exist.", code=TrackerErrorCode.PARENT_NOT_FOUND,
                                   extra={"fields": {"parent": ["Not found."]}})
        if parent.tracker_id != tracker.id or parent.time_entry_id != time_entry_id:
            raise ApplicationError("The parent comment belongs to another thread.",
                                   code=TrackerErrorCode.PARENT_IN_OTHER_THREAD,
                                   extra={"fields": {"parent": ["Belongs to another tracker or time entry."]}})
        if parent.is_deleted:
            raise Conflict("The parent comment was deleted.", code=TrackerErrorCode.COMMENT_DELETED)
    comment_id = _next_comment_id()
    segment = _comment_path_segment(comment_id)
    comment = Comment.objects.create(
        id=comment_id, organization_id=tracker.organization_id, tracker=tracker, time_entry_id=time_entry_id,
        parent=parent, root_id=parent.root_id if parent else comment_id,
        path=f"{parent.path}/{segment}" if parent else segment, depth=parent.depth + 1 if parent else 0,
        author=author, body=body,
    )
    _comment_notify(comment=comment, tracker=tracker, parent=parent, author=author)
    return comment


COMMENT_EXCERPT_CHARS = 140


def _comment_notify(*, comment: Comment, tracker: Tracker, parent: Comment | None, author) -> None:
    """Two entries of the org log, in the comment's transaction: `comment.created` for every member
    (live only: pages showing the tracker redraw its threads) and, for a reply, `comment.reply` to
    the parent's author and the thread's participants who are still members, minus the replier."""
    excerpt = " ".join(comment.body.split())
    if len(excerpt) > COMMENT_EXCERPT_CHARS:
        excerpt = excerpt[:COMMENT_EXCERPT_CHARS - 1] + "…"
    payload = {"tracker_id": tracker.id, "tracker_name": tracker.name, "comment_id": comment.id,
               "parent_id": comment.parent_id, "root_id": comment.root_id, "time_entry_id": comment.time_entry_id,
               "excerpt": excerpt}
    publish.publish(organization_id=tracker.organization_id, kind="comment.created", actor=author, payload=payload)
    if parent is None:
        return
    recipients = comment_thread_participant_ids(root_id=comment.root_id, organization_id=tracker.organization_id)
    recipients.discard(author.pk)
    if recipients:
        publish.publish(organization_id=tracker.organization_id, kind="comment.reply", actor=author,
                        audience=sorted(recipients), payload=payload)


def _require_author_or_admin(*, comment: Comment, actor) -> None:
    if getattr(actor, "pk", None) and actor.pk == comment.author_id:
        return
    if role_in_organization(user=actor, organization_id=comment.organization_id) in Membership.ADMIN_ROLES:
        return
    raise Forbidden("Only the author or an organization admin can do this.",
                    code=TrackerErrorCode.COMMENT_NOT_AUTHOR)


@transaction.atomic
def comment_update(*, comment_id: int, actor, body: str) -> Comment:
    comment = Comment.objects.select_for_update().get(pk=comment_id)
    _require_author_or_admin(comment=comment, actor=actor)
    if comment.is_deleted:
        raise Conflict("A deleted comment cannot be edited.", code=TrackerErrorCode.COMMENT_DELETED)
    comment.body, comment.edited_at = body, timezone.now()
    comment.save(update_fields=["body", "edited_at"])
    return comment


@transaction.atomic
def comment_delete(*, comment_id: int, actor) -> Comment:
    """Soft delete: the body goes, the row stays so its replies keep their place ("deleted")."""
    comment = Comment.objects.select_for_update().get(pk=comment_id)
    _require_author_or_admin(comment=comment, actor=actor)
    if not comment.is_deleted:
        comment.body, comment.deleted_at = "", timezone.now()
        comment.save(update_fields=["body", "deleted_at"])
    return comment
