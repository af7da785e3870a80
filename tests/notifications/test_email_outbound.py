"""Profile change confirmations: PATCH /api/v1/me queues an OutboundEmail in its own transaction and
kicks the drain on commit; the drain (one task body at a time here) sends under the email API limit,
defers what the recipient's daily limit holds back (recorded, sent later), waits while both
providers are down, dead-letters a 550, and several drainers never send one email twice."""
import threading
from datetime import timedelta

from zoneinfo import ZoneInfo

import pytest
from django.db.models import F
import redis
from django.db import connection
from django.utils import timezone

from notifications import email as email_service
from notifications.models import DailySendCount, EmailDeferral, OutboundEmail
from notifications.ratelimit import RateLimiter
from tests.conftest import assert_error
from tests.organizations.factories import UserFactory
from tests.support.fakesmtp import FakeSMTP, smtp_settings

ME = "/api/v1/me"
QUICK_BREAKER = {"window": 30.0, "min_calls": 3, "failure_ratio": 0.5, "open_seconds": 30.0,
                 "max_open_seconds": 60.0, "probe_seconds": 10.0}


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
        yield primary, secondary


def _limit(settings, name: str, rate: float, burst: int) -> None:
    settings.HERALD_RATE_LIMITS = {**settings.HERALD_RATE_LIMITS,
                                   name: {"rate": rate, "burst": burst, "headroom": 0.0}}


def _patch(auth_client, user, data: dict, capture):
    with capture() as callbacks:
        response = auth_client(user).patch(ME, data, format="json")
    return response, callbacks


# --- queueing -----------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_profile_change_queues_its_confirmation_in_the_same_transaction(
        auth_client, user, providers, django_capture_on_commit_callbacks):
    response, callbacks = _patch(auth_client, user, {"first_name": "Ada", "time_zone": "Europe/Paris"},
                                 django_capture_on_commit_callbacks)

    assert response.status_code == 200, response.content
    row = OutboundEmail.objects.get(user=user)
    assert (row.kind, row.status, row.to_email, row.attempts) == ("profile_updated", "pending", user.email, 0)
    assert row.subject == "Your Herald profile was updated"
    assert "- First name: Ada" in row.body_text and "- Time zone: Europe/Paris" in row.body_text
    assert "<strong>Ada</strong>" in row.body_html
    assert callbacks == [email_service.outbound_kick]  # the drain is kicked only once the change commits


@pytest.mark.django_db
def test_no_change_no_email_and_a_rejected_change_queues_nothing(
        auth_client, user, providers, django_capture_on_commit_callbacks):
    response, _ = _patch(auth_client, user, {"first_name": user.first_name}, django_capture_on_commit_callbacks)
    assert response.status_code == 200

    response, callbacks = _patch(auth_client, user, {"first_name": "Ada", "time_zone": "Mars/Olympus"},
                                 django_capture_on_commit_callbacks)
    assert_error(response, 400, "validation_error")

    assert not OutboundEmail.objects.exists()
    assert callbacks == []


# --- the drain ----------------------------------------------------------------------------------------

def _queue(users, changed=("first_name",)) -> list[OutboundEmail]:
    return [email_service.profile_updated_email_queue(user=u, changed=list(changed)) for u in users]


@pytest.mark.django_db
def test_the_drain_sends_a_multipart_confirmation(providers):
    primary, _ = providers
    ada = UserFactory(first_name="Ada")
    [row] = _queue([ada])

    result = email_service.outbound_drain()

    assert (result.kind, result.count) == ("idle", 1)
    [received] = primary.messages(to=ada.email)
    assert received["subject"] == "Your Herald profile was updated"
    assert received["headers"]["x-herald-outbound"] == str(row.id)
    assert received["message_id"] == f"<herald.outbound.{row.id}@herald.test>"
    assert "First name: Ada" in received["text"] and "<strong>Ada</strong>" in received["html"]
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("sent", 1)
    assert row.provider_ref == f"primary:<herald.outbound.{row.id}@herald.test>"


@pytest.mark.django_db
def test_the_api_limit_makes_the_drain_wait_not_spin(providers, settings):
    primary, _ = providers
    _limit(settings, "email.api", rate=2.0, burst=1)
    _queue(UserFactory.create_batch(3))

    result = email_service.outbound_drain()

    assert result.kind == "wait" and 0 < result.wait <= 0.5  # 2/s: the next grant within 0.5 s (less on a slow box)
    assert result.count == 1 and len(primary.messages()) == 1
    assert OutboundEmail.objects.filter(status="pending").count() == 2


