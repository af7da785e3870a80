"""Tracker writes. A start or stop changes the tracker and its TimeEntry and appends a
"tracker.event" entry to the organization's log (notifications.publish), in one transaction;
delivery is kicked only after commit."""
from typing import NamedTuple

from django.db import connection, transaction
from django.db.models import DurationField, ExpressionWrapper, F, Value
from django.utils import timezone

from config.errors import ApplicationError, Conflict, Forbidden, NotFound
from notifications import publish
from organizations.models import Membership, Organization
from organizations.selectors import ApiKeyPrincipal, organization_list_for_user, role_in_organization
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


def _locked(*, tracker_id: int, principal) -> Tracker:
    """The tracker row, locked; with `principal`, only if it may see the tracker (404 otherwise,
    another organization's included). One statement: the access check is a subquery of the lock."""
    trackers = Tracker.objects.select_for_update().filter(pk=tracker_id)
    if principal is not None:
        trackers = trackers.filter(organization__in=organization_list_for_user(user=principal).values("id"))
    tracker = trackers.first()
    if tracker is None:
        raise NotFound("Tracker not found.", code=TrackerErrorCode.TRACKER_NOT_FOUND)
    return tracker


@transaction.atomic
def tracker_start_for(*, tracker_id: int, principal) -> TrackerChange:
    """Start the tracker as `principal` (a user or an org API key; a tracker it cannot see is
    404): lock it, UPDATE it, INSERT the time entry, append the log entry."""
    return _start(_locked(tracker_id=tracker_id, principal=principal), actor=principal)


@transaction.atomic
def tracker_stop_for(*, tracker_id: int, principal) -> TrackerChange:
    """Stop the tracker as `principal`: lock it, close its open time entry (one UPDATE, the
    duration computed by Postgres), UPDATE it, append the log entry."""
    return _stop(_locked(tracker_id=tracker_id, principal=principal), actor=principal)


@transaction.atomic
def tracker_start(*, tracker_id: int, actor) -> "publish.LogEntry":
    """Start the tracker (no access check: the caller made it); returns the log entry."""
    return _start(_locked(tracker_id=tracker_id, principal=None), actor=actor).entry


@transaction.atomic
def tracker_stop(*, tracker_id: int, actor) -> "publish.LogEntry":
    return _stop(_locked(tracker_id=tracker_id, principal=None), actor=actor).entry


def _start(tracker: Tracker, *, actor) -> TrackerChange:
    # Lock order everywhere: tracker row, then organization row (in publish).
    if tracker.is_running:
        raise Conflict("The tracker is already running.", code=TrackerErrorCode.TRACKER_ALREADY_RUNNING)
    now = timezone.now()
    tracker.is_running, tracker.started_at, tracker.started_by = True, now, _user_or_none(actor)
    tracker.save(update_fields=["is_running", "started_at", "started_by"])
    TimeEntry.objects.create(organization_id=tracker.organization_id, tracker=tracker,
                             started_by=_user_or_none(actor), started_at=now)
    return TrackerChange(tracker, _record_event(tracker=tracker, action=START, actor=actor, now=now))


def _stop(tracker: Tracker, *, actor) -> TrackerChange:
    if not tracker.is_running:
        raise Conflict("The tracker is not running.", code=TrackerErrorCode.TRACKER_NOT_RUNNING)
    now = timezone.now()
    TimeEntry.objects.filter(tracker=tracker, stopped_at__isnull=True).update(
        stopped_at=now, stopped_by=_user_or_none(actor),
        duration=ExpressionWrapper(Value(now) - F("started_at"), output_field=DurationField()))
    tracker.is_running, tracker.started_at, tracker.started_by = False, None, None
    tracker.save(update_fields=["is_running", "started_at", "started_by"])
    return TrackerChange(tracker, _record_event(tracker=tracker, action=STOP, actor=actor, now=now))


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
