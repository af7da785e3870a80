"""Slack via slack-sdk: one chat.postMessage per run of contiguous log entries, with message
metadata event_type `tracker_event` and payload {org_id, first_seq, last_seq, event_ids} (the
entries' ids, `event_id` on the WebSocket).

Limits: scopes slack.global (every organization) and slack.channel (1/s per channel), shared
fairly (oldest pending entry first). A post that timed out may have arrived: before posting the
run again the channel looks it up by its metadata (conversations.history), so a slow success is
never posted twice.
"""
import functools
import http.client
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.checks import Error
from django.db import connection
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from notifications.channels.base import Channel, Run, tls_context
from notifications.delivery.types import PermanentFailure, RateLimitedFailure, TransientFailure, UncertainFailure
from notifications.kinds import kind_get
from notifications.ratelimit import Scope
from organizations.models import SlackIntegration
from organizations import secrets

EVENT_TYPE = "tracker_event"
PERMANENT_ERRORS = {
    "channel_not_found", "invalid_auth", "not_authed", "not_in_channel", "is_archived", "account_inactive",
    "token_revoked", "token_expired", "no_permission", "missing_scope", "invalid_arguments",
    "msg_too_long", "restricted_action", "team_access_not_granted", "invalid_metadata_format",
    "invalid_metadata_schema", "ekm_access_denied", "org_login_required",
}


@dataclass(frozen=True)
class SlackTarget:
    channel: str
    token: str


def _line(entry) -> str:
    return kind_get(entry.kind).render_line(entry.view())


def build_message(*, org_id: int, events: list, first_seq: int | None = None, last_seq: int | None = None) -> dict:
    """`first_seq`..`last_seq`: the run's range (its metadata, which verify() looks up), which may
    be wider than the events when the fence skipped entries not meant for the channel."""
    first = events[0].seq if first_seq is None else first_seq
    last = events[-1].seq if last_seq is None else last_seq
    if len(events) == 1:
        text = _line(events[0])
    else:
        noun = "tracker updates" if all(e.kind == "tracker.event" for e in events) else "updates"
        text = f"{len(events)} {noun} (#{first}–#{last}):\n" + "\n".join(f"• {_line(e)}" for e in events)
    return {
        "text": text,
        "metadata": {
            "event_type": EVENT_TYPE,
            "event_payload": {"org_id": org_id, "first_seq": first, "last_seq": last,
                              "event_ids": [e.id for e in events]},
        },
    }


@functools.cache
def _install_opener() -> None:
    """slack-sdk's urllib transport, handed an SSL context, builds a urllib opener on every call
    (every default handler, the proxy handler scanning the environment: ~0.56 ms of CPU per post);
    handed none, it uses urllib's process-wide opener; and without a context of ours, http.client
    builds a default one per connection (~23 ms of CPU, more than the rest of a send). That opener
    is installed once per process, its HTTPS handler on the shared verifying context, and the
    client is handed no context."""
    urllib.request.install_opener(urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls_context())))


def _client(token: str) -> WebClient:
    _install_opener()
    return WebClient(token=token, base_url=settings.SLACK_API_URL, timeout=settings.SLACK_TIMEOUT, retry_handlers=[])


def _classify(exc: SlackApiError) -> Exception:
    status = exc.response.status_code
    error = exc.response.get("error", "") if isinstance(exc.response.data, dict) else ""
    if status == 429 or error == "ratelimited":
        headers = exc.response.headers
        retry_after = float(headers.get("Retry-After", headers.get("retry-after", 1)))
        return RateLimitedFailure(f"slack 429 ratelimited (Retry-After {retry_after})", retry_after)
    if status >= 500 or error in {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}:
        return TransientFailure(f"slack {status} {error}".strip())
    if error in PERMANENT_ERRORS or 400 <= status < 500:
        return PermanentFailure(f"slack {status} {error}".strip())
    return TransientFailure(f"slack {status} {error}".strip())


