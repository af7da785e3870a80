"""Tracker events by email, one task body at a time (stream_deliver called directly, as a worker
would), against real Postgres, Redis and two SMTP servers on loopback: preferences decide who gets
mail, a backlog coalesces into one digest in seq order, failover, waiting while both providers are
down, 550 dead letters, and the per-recipient daily limit deferring (and recording) the 11th mail."""
import time
from datetime import timedelta

from zoneinfo import ZoneInfo

import pytest
from django.db.models import F
import redis

from notifications.breaker import CircuitBreaker
from notifications.models import DailySendCount, Delivery, DeliveryStream, EmailDeferral
from notifications.preferences import preference_set
from notifications.delivery.fence import stream_deliver
from notifications.delivery.sweeper import streams_stalled
from notifications.delivery.kicks import streams_kick_all
from notifications.services import delivery_requeue, late_delivery_send
from notifications.ratelimit import RateLimiter
from organizations.models import Membership, Organization
from tests.support.fakesmtp import FakeSMTP, smtp_settings
from trackers.models import Tracker
from trackers.services import tracker_start, tracker_stop

pytestmark = pytest.mark.django_db

QUICK_BREAKER = {"window": 30.0, "min_calls": 3, "failure_ratio": 0.5, "open_seconds": 0.3,
                 "max_open_seconds": 0.6, "probe_seconds": 2.0}


@pytest.fixture
def providers(settings):
    with FakeSMTP() as primary, FakeSMTP() as secondary:
        for name, value in smtp_settings(primary, secondary).items():
            setattr(settings, name, value)
        settings.EMAIL_TIMEOUT = 1.0
        settings.EMAIL_FROM = "Herald <herald@herald.test>"
        settings.HERALD_BREAKERS = {**settings.HERALD_BREAKERS, "smtp-primary": QUICK_BREAKER,
                                    "smtp-secondary": QUICK_BREAKER}
        settings.HERALD_RATE_LIMITS = {**settings.HERALD_RATE_LIMITS,
                                       "email.api": {"rate": 1000.0, "burst": 100}}
        settings.DELIVERY_BACKOFF_BASE = 0.05
        settings.DELIVERY_BACKOFF_MAX = 0.2
        yield primary, secondary


@pytest.fixture
def acme(org_with_members):
    return org_with_members


def _toggle(org: Organization, actor, times: int = 1) -> list[int]:
    """Start/stop the org's main tracker `times` times (commits are not run in these tests, so
    nothing is kicked: the test drives delivery)."""
    tracker = Tracker.objects.filter(organization=org).order_by("id").first()
    seqs = []
    for _ in range(times):
        tracker.refresh_from_db()
        change = tracker_stop if tracker.is_running else tracker_start
        seqs.append(change(tracker_id=tracker.id, actor=actor).seq)
    return seqs


def _deliver(org: Organization, user, until=("idle",), rounds: int = 50):
    """Run the stream's task body until it reports one of `until`; sleeps through short waits."""
    result = None
    for _ in range(rounds):
        result = stream_deliver(org_id=org.id, channel="email", destination=str(user.id))
        if result.kind in until:
            return result
        if result.kind == "wait":
            time.sleep(min(result.wait, 1.0))
    raise AssertionError(f"stream never reached {until}: last {result}")


def _seq_ranges(messages: list[dict]) -> list[tuple[int, int]]:
    return [(int(m["headers"]["x-herald-first-seq"]), int(m["headers"]["x-herald-last-seq"])) for m in messages]


# --- preferences ---------------------------------------------------------------------------------

def test_tracker_emails_are_off_by_default(providers, acme):
    primary, _ = providers
    for seq in _toggle(acme.org, acme.owner, 3):
        streams_kick_all(org_id=acme.org.id)

    assert not DeliveryStream.objects.filter(channel="email").exists()
    assert stream_deliver(org_id=acme.org.id, channel="email", destination=str(acme.member.id)).kind == "missing"
    assert primary.messages() == []


