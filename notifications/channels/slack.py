"""Slack via slack-sdk: one chat.postMessage per run of contiguous log entries, with message
metadata event_type `tracker_event` and payload {org_id, first_seq, last_seq, event_ids} (the
entries' ids, as `event_id` on the WebSocket)."""
import urllib.error

from django.conf import settings
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from notifications.kinds import kind_get
from notifications.channels import PermanentFailure, RateLimitedFailure, TransientFailure

PERMANENT_ERRORS = {
    "channel_not_found", "invalid_auth", "not_authed", "not_in_channel", "is_archived", "account_inactive",
    "token_revoked", "token_expired", "no_permission", "missing_scope", "invalid_arguments",
    "msg_too_long", "restricted_action", "team_access_not_granted", "invalid_metadata_format",
    "invalid_metadata_schema", "ekm_access_denied", "org_login_required",
}


def _line(entry) -> str:
    return kind_get(entry.kind).render_line(entry.view())


def build_message(*, org_id: int, events: list) -> dict:
    first, last = events[0].seq, events[-1].seq
    if len(events) == 1:
        text = _line(events[0])
    else:
        text = f"{len(events)} tracker updates (#{first}–#{last}):\n" + "\n".join(f"• {_line(e)}" for e in events)
    return {
        "text": text,
        "metadata": {
            "event_type": "tracker_event",
            "event_payload": {"org_id": org_id, "first_seq": first, "last_seq": last,
                              "event_ids": [e.id for e in events]},
        },
    }


def send(*, token: str, channel: str, message: dict) -> str:
    """Post; return Slack's message ts. Raises a DeliveryFailure subclass on failure."""
    client = WebClient(token=token, base_url=settings.SLACK_API_URL, timeout=settings.SLACK_TIMEOUT,
                       retry_handlers=[])
    try:
        response = client.chat_postMessage(channel=channel, text=message["text"], metadata=message["metadata"],
                                           unfurl_links=False, unfurl_media=False)
    except SlackApiError as exc:
        status = exc.response.status_code
        error = exc.response.get("error", "") if isinstance(exc.response.data, dict) else ""
        if status == 429 or error == "ratelimited":
            retry_after = float(exc.response.headers.get("Retry-After", exc.response.headers.get("retry-after", 1)))
            raise RateLimitedFailure(f"slack 429 ratelimited (Retry-After {retry_after})", retry_after) from exc
        if status >= 500 or error in {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}:
            raise TransientFailure(f"slack {status} {error}".strip()) from exc
        if error in PERMANENT_ERRORS or 400 <= status < 500:
            raise PermanentFailure(f"slack {status} {error}".strip()) from exc
        raise TransientFailure(f"slack {status} {error}".strip()) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        raise TransientFailure(f"slack unreachable: {exc.__class__.__name__}: {exc}") from exc
    return str(response.get("ts", ""))
