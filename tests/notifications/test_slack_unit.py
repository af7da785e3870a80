"""notifications.channels.slack against a real HTTP server speaking Slack's Web API on loopback:
what is sent (text + message metadata), and how each provider answer is classified."""
import socket
import ssl
import time
import urllib.request

import pytest

from notifications.channels import PermanentFailure, RateLimitedFailure, TransientFailure, UncertainFailure
from notifications.channels import slack
from notifications.channels.base import tls_context
from notifications.models import LogEntry
from tests.support.fakeslack import FakeSlack

TOKEN = "xoxb-test-unit"
CHANNEL = "C0OPS"


def _event(seq: int, *, action: str = "start", actor: str = "ann", tracker: str = "Main tracker"):
    """A tracker entry of the org log, unsaved (no database needed)."""
    return LogEntry(id=1000 + seq, organization_id=42, seq=seq, kind="tracker.event", actor_name=actor,
                    payload={"tracker_id": 1, "tracker_name": tracker, "action": action})


@pytest.fixture
def fake(settings):
    with FakeSlack(valid_tokens={TOKEN}, known_channels={CHANNEL}, channel_burst=3) as server:
        settings.SLACK_API_URL = server.base_url
        settings.SLACK_TIMEOUT = 5.0
        yield server


def _send(seq: int = 1, *, token: str = TOKEN, channel: str = CHANNEL) -> str:
    message = slack.build_message(org_id=42, events=[_event(seq)])
    return slack.send(token=token, channel=channel, message=message)


def test_success_returns_ts_and_slack_gets_metadata(fake):
    message = slack.build_message(org_id=42, events=[_event(7, action="stop", actor="bob")])

    ts = slack.send(token=TOKEN, channel=CHANNEL, message=message)

    [posted] = fake.messages()
    assert ts and ts == posted["ts"]
    assert posted["channel"] == CHANNEL
    assert posted["token"] == TOKEN  # sent as `Authorization: Bearer`, the only way the fake reads it here
    assert posted["text"] == "bob stopped *Main tracker* (#7)"
    assert posted["event_type"] == "tracker_event"
    assert posted["payload"] == {"org_id": 42, "first_seq": 7, "last_seq": 7, "event_ids": [1007]}
    assert fake.stats()["accepted"] == 1


def test_http_500_is_transient(fake):
    fake.configure(fail_fraction=1.0)

    with pytest.raises(TransientFailure, match="500"):
        _send()

    assert fake.messages() == []
    assert fake.stats()["http_500"] == 1


def test_provider_429_is_rate_limited_with_its_retry_after(fake):
    fake.configure(ratelimit_fraction=1.0, retry_after=7)

    with pytest.raises(RateLimitedFailure) as excinfo:
        _send()

    assert excinfo.value.retry_after == 7.0
    assert fake.messages() == []
    stats = fake.stats()
    assert (stats["ratelimited_injected"], stats["breaches"]) == (1, 0)


def test_exceeding_the_channel_limit_is_rate_limited_and_counted_as_a_breach(fake):
    fake.configure(channel_burst=1)  # 1 message/s, no burst: a second message at once breaks the limit
    _send(1)

    with pytest.raises(RateLimitedFailure) as excinfo:
        _send(2)

    assert excinfo.value.retry_after == 1.0
    assert [m["first_seq"] for m in fake.messages()] == [1]
    assert fake.stats()["breaches"] == 1


def test_exceeding_the_global_limit_is_a_breach_whatever_the_channel(fake):
    fake.configure(known_channels=None, global_per_minute=2)
    _send(1, channel="C1")
    _send(2, channel="C2")

    with pytest.raises(RateLimitedFailure) as excinfo:
        _send(3, channel="C3")

    assert 55 <= excinfo.value.retry_after <= 60  # until the first request leaves the minute window
    assert fake.stats()["breaches"] == 1


@pytest.mark.parametrize(
    ("token", "channel", "error"),
    [
        (TOKEN, "C0NOWHERE", "channel_not_found"),
        ("xoxb-revoked", CHANNEL, "invalid_auth"),
    ],
)
def test_bad_channel_or_token_is_permanent(fake, token, channel, error):
    with pytest.raises(PermanentFailure, match=error):
        _send(token=token, channel=channel)

    assert fake.messages() == []