def test_enabling_starts_at_the_current_seq_and_mails_each_event_in_order(providers, acme):
    primary, _ = providers
    _toggle(acme.org, acme.owner, 2)  # history before opting in is not mailed

    preference_set(user=acme.member, organization=acme.org, enabled=True)
    stream = DeliveryStream.objects.get(organization=acme.org, channel="email", destination=str(acme.member.id))
    assert stream.delivered_seq == 2
    sent = []
    for _ in range(3):
        sent += _toggle(acme.org, acme.admin)
        _deliver(acme.org, acme.member)

    messages = primary.messages(to=acme.member.email)
    assert _seq_ranges(messages) == [(3, 3), (4, 4), (5, 5)]
    first = messages[0]
    assert first["headers"]["x-herald-kind"] == "tracker_event"
    assert first["subject"] == f"[Acme] {acme.admin.username} started Main tracker"
    assert f"{acme.admin.username} started Main tracker in Acme" in first["text"]
    assert "<strong>Main tracker</strong>" in first["html"]
    assert first["message_id"].startswith("<herald.delivery.")
    assert list(Delivery.objects.filter(stream=stream).values_list("status", flat=True)) == ["sent"] * 3
    assert primary.messages(to=acme.owner.email) == []  # only the member opted in


def test_a_backlog_goes_as_one_digest_in_seq_order(providers, acme):
    primary, _ = providers
    preference_set(user=acme.member, organization=None, enabled=True)  # globally
    seqs = _toggle(acme.org, acme.owner, 6)

    _deliver(acme.org, acme.member)

    [digest] = primary.messages(to=acme.member.email)
    assert _seq_ranges([digest]) == [(seqs[0], seqs[-1])]
    assert digest["headers"]["x-herald-kind"] == "tracker_digest"
    assert digest["subject"] == f"[Acme] 6 tracker updates (#{seqs[0]}–#{seqs[-1]})"
    positions = [digest["text"].index(f"(#{seq})") for seq in seqs]
    assert positions == sorted(positions), "events listed in seq order"
    delivery = Delivery.objects.get(stream__destination=str(acme.member.id))
    assert (delivery.first_seq, delivery.last_seq, delivery.status) == (seqs[0], seqs[-1], "sent")


def test_a_long_backlog_is_summarized_not_cut(providers, acme, settings):
    primary, _ = providers
    settings.EMAIL_DIGEST_MAX_LINES = 3
    preference_set(user=acme.member, organization=acme.org, enabled=True)
    seqs = _toggle(acme.org, acme.owner, 8)

    _deliver(acme.org, acme.member)

    [digest] = primary.messages()
    assert _seq_ranges([digest]) == [(seqs[0], seqs[-1])]
    assert f"… and 5 more (#{seqs[3]}–#{seqs[-1]})" in digest["text"]


def test_disabling_deactivates_the_stream_and_an_org_setting_beats_the_global_one(providers, acme, other_org):
    Membership.objects.create(organization=other_org.org, user=acme.member)
    preference_set(user=acme.member, organization=None, enabled=True)
    streams = DeliveryStream.objects.filter(channel="email", destination=str(acme.member.id), active=True)
    assert set(streams.values_list("organization_id", flat=True)) == {acme.org.id, other_org.org.id}

    preference_set(user=acme.member, organization=other_org.org, enabled=False)
    assert set(streams.values_list("organization_id", flat=True)) == {acme.org.id}

    preference_set(user=acme.member, organization=None, enabled=False)
    assert not streams.exists()


def test_a_member_who_left_loses_the_stream(providers, acme):
    primary, _ = providers
    preference_set(user=acme.member, organization=acme.org, enabled=True)
    Membership.objects.filter(organization=acme.org, user=acme.member).delete()
    _toggle(acme.org, acme.owner)

    assert _deliver(acme.org, acme.member).kind == "idle"
    assert not DeliveryStream.objects.filter(channel="email", active=True).exists()
    assert primary.messages() == []


# --- providers -----------------------------------------------------------------------------------

def test_primary_down_mail_goes_through_the_secondary(providers, acme):
    primary, secondary = providers
    primary.down()
    preference_set(user=acme.member, organization=acme.org, enabled=True)
    seqs = _toggle(acme.org, acme.owner)

    _deliver(acme.org, acme.member)

    assert _seq_ranges(secondary.messages(to=acme.member.email)) == [(seqs[0], seqs[0])]
    delivery = Delivery.objects.get(stream__destination=str(acme.member.id))
    assert delivery.provider_ref.startswith("secondary:<herald.delivery.")
    assert delivery.attempts == 1


