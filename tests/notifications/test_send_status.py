"""Status of a send on an external, per-recipient channel (email, against two SMTP servers on
loopback), recorded generically by the fence (notifications/delivery/status.py): sent after the
provider accepted, suppressed when the member has no active destination, skipped when cancelled,
dead after a permanent refusal, failed while retried."""
import pytest

from notifications.delivery.fence import stream_deliver
from notifications.models import SendDelivery
from notifications.preferences import preference_set
from tests.notifications.test_email_stream import _deliver, providers  # noqa: F401 - the fixture
from tests.notifications.test_send_api import send_template
from tests.organizations.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def key_client(org_with_members, api_key_client):
    # Not transactional: a member who has not opted in to email is not reached (a transactional send
    # is: test_send_email_on_demand.py).
    send_template(org_with_members.org, kind="invoice", category="reminders", email=True)
    return api_key_client(ApiKeyFactory(organization=org_with_members.org).plaintext)


def _send(client, recipients, channels=("inapp", "email")):
    response = client.post("/api/v1/send", {"recipients": recipients, "kind": "invoice", "channels": list(channels),
                                            "data": {"title": "Invoice ready", "body": "See attached"}},
                           format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def _states(send_id, channel="email"):
    return dict(SendDelivery.objects.filter(send_id=send_id, channel=channel).values_list("user_id", "state"))


def test_email_rows_are_sent_by_the_fence_and_suppressed_without_a_destination(providers, org_with_members,  # noqa: F811
                                                                              key_client):
    primary, _ = providers
    o = org_with_members
    preference_set(user=o.member, organization=o.org, enabled=True)  # the member's email stream
    send_id = _send(key_client, [o.member.pk, o.admin.pk])
    assert _states(send_id) == {o.member.pk: "queued", o.admin.pk: "suppressed"}
    _deliver(o.org, o.member)
    assert _states(send_id) == {o.member.pk: "sent", o.admin.pk: "suppressed"}
    assert SendDelivery.objects.get(send_id=send_id, user=o.member, channel="email").sent_at is not None
    mails = primary.messages(to=o.member.email)
    assert len(mails) == 1 and "Invoice ready" in mails[0]["subject"]
    assert primary.messages(to=o.admin.email) == []
    counts = key_client.get(f"/api/v1/send/{send_id}").json()["counts"]
    assert counts["email"] == {"sent": 1, "suppressed": 1} and counts["inapp"] == {"queued": 2}


def test_a_cancelled_email_is_not_sent(providers, org_with_members, key_client):  # noqa: F811
    primary, _ = providers
    o = org_with_members
    preference_set(user=o.member, organization=o.org, enabled=True)
    send_id = _send(key_client, [o.member.pk])
    assert key_client.delete(f"/api/v1/send/{send_id}").status_code == 200
    _deliver(o.org, o.member)
    assert primary.messages(to=o.member.email) == []
    assert _states(send_id) == {o.member.pk: "cancelled"}
    assert stream_deliver(org_id=o.org.id, channel="email", destination=str(o.member.id)).kind == "idle"


def test_a_refused_recipient_is_dead_and_a_failing_provider_failed(providers, org_with_members, key_client):  # noqa: F811
    primary, secondary = providers
    o = org_with_members
    preference_set(user=o.member, organization=o.org, enabled=True)
    primary.configure(temp_fail="451")
    secondary.configure(temp_fail="451")
    send_id = _send(key_client, [o.member.pk], channels=["email"])
    result = stream_deliver(org_id=o.org.id, channel="email", destination=str(o.member.id))
    assert result.kind == "wait"
    row = SendDelivery.objects.get(send_id=send_id)
    assert row.state == "failed" and row.error and row.failed_at is not None
    primary.configure(temp_fail=None, reject=[o.member.email])
    secondary.configure(temp_fail=None, reject=[o.member.email])
    _deliver(o.org, o.member)
    dead = SendDelivery.objects.get(send_id=send_id)
    assert dead.state == "dead" and dead.failed_at >= row.failed_at  # when it became dead (now(): one transaction)