@pytest.mark.django_db
def test_the_recipient_daily_limit_defers_records_and_later_sends(providers, settings):
    primary, _ = providers
    settings.HERALD_DAILY_CAPS = {"email": 2}
    ada, bob = UserFactory(time_zone="Asia/Tokyo"), UserFactory()
    rows = _queue([ada, ada, ada, bob])

    assert email_service.outbound_drain().kind == "idle"

    assert len(primary.messages(to=ada.email)) == 2
    assert len(primary.messages(to=bob.email)) == 1  # one recipient's limit does not hold others up
    third = OutboundEmail.objects.get(pk=rows[2].pk)
    assert (third.status, third.attempts, third.last_error) == ("deferred", 0, "deferred: recipient_daily_limit")
    deferral = EmailDeferral.objects.get(outbound=third)
    assert (deferral.category, deferral.reason, deferral.released_at) == ("profile_updated",
                                                                          "recipient_daily_limit", None)
    assert deferral.release_at == third.next_attempt_at
    # Held until the recipient's next local midnight (Tokyo), not for a rolling 24 h.
    tokyo = third.next_attempt_at.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (tokyo.hour, tokyo.minute, tokyo.second) == (0, 0, 0)
    assert 0 < (third.next_attempt_at - timezone.now()).total_seconds() <= 86400

    # A Redis restart hands out nothing: the count lives in Postgres.
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    # The provider limits' own conservative restart is tested in test_ratelimit; here only the cap.
    RateLimiter(redis.Redis.from_url(settings.REDIS_URL)).start_fresh()
    OutboundEmail.objects.filter(pk=third.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    email_service.outbound_drain()
    assert len(primary.messages(to=ada.email)) == 2

    # The next local day the recipient has a slot again.
    DailySendCount.objects.filter(user=ada).update(day=F("day") - timedelta(days=1))
    OutboundEmail.objects.filter(pk=third.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert email_service.outbound_due_exists()
    email_service.outbound_drain()

    assert len(primary.messages(to=ada.email)) == 3
    third.refresh_from_db()
    deferral.refresh_from_db()
    assert third.status == "sent" and deferral.released_at is not None


@pytest.mark.django_db
def test_both_providers_down_emails_wait_then_go_out(providers):
    primary, secondary = providers
    primary.down()
    secondary.down()
    rows = _queue(UserFactory.create_batch(5))

    result = email_service.outbound_drain()

    assert result.kind == "wait" and result.wait > 20  # both breakers open (open_seconds 30)
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {"pending"}
    # Before the breakers opened (min_calls 3) a few attempts were spent; none since, none dead.
    assert sum(OutboundEmail.objects.values_list("attempts", flat=True)) == 3

    secondary.up()
    email_service.smtp._breaker("secondary").reset()  # the breaker's half-open probe, without waiting 30 s
    OutboundEmail.objects.update(next_attempt_at=timezone.now())
    email_service.outbound_drain()

    assert sorted(m["headers"]["x-herald-outbound"] for m in secondary.messages()) == sorted(str(r.id) for r in rows)
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {"sent"}


@pytest.mark.django_db
def test_a_550_is_a_dead_letter_at_once_and_the_rest_go_on(providers):
    primary, _ = providers
    gone, fine = UserFactory(), UserFactory()
    primary.configure(reject={gone.email})
    dead_row, ok_row = _queue([gone, fine])

    email_service.outbound_drain()

    dead_row.refresh_from_db()
    ok_row.refresh_from_db()
    assert (dead_row.status, dead_row.attempts) == ("dead", 1) and "550" in dead_row.last_error
    assert ok_row.status == "sent"


# --- lanes and parallel drainers ------------------------------------------------------------------

@pytest.mark.django_db
def test_each_lane_gets_one_task_and_a_released_lane_rechecks(providers, settings):
    settings.EMAIL_OUTBOUND_LANES = 2
    client = redis.Redis.from_url(settings.REDIS_URL)

    assert email_service.outbound_kick() == 2
    assert email_service.outbound_kick() == 0  # both lanes have a task in flight
    assert client.llen("default") == 2

    email_service.outbound_lane_release(lane=0)  # nothing due: the lease just goes
    assert client.get("herald:email:outbound:lane:0") is None and client.llen("default") == 2

    _queue([UserFactory()])
    email_service.outbound_lane_release(lane=1)  # something due: a new task for the free lanes
    assert client.llen("default") == 4


@pytest.mark.django_db(transaction=True)
def test_parallel_drainers_never_send_one_email_twice(providers):
    primary, _ = providers
    rows = _queue(UserFactory.create_batch(40))
    errors = []

    def drain():
        try:
            while email_service.outbound_drain(budget_seconds=30).kind != "idle":
                pass
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    sent_ids = [m["headers"]["x-herald-outbound"] for m in primary.messages()]
    assert sorted(sent_ids) == sorted(str(r.id) for r in rows)  # all of them, each once
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {"sent"}
