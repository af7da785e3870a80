"""Tracker writes. A start or stop changes the tracker and its TimeEntry and appends a
"tracker.event" entry to the organization's log (notifications.publish), in one transaction;
delivery is kicked only after commit."""
from django.db import connection, transaction
from django.utils import timezone

from config.errors import ApplicationError, Conflict, Forbidden
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


@transaction.atomic
def tracker_start(*, tracker_id: int, actor):
    # Lock order everywhere: tracker row, then organization row (in publish).
    tracker = Tracker.objects.select_for_update().get(pk=tracker_id)
    if tracker.is_running:
        raise Conflict("The tracker is already running.", code=TrackerErrorCode.TRACKER_ALREADY_RUNNING)
    now = timezone.now()
    tracker.is_running, tracker.started_at, tracker.started_by = True, now, _user_or_none(actor)
    tracker.save(update_fields=["is_running", "started_at", "started_by"])
    TimeEntry.objects.create(organization_id=tracker.organization_id, tracker=tracker,
                             started_by=_user_or_none(actor), started_at=now)
    return _record_event(tracker=tracker, action=START, actor=actor, now=now)


@transaction.atomic
def tracker_stop(*, tracker_id: int, actor):
    tracker = Tracker.objects.select_for_update().get(pk=tracker_id)
    if not tracker.is_running:
        raise Conflict("The tracker is not running.", code=TrackerErrorCode.TRACKER_NOT_RUNNING)
    now = timezone.now()
    entry = TimeEntry.objects.filter(tracker=tracker, stopped_at__isnull=True).first()
    if entry is not None:
        entry.stopped_at, entry.stopped_by, entry.duration = now, _user_or_none(actor), now - entry.started_at
        entry.save(update_fields=["stopped_at", "stopped_by", "duration"])
    tracker.is_running, tracker.started_at, tracker.started_by = False, None, None
    tracker.save(update_fields=["is_running", "started_at", "started_by"])
    return _record_event(tracker=tracker, action=STOP, actor=actor, now=now)


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