def test_answer_slower_than_the_timeout_is_uncertain_and_quick(fake, settings):
    settings.SLACK_TIMEOUT = 0.5
    fake.configure(slow_fraction=1.0, slow_seconds=3.0)

    started = time.monotonic()
    with pytest.raises(UncertainFailure, match="answer lost"):
        _send()
    elapsed = time.monotonic() - started

    assert elapsed < 1.5, f"the call took {elapsed:.2f}s with a 0.5s timeout"
    # Slack got the message even though the answer never reached us: why the retry looks it up first.
    assert len(fake.messages()) == 1
    [posted] = fake.messages()
    assert slack.find_posted(token=TOKEN, channel=CHANNEL, org_id=42, first_seq=1, last_seq=1, oldest=0) == posted["ts"]
    assert slack.find_posted(token=TOKEN, channel=CHANNEL, org_id=42, first_seq=2, last_seq=2, oldest=0) is None


@pytest.mark.parametrize("mode", ["503", "close"])
def test_provider_down_is_transient(fake, mode):
    fake.configure(down=mode)

    with pytest.raises(TransientFailure):
        _send()

    assert fake.messages() == []


def test_closed_port_is_transient(settings):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.SLACK_API_URL = f"http://127.0.0.1:{port}/api/"
    settings.SLACK_TIMEOUT = 2.0

    started = time.monotonic()
    with pytest.raises(TransientFailure, match="unreachable"):
        _send()
    assert time.monotonic() - started < 1.5


def test_build_message_coalesces_a_run_with_first_and_last_seq():
    events = [_event(4, actor="ann"), _event(5, action="stop", actor="bob"), _event(6, actor="")]

    message = slack.build_message(org_id=9, events=events)

    assert message["metadata"] == {
        "event_type": "tracker_event",
        "event_payload": {"org_id": 9, "first_seq": 4, "last_seq": 6, "event_ids": [1004, 1005, 1006]},
    }
    lines = message["text"].splitlines()
    assert lines[0] == "3 tracker updates (#4–#6):"
    assert lines[1:] == [
        "• ann started *Main tracker* (#4)",
        "• bob stopped *Main tracker* (#5)",
        "• Someone started *Main tracker* (#6)",
    ]


def test_coalesced_message_reaches_slack_as_one_request(fake):
    message = slack.build_message(org_id=9, events=[_event(10), _event(11), _event(12)])

    slack.send(token=TOKEN, channel=CHANNEL, message=message)

    [posted] = fake.messages()
    assert (posted["first_seq"], posted["last_seq"], posted["event_ids"]) == (10, 12, [1010, 1011, 1012])
    assert fake.stats()["requests"] == 1


def _https_contexts(opener) -> list:
    return [h._context for h in opener.handlers if isinstance(h, urllib.request.HTTPSHandler)]


def test_every_call_shares_one_verifying_tls_context(settings):
    """slack-sdk's urllib transport given no SSL context makes http.client build a default one per
    connection, loading the system's CA store each time (~23 ms of CPU on this box, more than the
    rest of a send): the process's urllib opener, which the client uses, carries one context per
    process, verifying certificates and host names."""
    settings.SLACK_API_URL = "https://slack.example/api/"
    slack._client("xoxb-a")
    slack._client("xoxb-b")

    [context] = _https_contexts(urllib.request._opener)
    assert context is tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_posts_build_no_urllib_opener_per_call(fake, monkeypatch):
    """Handed an SSL context, slack-sdk's urlopen builds a whole urllib opener per post (~0.56 ms of
    CPU); the posts go through the one opener installed per process instead."""
    _send(1)  # the first client installs the opener
    built = []
    real = urllib.request.build_opener
    monkeypatch.setattr(urllib.request, "build_opener", lambda *a: built.append(a) or real(*a))

    _send(2)
    _send(3)

    assert built == []
    assert [m["first_seq"] for m in fake.messages()] == [1, 2, 3]
    assert _https_contexts(urllib.request._opener) == [tls_context()]
