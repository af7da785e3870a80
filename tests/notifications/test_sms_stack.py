"""SMS on the real stack: two Celery worker processes on the delivery queues and beat against the
test database, two Twilio-compatible stand-ins on loopback. During a primary outage every message
fails over to the secondary; each phone gets its entries in seq order, none lost or repeated;
when the primary is back, messages go to it again."""
import copy
import re
import time
import uuid

import pytest
from django.db import transaction

from notifications.publish import publish
from notifications.ratelimit import limiter
from organizations.models import User
from organizations.services import membership_create, organization_create, user_update
from tests.support import testkinds
from tests.support.faketwilio import FakeTwilio
from tests.support.stack import DELIVERY_QUEUES, Stack

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

STACK_ENV = {
    "SWEEP_INTERVAL_SECONDS": "1",
    "DELIVERY_STALL_SECONDS": "2",
    "DELIVERY_BACKOFF_BASE": "0.2",
    "DELIVERY_BACKOFF_MAX": "1",
    "SMS_TIMEOUT": "2",
    "SMS_PER_SECOND": "50",
    "SMS_BURST": "20",
    "SMS_PER_RECIPIENT_PER_MINUTE": "600",
    "SMS_PER_RECIPIENT_BURST": "10",
    "SMS_BREAKER_OPEN_SECONDS": "1",
}
TITLE = re.compile(r"N\d+")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def sms_env(primary: FakeTwilio, secondary: FakeTwilio) -> dict:
    env = {}
    for name, fake, number in (("PRIMARY", primary, "+15005550001"), ("SECONDARY", secondary, "+15005550002")):
        env.update({f"SMS_{name}_URL": fake.base_url, f"SMS_{name}_ACCOUNT_SID": fake.account_sid,
                    f"SMS_{name}_AUTH_TOKEN": fake.auth_token, f"SMS_{name}_FROM": number})
    return env


def titles(fake: FakeTwilio, phone: str) -> list[str]:
    return [t for m in fake.messages() if m["To"] == phone for t in TITLE.findall(m["Body"])]


def titles_in_arrival_order(fakes: list[FakeTwilio], phone: str) -> list[str]:
    accepted = sorted((r for fake in fakes for r in fake.accepted() if r.method == "POST"), key=lambda r: r.at)
    return [t for r in accepted if r.form()["To"] == phone for t in TITLE.findall(r.form()["Body"])]


def test_a_primary_outage_fails_over_and_every_phone_gets_its_entries_in_order(transactional_db, settings):
    testkinds.register()
    primary, secondary = FakeTwilio(), FakeTwilio(account_sid="AC" + "1" * 32, auth_token="second")
    primary.up()
    secondary.up()
    channels = copy.deepcopy(settings.HERALD_CHANNELS)  # this process creates the streams: same providers
    channels["sms"]["OPTIONS"]["providers"] = {"primary": primary.settings("+15005550001"),
                                               "secondary": secondary.settings("+15005550002")}
    settings.HERALD_CHANNELS = channels
    run = uuid.uuid4().hex[:6]
    users = [User.objects.create_user(username=f"s-{run}-{j}", email=f"s-{run}-{j}@example.com",
                                      password="unused-password-123") for j in range(3)]
    org = organization_create(creator=users[0], name=f"SMS {run}")
    for user in users[1:]:
        membership_create(organization=org, email=user.email, role="member")
    phones = [f"+1415555{1000 + j}" for j in range(3)]
    for user, phone in zip(users, phones, strict=True):
        user_update(user=user, data={"phone": phone})
    limiter.start_fresh(["sms"])

    with primary, secondary:
        primary.outage = 503
        with Stack(env={**STACK_ENV, **sms_env(primary, secondary)}) as stack:
            for name in ("providers-a", "providers-b"):
                stack.add(name, testkinds.worker_argv(name, DELIVERY_QUEUES), kind="worker")
            stack.start_beat()
            stack.wait_ready(timeout=60)
            with stack.dump_logs_on_failure(lines=60):
                expected = {phone: [] for phone in phones}

                def notify(i: int) -> None:
                    audience = [u for j, u in enumerate(users) if (i + j) % 3 != 0]  # varying audiences
                    with transaction.atomic():
                        publish(organization_id=org.id, kind=testkinds.NAME, payload={"title": f"N{i}"},
                                audience=[u.id for u in audience])
                    for user in audience:
                        expected[phones[users.index(user)]].append(f"N{i}")

                for i in range(24):
                    notify(i)
                    if i % 6 == 5:
                        time.sleep(0.3)
                for phone in phones:
                    wait_for(lambda phone=phone: len(titles(secondary, phone)) >= len(expected[phone]), 60,
                             f"SMS to {phone} through the secondary")
                assert primary.messages() == []
                for phone in phones:
                    assert titles(secondary, phone) == expected[phone]

                primary.outage = None  # back: after its breaker's open time, the primary takes them
                time.sleep(1.5)
                for i in range(24, 30):
                    notify(i)
                for phone in phones:
                    wait_for(lambda phone=phone: len(titles_in_arrival_order([primary, secondary], phone))
                             >= len(expected[phone]), 60, f"SMS to {phone} after the outage")
                time.sleep(1.0)
                for phone in phones:
                    got = titles_in_arrival_order([primary, secondary], phone)
                    assert got == expected[phone], phone  # in order, once each, across both providers
                assert primary.messages(), "the primary never took a message after it came back"
                print({p: (len(titles(secondary, p)), len(titles(primary, p))) for p in phones})
