"""Notification kinds, declared once: what a log entry of each kind means to its readers.

A kind names its preference category, how an entry renders in the inbox (title, body), as one
line of a Slack message or email digest, and which WebSocket message type carries it. Channels
and the fence never branch on a kind; they ask this table. To add a kind, add one `Kind` to
KINDS (payload keys are the kind's own; renderers read them with defaults, never KeyError).
"""
from collections.abc import Callable
from dataclasses import dataclass, field

from config.errors import ApplicationError


@dataclass(frozen=True)
class EntryView:
    """What a renderer sees of a log entry (a LogEntry row or the same fields from SQL)."""

    seq: int
    kind: str
    payload: dict
    actor_name: str = ""

    @property
    def actor(self) -> str:
        return self.actor_name or "Someone"


@dataclass(frozen=True)
class Kind:
    name: str
    category: str  # NotificationPreference category
    title: Callable[[EntryView], str]
    body: Callable[[EntryView], str] = lambda e: ""
    # One line in a Slack message or an email digest; Slack's *bold* is allowed.
    line: Callable[[EntryView], str] | None = None
    ws_type: str = "log.entry"  # the WebSocket message type (tracker.event keeps its own shape)
    # The channels an entry of this kind may reach (a member's preferences narrow it further).
    # "inapp" = an inbox row for each audience member; the live feed carries every entry anyway.
    channels: tuple[str, ...] = field(default=("inapp", "slack", "email", "webhook", "apprise"))
    # Private: only the audience hears of it (a reply to your comment, your report is ready);
    # never posted to an organization-wide destination such as its Slack channel or webhooks.
    private: bool = False
    # Entries of this kind carry a status per recipient x channel (notifications.SendDelivery): the
    # in-app fan-out and the fence record what became of each and skip what was cancelled.
    tracked: bool = False
    # The inbox row's `data` (default: the whole payload).
    inbox_data: Callable[[EntryView], dict] = lambda e: e.payload
    # In-app title and body per locale ({locale: (title, body)}); None: one rendering for everyone.
    localized: Callable[[EntryView], dict[str, tuple[str, str]]] | None = None
    # A member may have entries of this kind held and sent as one digest per window
    # (notifications.digests); `digest_key` names what they choose (default: the kind's name).
    digestible: bool = True
    digest_key: Callable[[dict], str] | None = None
    # The preference category is the payload's "category" (an API send's template, a digest's items).
    payload_category: bool = False

    def digest_key_for(self, payload: dict) -> str | None:
        if not self.digestible:
            return None
        return self.digest_key(payload) if self.digest_key else self.name

    def render_line(self, entry: EntryView) -> str:
        return (self.line or self.title)(entry) + f" (#{entry.seq})"


def _verb(entry: EntryView) -> str:
    return "started" if entry.payload.get("action") == "start" else "stopped"


def _tracker(entry: EntryView) -> str:
    return str(entry.payload.get("tracker_name", "a tracker"))


def _excerpt(entry: EntryView) -> str:
    return str(entry.payload.get("excerpt", ""))


def _report(entry: EntryView) -> str:
    p = entry.payload
    return f"{p.get('report_kind', 'report')} {p.get('from', '')}–{p.get('to', '')} ({p.get('format', '')})"


def _digest_title(entry: EntryView) -> str:
    p = entry.payload
    count = int(p.get("count", len(p.get("items") or [])))
    return f"{count} notification{'s' if count != 1 else ''}: {p.get('label') or p.get('kind', '')}"


def _digest_body(entry: EntryView) -> str:
    return "\n".join(f"• {item.get('title', '')}" + (f" — {item['body']}" if item.get("body") else "")
                     + f" (#{item.get('seq')})" for item in entry.payload.get("items") or [])


def message_part(entry: EntryView, channel: str, field_name: str, locale: str | None = None) -> str:
    """A rendered part of a send ("message" entry): payload["parts"][locale][channel][field], in the
    given locale, else the send's default locale."""
    parts = entry.payload.get("parts") or {}
    chosen = parts.get(locale) if locale else None
    if chosen is None:
        chosen = parts.get(entry.payload.get("locale", "")) or next(iter(parts.values()), {})
    return str(((chosen or {}).get(channel) or {}).get(field_name, ""))


def _message_localized(entry: EntryView) -> dict[str, tuple[str, str]]:
    return {locale: (str((p.get("inapp") or {}).get("title", "")), str((p.get("inapp") or {}).get("body", "")))
            for locale, p in (entry.payload.get("parts") or {}).items()}


def _message_inbox_data(entry: EntryView) -> dict:
    return {"send_id": entry.payload.get("send_id"), "kind": entry.payload.get("kind"),
            "data": entry.payload.get("data", {})}


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind(
            name="tracker.event",
            category="tracker_event",
            title=lambda e: f"{e.actor} {_verb(e)} {_tracker(e)}",
            line=lambda e: f"{e.actor} {_verb(e)} *{_tracker(e)}*",
            ws_type="tracker.event",
        ),
        # Live only: every member viewing the tracker redraws its threads (static/js/comments.js);
        # no inbox row, no email, never Slack or webhooks.
        Kind(
            name="comment.created",
            category="comment",
            title=lambda e: f"{e.actor} commented on {_tracker(e)}",
            body=_excerpt,
            channels=(),
            digestible=False,
        ),
        # To the parent's author and the thread's participants, minus the replier.
        Kind(
            name="comment.reply",
            category="comment_reply",
            title=lambda e: f"{e.actor} replied on {_tracker(e)}",
            body=_excerpt,
            line=lambda e: f"{e.actor} replied on *{_tracker(e)}*: {_excerpt(e)}",
            channels=("inapp", "email"),
            private=True,
        ),
        # To the member who requested the report.
        Kind(
            name="report.ready",
            category="report",
            title=lambda e: "Your report is ready",
            body=lambda e: f"{_report(e)}: {e.payload.get('rows', 0)} rows. "
                           f"Download: {e.payload.get('download_url', '')}",
            line=lambda e: f"Your report {_report(e)} is ready ({e.payload.get('rows', 0)} rows)",
            channels=("inapp", "email"),
            private=True,
        ),
        # An API send (POST /api/v1/send): the template's parts rendered per locale, its audience
        # the recipients; org-wide destinations never get it (only the recipients do).
        Kind(
            name="message",
            category="message",
            title=lambda e: message_part(e, "inapp", "title") or str(e.payload.get("kind", "Message")),
            body=lambda e: message_part(e, "inapp", "body"),
            line=lambda e: message_part(e, "inapp", "title") or str(e.payload.get("kind", "Message")),
            channels=("inapp", "email", "sms", "push", "whatsapp"),
            private=True,
            tracked=True,
            inbox_data=_message_inbox_data,
            localized=_message_localized,
            digest_key=lambda p: str(p.get("kind") or "message"),
            payload_category=True,
        ),
        # A member's digest (notifications.digests): the entries of one kind held for them during a
        # window, listed in seq order; one message per channel.
        Kind(
            name="digest",
            category="activity",
            title=_digest_title,
            body=_digest_body,
            line=_digest_title,
            channels=("inapp", "email", "sms", "push", "whatsapp"),
            private=True,
            digestible=False,
            payload_category=True,
        ),
    ]
}


def kind_get(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ApplicationError(f"Unknown notification kind {name!r}.", code="unknown_kind") from None