def send(*, token: str, channel: str, message: dict) -> str:
    """Post; return Slack's message ts. Raises a DeliveryFailure subclass on failure: a timeout or
    a broken answer is an UncertainFailure (the post may have arrived), a refused connection a
    TransientFailure (it cannot have)."""
    try:
        response = _client(token).chat_postMessage(channel=channel, text=message["text"], metadata=message["metadata"],
                                                   unfurl_links=False, unfurl_media=False)
    except SlackApiError as exc:
        raise _classify(exc) from exc
    except (ConnectionRefusedError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError) or isinstance(exc, ConnectionRefusedError):
            raise TransientFailure(f"slack unreachable: {reason}") from exc
        if isinstance(reason, TimeoutError):
            raise UncertainFailure(f"slack timed out: {reason}") from exc
        raise TransientFailure(f"slack unreachable: {exc.__class__.__name__}: {exc}") from exc
    except (TimeoutError, http.client.HTTPException, ConnectionError, OSError, ValueError) as exc:
        # Sent, but the answer timed out or broke (IncompleteRead, BadStatusLine, bad JSON).
        raise UncertainFailure(f"slack answer lost: {exc.__class__.__name__}: {exc}") from exc
    return str(response.get("ts", ""))


def find_posted(*, token: str, channel: str, org_id: int, first_seq: int, last_seq: int,
                oldest: float) -> str | None:
    """The ts of a message we posted for exactly this run, if Slack has it."""
    try:
        response = _client(token).conversations_history(channel=channel, oldest=f"{oldest:.6f}", limit=200,
                                                        include_all_metadata=True)
    except SlackApiError as exc:
        raise _classify(exc) from exc
    except (TimeoutError, http.client.HTTPException, OSError, ValueError) as exc:
        raise TransientFailure(f"slack lookup failed: {exc.__class__.__name__}: {exc}") from exc
    for message in response.get("messages", []):
        metadata = message.get("metadata") or {}
        payload = metadata.get("event_payload") or {}
        if (metadata.get("event_type") == EVENT_TYPE and payload.get("org_id") == org_id
                and payload.get("first_seq") == first_seq and payload.get("last_seq") == last_seq):
            return str(message.get("ts", ""))
    return None


_TARGET_SQL = (f"SELECT channel, token_encrypted FROM {SlackIntegration._meta.db_table} "
               "WHERE organization_id = %s AND enabled ORDER BY id LIMIT 1")


@functools.lru_cache(maxsize=4096)
def _token(ciphertext: str) -> str:
    """The token of a stored ciphertext (a pure function of it: a new token or a rotated key is a
    new ciphertext), decrypted once per process rather than once per send."""
    return secrets.decrypt(ciphertext)


class SlackChannel(Channel):
    fair = True
    default_options = {"batch_max": 50}

    def check(self) -> list[Error]:
        missing = [s for s in ("slack.global", "slack.channel") if s not in settings.HERALD_RATE_LIMITS]
        return [Error(f"HERALD_RATE_LIMITS lacks {s!r}, needed by the Slack channel", id="herald.E012")
                for s in missing]

    def target(self, *, organization_id: int, destination: str) -> SlackTarget | None:
        with connection.cursor() as cursor:  # read per send (a disabled integration stops at once), so no ORM
            cursor.execute(_TARGET_SQL, [organization_id])
            row = cursor.fetchone()
        if row is None or not row[0]:
            return None
        return SlackTarget(channel=row[0], token=_token(row[1]))

    def scopes(self, target: SlackTarget) -> list[Scope]:
        return [Scope("slack.global"), Scope("slack.channel", target.channel)]

    def breaker_names(self, target) -> list[str]:
        return ["slack"]

    def render(self, target: SlackTarget, run: Run) -> dict:
        message = build_message(org_id=run.organization_id, events=run.entries, first_seq=run.first_seq,
                                last_seq=run.last_seq)
        if run.late:  # a requeued dead letter, after later entries went out
            message["text"] = "(late) " + message["text"]
            message["metadata"]["event_payload"]["late"] = True
        return message

    def send(self, target: SlackTarget, run: Run, message: dict, gate) -> str:
        return send(token=target.token, channel=target.channel, message=message)

    def verify(self, target: SlackTarget, run: Run) -> str | None:
        oldest = run.entries[0].occurred_at - timedelta(minutes=5) if run.entries else None
        return find_posted(token=target.token, channel=target.channel, org_id=run.organization_id,
                           first_seq=run.first_seq, last_seq=run.last_seq,
                           oldest=oldest.timestamp() if oldest else 0.0)
