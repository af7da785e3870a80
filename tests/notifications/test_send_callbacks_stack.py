"""A send on sms, push and whatsapp on the real stack (issue 13 #4, #9): POST /api/v1/send to
Daphne, a Celery worker on every delivery queue, the Twilio-, FCM- and WhatsApp-compatible
stand-ins on loopback. Each stand-in receives its message; Twilio and WhatsApp then post their
signed status callbacks to Daphne on their own, asynchronously and (WhatsApp) out of order, and
the rows end `delivered` with delivered_at; a message the carrier reports undelivered is `failed`
with the error; push (no receipts) stays `sent`."""
import copy
import time
import uuid

import httpx
import pytest

from notifications.channels import registry
from notifications.channels.push import device_register
from notifications.models import SendDelivery
from notifications.ratelimit import limiter
from notifications.templating import template_create
from organizations.models import User
from organizations.services import api_key_create, membership_create, organization_create, user_update
from tests.notifications.test_sms_stack import wait_for
from tests.support.fakefcm import FakeFCM
from tests.support.faketwilio import FakeTwilio
from tests.support.fakewhatsapp import FakeWhatsApp
from tests.support.stack import DELIVERY_QUEUES, Stack, free_port

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

CHANNELS = ["sms", "push", "whatsapp"]


def _states(send_id: int) -> dict[str, str]:
    return dict(SendDelivery.objects.filter(send_id=send_id).values_list("channel", "state"))


def test_a_send_reaches_every_provider_and_their_callbacks_mark_it_delivered(transactional_db, settings):
    twilio, fcm, whatsapp = FakeTwilio(), FakeFCM(), FakeWhatsApp()
    for fake in (twilio, fcm, whatsapp):
        fake.up()
    port = free_port()
    web = f"http://127.0.0.1:{port}"
    twilio.deliver = "delivered"  # sent, then delivered
    whatsapp.deliver = ["delivered", "read", "sent"]  # out of order: a late "sent" changes nothing
    whatsapp.webhook_url = f"{web}/api/v1/callbacks/whatsapp"
    env = {"SWEEP_INTERVAL_SECONDS": "1", "DELIVERY_STALL_SECONDS": "2",
           "SMS_PRIMARY_URL": twilio.base_url, "SMS_PRIMARY_ACCOUNT_SID": twilio.account_sid,
           "SMS_PRIMARY_AUTH_TOKEN": twilio.auth_token, "SMS_PRIMARY_FROM": "+15005550001",
           "SMS_STATUS_CALLBACK_URL": f"{web}/api/v1/callbacks/twilio",
           "SMS_PER_RECIPIENT_PER_MINUTE": "600", "SMS_PER_RECIPIENT_BURST": "10",
           "PUSH_FCM_URL": fcm.base_url, "PUSH_FCM_PROJECT_ID": fcm.project_id,
           "PUSH_FCM_ACCESS_TOKEN": fcm.access_token,
           "WHATSAPP_API_URL": whatsapp.base_url, "WHATSAPP_PHONE_NUMBER_ID": whatsapp.phone_number_id,
           "WHATSAPP_ACCESS_TOKEN": whatsapp.access_token, "WHATSAPP_APP_SECRET": whatsapp.app_secret,
           "WHATSAPP_PER_RECIPIENT_PER_MINUTE": "600"}
    channels = copy.deepcopy(settings.HERALD_CHANNELS)  # this process creates the streams: same providers
    channels["sms"]["OPTIONS"]["providers"] = {"primary": twilio.settings("+15005550001")}
    channels["push"]["OPTIONS"].update(fcm.settings())
    channels["whatsapp"]["OPTIONS"].update(whatsapp.settings())
    settings.HERALD_CHANNELS = channels
    run = uuid.uuid4().hex[:6]
    owner = User.objects.create_user(username=f"cb-{run}-o", email=f"cb-{run}-o@example.com",
                                     password="unused-password-123")
    member = User.objects.create_user(username=f"cb-{run}-m", email=f"cb-{run}-m@example.com",
                                      password="unused-password-123")
    org = organization_create(creator=owner, name=f"Callbacks {run}")
    membership_create(organization=org, email=member.email, role="member")
    user_update(user=member, data={"phone": "+14155550123"})
    device_register(channel=registry.get("push"), user=member, token="fcm-stack-token-" + "z" * 30,
                    platform="android")
    template_create(organization=org, kind="alert", locale="en", category="transactional", variables=["what"],
                    parts={"inapp": {"title": "{{ what }}"}, "sms": {"text": "Alert: {{ what }}"},
                           "push": {"title": "Alert", "body": "{{ what }}"}, "whatsapp": {"text": "Alert: {{ what }}"}})
    _, key = api_key_create(organization=org, name="integration", created_by=owner)
    limiter.start_fresh(CHANNELS)

    with twilio, fcm, whatsapp, Stack(env=env) as stack:
        stack.start_daphne("web", port=port)
        stack.start_worker("providers", DELIVERY_QUEUES, concurrency=2)
        stack.wait_ready(timeout=60)
        with stack.dump_logs_on_failure(lines=60):
            def send(what: str) -> int:
                response = httpx.post(f"{web}/api/v1/send", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                                      json={"recipients": [member.pk], "kind": "alert", "channels": CHANNELS,
                                            "data": {"what": what}})
                assert response.status_code == 202, response.text
                return response.json()["id"]

            first = send("disk full")
            wait_for(lambda: _states(first) == {"sms": "delivered", "push": "sent", "whatsapp": "delivered"}, 60,
                     f"the providers' receipts (now {_states(first)})")
            assert [m["Body"] for m in twilio.messages()] == ["Alert: disk full"]
            assert [m["notification"]["body"] for m in fcm.messages()] == ["disk full"]
            assert [m["text"]["body"] for m in whatsapp.messages()] == ["Alert: disk full"]
            wait_for(lambda: len(twilio.callbacks) == 2 and len(whatsapp.callbacks) == 3, 30, "every callback")
            assert [c[2] for c in twilio.callbacks] == [200, 200]
            assert [c[1] for c in whatsapp.callbacks] == [200, 200, 200]
            time.sleep(0.5)  # the late "sent" has been answered: nothing went back
            rows = {r.channel: r for r in SendDelivery.objects.filter(send_id=first)}
            assert rows["whatsapp"].state == "delivered" and rows["sms"].state == "delivered"
            assert rows["sms"].delivered_at >= rows["sms"].sent_at and rows["whatsapp"].delivered_at is not None
            assert rows["push"].delivered_at is None

            twilio.deliver = "undelivered"
            second = send("fan stopped")
            wait_for(lambda: _states(second)["sms"] == "failed", 60, f"the undelivered receipt ({_states(second)})")
            row = SendDelivery.objects.get(send_id=second, channel="sms")
            assert "30003" in row.error and row.sent_at is not None
            metrics = httpx.get(f"{web}/metrics", timeout=10).text
            assert 'herald_status_callbacks_total{channel="sms",outcome="applied"}' in metrics
