# ruff: noqa: F811 - the fixtures imported from test_send_channels are parameters here
"""Provider status callbacks (issue 13 #9): Twilio's StatusCallback and WhatsApp's status webhooks
move a send's rows to `delivered` (with delivered_at) or `failed`, found by the reference the
fence recorded on the Delivery. Signed requests only (403 `invalid_signature`), idempotent, out
of order safe (delivered never goes back), unknown ids acknowledged and counted, rows that did
not go out untouched. The requests are built by the stand-ins' own signing code (tests/support),
not Herald's; the stack test (test_send_callbacks_stack.py) has the stand-ins post them."""
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from notifications.channels import callbacks
from notifications.models import Delivery, EarlyStatusReport, SendDelivery
from tests.conftest import assert_error
from tests.notifications.test_send_channels import (  # noqa: F401 - the fixtures
    PHONE,
    _drain,
    _send,
    _with_phone_and_devices,
    key_client,
    providers,
)
from tests.support.faketwilio import twilio_signature

pytestmark = pytest.mark.django_db

TWILIO = "/api/v1/callbacks/twilio/primary"
WHATSAPP = "/api/v1/callbacks/whatsapp"


def _count(channel: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("herald_status_callbacks_total", {"channel": channel, "outcome": outcome}) or 0.0


@pytest.fixture
def sent(providers, org_with_members, key_client, auth_client):
    """One send on sms and whatsapp to a member, through the stand-ins: (send id, sms SID, wamid)."""
    o = org_with_members
    _with_phone_and_devices(auth_client, o.member, devices=0)
    response = _send(key_client, [o.member.pk], channels=["sms", "whatsapp"])
    assert response.status_code == 202, response.content
    _drain(o.org, "sms", o.member.pk)
    _drain(o.org, "whatsapp", o.member.pk)
    sms = Delivery.objects.get(channel="sms", status="sent").provider_ref
    wamid = Delivery.objects.get(channel="whatsapp", status="sent").provider_ref
    assert sms.startswith("primary:SM") and wamid.startswith("wamid.")
    return response.json()["id"], sms.split(":", 1)[1], wamid


def _row(send_id, channel):
    return SendDelivery.objects.get(send_id=send_id, channel=channel)


def _twilio(client, twilio, sid, status, token=None, url="http://testserver" + TWILIO, **extra):
    params = {"AccountSid": twilio.account_sid, "MessageSid": sid, "MessageStatus": status, "To": PHONE, **extra}
    signature = twilio_signature(token or twilio.auth_token, url, params)
    return client.post(TWILIO, urlencode(params), content_type="application/x-www-form-urlencoded",
                       HTTP_X_TWILIO_SIGNATURE=signature)


def _whatsapp(client, fake, wamid, status, signature=None, at=None):
    body = fake.webhook_body(wamid, PHONE.lstrip("+"), status)
    if at is not None:
        payload = json.loads(body)
        payload["entry"][0]["changes"][0]["value"]["statuses"][0]["timestamp"] = str(at)
        body = json.dumps(payload).encode()
    return client.post(WHATSAPP, body, content_type="application/json",
                       HTTP_X_HUB_SIGNATURE_256=signature or fake.sign(body))


# --- Twilio ---------------------------------------------------------------------------------------

def test_the_outbound_sms_names_its_status_callback(providers, sent):
    twilio, _, _ = providers
    (message,) = twilio.messages()
    assert message["StatusCallback"] == "http://testserver" + TWILIO


def test_status_callbacks_can_be_turned_off(providers, org_with_members, key_client, auth_client, settings):
    twilio, _, _ = providers
    channels = {**settings.HERALD_CHANNELS}
    channels["sms"] = {**channels["sms"], "OPTIONS": {**channels["sms"]["OPTIONS"], "status_callbacks": False}}
    settings.HERALD_CHANNELS = channels
    o = org_with_members
    _with_phone_and_devices(auth_client, o.member, devices=0)
    assert _send(key_client, [o.member.pk], channels=["sms"]).status_code == 202
    _drain(o.org, "sms", o.member.pk)
    (message,) = twilio.messages()
    assert "StatusCallback" not in message


def test_twilio_delivered_marks_the_row_delivered_once(providers, sent, client):
    twilio, _, _ = providers
    send_id, sid, _ = sent
    before = _count("sms", "applied")
    response = _twilio(client, twilio, sid, "delivered")
    assert response.status_code == 200, response.content
    assert response.json() == {"received": 1, "applied": 1, "unchanged": 0, "ignored": 0, "unknown": 0}
    row = _row(send_id, "sms")
    assert row.state == "delivered" and row.delivered_at is not None and row.delivered_at >= row.sent_at
    assert _count("sms", "applied") == before + 1
    first = row.delivered_at
    # A retried callback changes nothing; a late "sent" does not take it back.
    assert _twilio(client, twilio, sid, "delivered").json()["unchanged"] == 1
    assert _twilio(client, twilio, sid, "sent").json()["ignored"] == 1
    assert _twilio(client, twilio, sid, "undelivered", ErrorCode="30003").json()["unchanged"] == 1
    row.refresh_from_db()
    assert row.state == "delivered" and row.delivered_at == first and row.error == ""
    # The other channel's row of the same send is its own.
    assert _row(send_id, "whatsapp").state == "sent"


def test_twilio_undelivered_is_failed_with_the_error_and_a_later_delivered_wins(providers, sent, client):
    twilio, _, _ = providers
    send_id, sid, _ = sent
    assert _twilio(client, twilio, sid, "undelivered", ErrorCode="30003").json()["applied"] == 1
    row = _row(send_id, "sms")
    assert row.state == "failed" and "30003" in row.error and row.delivered_at is None
    assert row.failed_at is not None and row.sent_at <= row.failed_at  # indexes the organization's failures
    assert _twilio(client, twilio, sid, "delivered").json()["applied"] == 1
    row.refresh_from_db()
    assert row.state == "delivered" and row.error == ""
    # A failed row reported by the provider is not pending: a cancel leaves it alone.


def test_a_provider_reported_failure_is_not_cancellable(providers, sent, client, key_client):
    twilio, _, _ = providers
    send_id, sid, _ = sent
    _twilio(client, twilio, sid, "failed", ErrorCode="30005")
    assert _row(send_id, "sms").state == "failed"
    response = key_client.delete(f"/api/v1/send/{send_id}")
    assert_error(response, 409, "send_not_cancellable")
    assert _row(send_id, "sms").state == "failed"


@pytest.mark.parametrize("case", ["wrong token", "no header", "tampered", "other url"])
def test_a_bad_twilio_signature_is_403_and_changes_nothing(providers, sent, client, case):
    twilio, _, _ = providers
    send_id, sid, _ = sent
    before = _count("sms", "bad_signature")
    if case == "wrong token":
        response = _twilio(client, twilio, sid, "delivered", token="not-the-token")
    elif case == "other url":
        response = _twilio(client, twilio, sid, "delivered", url="http://evil.example/api/v1/callbacks/twilio/primary")
    elif case == "no header":
        response = client.post(TWILIO, urlencode({"MessageSid": sid, "MessageStatus": "delivered"}),
                               content_type="application/x-www-form-urlencoded")
    else:
        params = {"MessageSid": sid, "MessageStatus": "undelivered"}
        signature = twilio_signature(twilio.auth_token, "http://testserver" + TWILIO, params)
        response = client.post(TWILIO, urlencode({**params, "MessageStatus": "delivered"}),
                               content_type="application/x-www-form-urlencoded", HTTP_X_TWILIO_SIGNATURE=signature)
    assert_error(response, 403, "invalid_signature")
    assert _row(send_id, "sms").state == "sent"
    assert _count("sms", "bad_signature") == before + 1


def test_a_twilio_callback_for_an_unknown_provider_or_message(providers, sent, client):
    twilio, _, _ = providers
    send_id, _, _ = sent
    params = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
    url = "/api/v1/callbacks/twilio/tertiary"
    response = client.post(url, urlencode(params), content_type="application/x-www-form-urlencoded",
                           HTTP_X_TWILIO_SIGNATURE=twilio_signature(twilio.auth_token, "http://testserver" + url,
                                                                    params))
    assert_error(response, 404, "sms_provider_not_found")
    before = _count("sms", "unknown")
    response = _twilio(client, twilio, "SM" + "0" * 32, "delivered")
    assert response.status_code == 200 and response.json()["unknown"] == 1  # providers retry non-2xx
    assert _count("sms", "unknown") == before + 1
    assert _row(send_id, "sms").state == "sent"


def _unrecorded(channel: str) -> tuple[Delivery, str]:
    """The channel's sent Delivery with its reference taken off, as before the fence's transaction
    that records it has committed (the provider answered the send, the commit is still to come)."""
    delivery = Delivery.objects.get(channel=channel, status="sent")
    ref = delivery.provider_ref
    Delivery.objects.filter(pk=delivery.pk).update(provider_ref="")
    return delivery, ref


def test_a_report_that_overtakes_the_commit_of_its_send_is_applied_once_the_send_is_recorded(providers, sent,
                                                                                              client):
    twilio, _, _ = providers
    send_id, sid, _ = sent
    delivery, ref = _unrecorded("sms")
    # Twilio reports failed then delivered before the commit (both held), out of order on purpose.
    assert _twilio(client, twilio, sid, "delivered").json()["unknown"] == 1
    assert _twilio(client, twilio, sid, "undelivered", ErrorCode="30003").json()["unknown"] == 1
    assert EarlyStatusReport.objects.filter(provider_ref=ref).count() == 2
    assert callbacks.held_reports_sweep() == 0  # still unknown: held, not dropped
    assert EarlyStatusReport.objects.count() == 2 and _row(send_id, "sms").state == "sent"
    before = _count("sms", "applied_late")
    Delivery.objects.filter(pk=delivery.pk).update(provider_ref=ref)  # the fence's commit
    assert callbacks.held_reports_sweep() == 2
    row = _row(send_id, "sms")
    assert row.state == "delivered" and row.delivered_at is not None and row.error == ""  # the furthest state
    assert not EarlyStatusReport.objects.exists()
    assert _count("sms", "applied_late") == before + 2
    assert callbacks.held_reports_sweep() == 0 and _row(send_id, "sms").state == "delivered"


def test_a_held_whatsapp_failure_is_applied_with_its_error(providers, sent, client):
    _, _, fake = providers
    send_id, _, wamid = sent
    delivery, ref = _unrecorded("whatsapp")
    assert _whatsapp(client, fake, wamid, "failed").json()["unknown"] == 1
    Delivery.objects.filter(pk=delivery.pk).update(provider_ref=ref)
    assert callbacks.held_reports_sweep() == 1
    assert _row(send_id, "whatsapp").state == "failed"


def test_held_reports_nobody_claims_are_dropped_after_the_wait(providers, sent, client, settings):
    twilio, _, _ = providers
    send_id, _, _ = sent
    assert _twilio(client, twilio, "SM" + "1" * 32, "delivered").json()["unknown"] == 1
    assert EarlyStatusReport.objects.count() == 1
    settings.EARLY_STATUS_REPORT_WAIT_SECONDS = 60
    EarlyStatusReport.objects.update(received_at=timezone.now() - timedelta(seconds=61))
    before = _count("any", "expired")
    assert callbacks.held_reports_sweep() == 0
    assert not EarlyStatusReport.objects.exists() and _count("any", "expired") == before + 1
    assert _row(send_id, "sms").state == "sent"


def test_a_signed_twilio_callback_with_a_bad_shape_is_400(providers, sent, client):
    twilio, _, _ = providers
    _, sid, _ = sent
    response = _twilio(client, twilio, sid, "exploded")
    body = assert_error(response, 400, "validation_error")
    assert "MessageStatus" in body["extra"]["fields"]
    response = client.post(TWILIO, json.dumps({"MessageSid": sid}), content_type="application/json")
    assert_error(response, 415, "unsupported_media_type")


def test_a_cancelled_row_in_the_same_message_is_not_touched(providers, org_with_members, key_client, auth_client,
                                                            client):
    twilio, _, _ = providers
    o = org_with_members
    _with_phone_and_devices(auth_client, o.member, devices=0)
    kept = _send(key_client, [o.member.pk], channels=["sms"]).json()["id"]
    dropped = _send(key_client, [o.member.pk], channels=["sms"]).json()["id"]
    assert key_client.delete(f"/api/v1/send/{dropped}").status_code == 200
    _drain(o.org, "sms", o.member.pk)
    (delivery,) = Delivery.objects.filter(channel="sms", status="sent")
    assert delivery.last_seq > delivery.first_seq  # one message's range covers both entries
    assert len(twilio.messages()) == 1
    assert _twilio(client, twilio, delivery.provider_ref.split(":", 1)[1], "delivered").json()["applied"] == 1
    assert _row(kept, "sms").state == "delivered"
    assert _row(dropped, "sms").state == "cancelled" and _row(dropped, "sms").delivered_at is None


# --- WhatsApp -------------------------------------------------------------------------------------

@pytest.fixture
def verify_token(settings):
    channels = {**settings.HERALD_CHANNELS}
    channels["whatsapp"] = {**channels["whatsapp"],
                            "OPTIONS": {**channels["whatsapp"]["OPTIONS"], "webhook_verify_token": "herald-verify"}}
    settings.HERALD_CHANNELS = channels
    return "herald-verify"


def test_the_whatsapp_handshake_answers_the_challenge(client, verify_token):
    response = client.get(WHATSAPP, {"hub.mode": "subscribe", "hub.verify_token": verify_token,
                                     "hub.challenge": "1158201444"})
    assert response.status_code == 200 and response.content == b"1158201444"
    assert response["Content-Type"].startswith("text/plain")
    assert_error(client.get(WHATSAPP, {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"}),
                 403, "invalid_verify_token")
    body = assert_error(client.get(WHATSAPP, {"hub.mode": "unsubscribe", "hub.verify_token": verify_token}), 400,
                        "validation_error")
    assert set(body["extra"]["fields"]) == {"hub.mode", "hub.challenge"}


def test_the_whatsapp_handshake_without_a_verify_token_configured_is_403(client):
    response = client.get(WHATSAPP, {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"})
    assert_error(response, 403, "callback_not_configured")


def test_whatsapp_delivered_and_read_and_failed(providers, sent, client):
    _, _, fake = providers
    send_id, _, wamid = sent
    at = 1_900_000_000
    response = _whatsapp(client, fake, wamid, "delivered", at=at)
    assert response.status_code == 200, response.content
    assert response.json()["applied"] == 1
    row = _row(send_id, "whatsapp")
    assert row.state == "delivered" and row.delivered_at == datetime.fromtimestamp(at, UTC)
    assert _whatsapp(client, fake, wamid, "read").json()["unchanged"] == 1
    assert _whatsapp(client, fake, wamid, "failed").json()["unchanged"] == 1
    assert _whatsapp(client, fake, wamid, "sent").json()["ignored"] == 1
    row.refresh_from_db()
    assert row.state == "delivered" and row.delivered_at == datetime.fromtimestamp(at, UTC)
    assert _row(send_id, "sms").state == "sent"


def test_whatsapp_failed_records_the_error(providers, sent, client):
    _, _, fake = providers
    send_id, _, wamid = sent
    assert _whatsapp(client, fake, wamid, "failed").json()["applied"] == 1
    row = _row(send_id, "whatsapp")
    assert row.state == "failed" and "131026" in row.error


def test_a_whatsapp_webhook_with_several_statuses_and_an_unknown_id(providers, sent, client):
    _, _, fake = providers
    send_id, _, wamid = sent
    payload = json.loads(fake.webhook_body(wamid, "1", "delivered"))
    value = payload["entry"][0]["changes"][0]["value"]
    value["statuses"].append({**value["statuses"][0], "id": "wamid.unknown"})
    payload["entry"].append({"id": "2", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "messages": [{"from": "1", "id": "wamid.in", "type": "text"}]}}]})
    body = json.dumps(payload).encode()
    response = client.post(WHATSAPP, body, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=fake.sign(body))
    assert response.json() == {"received": 2, "applied": 1, "unchanged": 0, "ignored": 0, "unknown": 1}
    assert _row(send_id, "whatsapp").state == "delivered"


def test_a_bad_whatsapp_signature_or_body(providers, sent, client, settings):
    _, _, fake = providers
    send_id, _, wamid = sent
    assert_error(_whatsapp(client, fake, wamid, "delivered", signature="sha256=" + "0" * 64), 403, "invalid_signature")
    body = fake.webhook_body(wamid, "1", "delivered")
    assert_error(client.post(WHATSAPP, body, content_type="application/json"), 403, "invalid_signature")
    # Signed with the secret, but over other bytes than those sent.
    assert_error(client.post(WHATSAPP, body + b" ", content_type="application/json",
                             HTTP_X_HUB_SIGNATURE_256=fake.sign(body)), 403, "invalid_signature")
    assert _row(send_id, "whatsapp").state == "sent"
    broken = b'{"object": '
    assert_error(client.post(WHATSAPP, broken, content_type="application/json",
                             HTTP_X_HUB_SIGNATURE_256=fake.sign(broken)), 400, "malformed_request")
    shape = json.dumps({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {
        "statuses": [{"id": wamid, "status": "delivered", "timestamp": "soon"}]}}]}]}).encode()
    assert_error(client.post(WHATSAPP, shape, content_type="application/json",
                             HTTP_X_HUB_SIGNATURE_256=fake.sign(shape)), 400, "validation_error")
    assert _row(send_id, "whatsapp").state == "sent"
    channels = {**settings.HERALD_CHANNELS}
    channels["whatsapp"] = {**channels["whatsapp"], "OPTIONS": {**channels["whatsapp"]["OPTIONS"], "app_secret": ""}}
    settings.HERALD_CHANNELS = channels
    assert_error(_whatsapp(client, fake, wamid, "delivered"), 403, "callback_not_configured")