def test_both_down_the_mail_waits_without_burning_attempts_then_goes_out(providers, acme, settings):
    primary, secondary = providers
    primary.down()
    secondary.down()
    preference_set(user=acme.member, organization=acme.org, enabled=True)
    seqs = _toggle(acme.org, acme.owner)

    # Retry for a while (several breaker open/probe cycles): the head waits, it never dies.
    deadline = time.monotonic() + 4.0
    kinds = []
    while time.monotonic() < deadline:
        result = stream_deliver(org_id=acme.org.id, channel="email", destination=str(acme.member.id))
        kinds.append((result.kind, CircuitBreaker("smtp-primary").state()["state"],
                      CircuitBreaker("smtp-secondary").state()["state"]))
        time.sleep(min(result.wait, 0.3) if result.kind == "wait" else 0.05)

    head = Delivery.objects.get(stream__destination=str(acme.member.id))
    assert head.status == "pending", (head.last_error, kinds)  # kinds: what each round saw
    assert head.attempts < 4  # only pre-breaker failures counted
    assert CircuitBreaker("smtp-primary").state()["state"] in ("open", "half_open"), kinds
    assert {kind for kind, _, _ in kinds} == {"wait"}
    assert DeliveryStream.objects.get(pk=head.stream_id).delivered_seq == seqs[0] - 1

    secondary.up()
    _deliver(acme.org, acme.member)

    assert _seq_ranges(secondary.messages(to=acme.member.email)) == [(seqs[0], seqs[0])]
    head.refresh_from_db()
    assert head.status == "sent"


def test_recipient_refused_550_is_a_dead_letter_at_once_and_the_stream_moves_on(providers, acme):
    primary, secondary = providers
    primary.configure(reject={acme.member.email})
    preference_set(user=acme.member, organization=acme.org, enabled=True)
    [dead_seq] = _toggle(acme.org, acme.owner)

    _deliver(acme.org, acme.member)

    dead = Delivery.objects.get(stream__destination=str(acme.member.id), first_seq=dead_seq)
    assert (dead.status, dead.attempts) == ("dead", 1)
    assert "550" in dead.last_error
    assert secondary.stats()["connections"] == 0  # not a provider problem: no failover

    primary.configure(reject=set())
    [next_seq] = _toggle(acme.org, acme.owner)
    _deliver(acme.org, acme.member)
    assert _seq_ranges(primary.messages(to=acme.member.email)) == [(next_seq, next_seq)]


def test_a_member_without_an_address_is_recorded_as_a_dead_letter(providers, acme):
    acme.member.email = ""
    acme.member.save(update_fields=["email"])
    preference_set(user=acme.member, organization=acme.org, enabled=True)
    [seq] = _toggle(acme.org, acme.owner)

    _deliver(acme.org, acme.member)

    dead = Delivery.objects.get(stream__destination=str(acme.member.id))
    assert (dead.first_seq, dead.status, dead.last_error) == (seq, "dead", "recipient has no email address")


# --- the per-recipient daily limit ---------------------------------------------------------------

def _deliver_until_wait(org, user, rounds: int = 50):
    for _ in range(rounds):
        result = stream_deliver(org_id=org.id, channel="email", destination=str(user.id))
        if result.kind != "delivered":
            return result
    raise AssertionError("never waited")


def test_the_eleventh_email_of_the_day_is_deferred_recorded_and_sent_as_a_digest_later(providers, acme, settings):
    """At most 10 per calendar day in the recipient's time zone, counted in Postgres: the 11th
    waits for the recipient's next local midnight (not a rolling 24 h bucket that lets ~20 through
    in a day), and a Redis restart hands out nothing more."""
    primary, _ = providers
    acme.member.time_zone = "America/New_York"
    acme.member.save(update_fields=["time_zone"])
    preference_set(user=acme.member, organization=acme.org, enabled=True)
    for _ in range(10):
        _toggle(acme.org, acme.owner)
        _deliver(acme.org, acme.member)
    assert len(primary.messages(to=acme.member.email)) == 10

    [eleventh] = _toggle(acme.org, acme.owner)
    result = _deliver_until_wait(acme.org, acme.member)
    assert result.kind == "wait" and result.notes == {"deferred": "recipient_daily_limit"}

    assert len(primary.messages(to=acme.member.email)) == 10
    stream = DeliveryStream.objects.get(organization=acme.org, channel="email", destination=str(acme.member.id))
    parked = Delivery.objects.get(stream=stream, status="pending")
    deferral = EmailDeferral.objects.get(delivery=parked, released_at__isnull=True)
    assert (parked.first_seq, parked.last_seq) == (eleventh, eleventh)
    assert parked.attempts == 0 and parked.last_error == "deferred: recipient_daily_limit"
    assert (deferral.reason, deferral.category, deferral.user_id) == ("recipient_daily_limit", "tracker_event",
                                                                       acme.member.id)
    local = deferral.release_at.astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute, local.second) == (0, 0, 0)  # the recipient's next midnight
    assert stream.next_attempt_at == deferral.release_at  # the sweeper leaves it alone until then
    assert all(channel != "email" for _, channel, _ in streams_stalled(older_than=0))

    # Entries that arrive while it is deferred join the same digest; a Redis restart changes nothing.
    later = _toggle(acme.org, acme.owner, 2)
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    # The provider limits' own conservative restart is tested in test_ratelimit; here only the cap.
    RateLimiter(redis.Redis.from_url(settings.REDIS_URL)).start_fresh()
    DeliveryStream.objects.filter(pk=stream.pk).update(next_attempt_at=None)
    _deliver_until_wait(acme.org, acme.member)
    parked.refresh_from_db()
    assert (parked.first_seq, parked.last_seq) == (eleventh, later[-1])
    assert len(primary.messages(to=acme.member.email)) == 10

    # The recipient's next day: one digest with all three.
    DailySendCount.objects.filter(user=acme.member).update(day=F("day") - timedelta(days=1))
    DeliveryStream.objects.filter(pk=stream.pk).update(next_attempt_at=None)
    _deliver(acme.org, acme.member)

    digest = primary.messages(to=acme.member.email)[-1]
    assert _seq_ranges([digest]) == [(eleventh, later[-1])]
    assert "held back because you reached today's email limit" in digest["text"]
    parked.refresh_from_db()
    deferral.refresh_from_db()
    assert parked.status == "sent" and deferral.released_at is not None


def test_a_requeued_dead_letter_goes_out_late_without_moving_the_cursor(providers, acme):
    primary, _ = providers
    primary.configure(reject={acme.member.email})
    preference_set(user=acme.member, organization=acme.org, enabled=True)
    [seq] = _toggle(acme.org, acme.owner)
    _deliver(acme.org, acme.member)
    dead = Delivery.objects.get(stream__destination=str(acme.member.id), status="dead")
    primary.configure(reject=set())
    later = _toggle(acme.org, acme.owner, 2)
    _deliver(acme.org, acme.member)
    delivery_requeue(delivery=dead)  # what the admin's requeue does (the task is queued on commit)
    dead.refresh_from_db()
    assert dead.late and dead.status == "pending"
    stream = DeliveryStream.objects.get(pk=dead.stream_id)

    result = late_delivery_send(delivery_id=dead.pk)  # the body of the send_late_delivery task

    assert result.kind == "delivered"
    late = primary.messages(to=acme.member.email)[-1]
    assert late["subject"].startswith("(late) ") and _seq_ranges([late]) == [(seq, seq)]
    dead.refresh_from_db()
    stream.refresh_from_db()
    assert dead.status == "sent" and stream.delivered_seq == later[-1]
    assert _seq_ranges(primary.messages(to=acme.member.email)[:-1]) == [(later[0], later[-1])]


def test_a_new_member_who_opted_in_everywhere_gets_the_new_orgs_stream(providers, acme, other_org):
    from organizations.services import membership_create

    preference_set(user=acme.member, enabled=True)  # global: every organization of mine
    assert not DeliveryStream.objects.filter(organization=other_org.org, channel="email").exists()

    membership_create(organization=other_org.org, email=acme.member.email, role="member")

    stream = DeliveryStream.objects.get(organization=other_org.org, channel="email")
    assert stream.destination == str(acme.member.id)
    [seq] = _toggle(other_org.org, other_org.owner)
    _deliver(other_org.org, acme.member)
    primary, _ = providers
    assert _seq_ranges(primary.messages(to=acme.member.email)) == [(seq, seq)]
