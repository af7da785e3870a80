"""The web tier loses a dependency. Real Daphne, Celery workers and beat; the web process alone is
pointed at a closed port.

- Redis (broker, channel layer, kick flags) gone while members press Start/Stop: the requests
  still commit and answer 200, and once the workers' sweeper runs, every event is delivered to
  every member's inbox, in order.
- Postgres gone: the API answers 503 service_unavailable with Retry-After, not 500."""
import time

import httpx
import pytest

from notifications.models import Channel, DeliveryStream, Notification
from organizations.services import membership_create, organization_create, user_token_create
from tests.organizations.factories import UserFactory
from tests.support.stack import DELIVERY_QUEUES, Stack

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

DEAD_REDIS = "redis://127.0.0.1:1/9"
DEAD_POSTGRES = "postgres://postgres@127.0.0.1:1/herald"


@pytest.fixture
def stack(transactional_db):
    with Stack(env={"SWEEP_INTERVAL_SECONDS": "1", "DELIVERY_STALL_SECONDS": "2"}) as harness:
        harness.start_daphne("web", env={"REDIS_URL": DEAD_REDIS, "TEST_REDIS_URL": DEAD_REDIS})
        harness.start_worker("orgs", DELIVERY_QUEUES)
        harness.start_worker("default", ["default", "maintenance"])
        harness.start_beat("beat")
        harness.wait_ready(timeout=60)
        with harness.dump_logs_on_failure(lines=40):
            yield harness


def test_events_committed_while_the_web_tier_had_no_redis_are_delivered_by_the_sweeper(stack):
    owner, member = UserFactory(), UserFactory()
    org = organization_create(creator=owner, name="Outage")
    membership_create(organization=org, email=member.email, role="member")
    tracker = org.trackers.get()
    headers = {"Authorization": f"Token {user_token_create(user=member)}"}

    with httpx.Client(base_url=stack.url("web"), headers=headers, timeout=30) as client:
        for action in ("start", "stop", "start"):
            response = client.post(f"/api/v1/trackers/{tracker.id}/{action}")
            assert response.status_code == 200, response.text
        assert client.get("/readyz").status_code == 503  # and says so

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if DeliveryStream.objects.filter(organization=org, channel=Channel.INAPP, delivered_seq=3).exists():
            break
        time.sleep(0.2)
    for user in (owner, member):
        seqs = list(Notification.objects.filter(recipient=user, organization=org).order_by("id")
                    .values_list("entry__seq", flat=True))
        assert seqs == [1, 2, 3], (user, seqs)


def test_the_api_answers_503_while_postgres_is_unreachable(transactional_db):
    with Stack() as stack:
        stack.start_daphne("web", env={"DATABASE_URL": DEAD_POSTGRES, "DB_POOL_TIMEOUT": "2"})
        stack.wait_ready(timeout=60)  # /healthz needs no database
        with stack.dump_logs_on_failure(lines=40), httpx.Client(base_url=stack.url("web"), timeout=30) as client:
            for method, path in (("GET", "/api/v1/me"), ("POST", "/api/v1/trackers/1/start"),
                                 ("GET", "/api/v1/orgs/")):
                response = client.request(method, path, headers={"Authorization": "Token hut_abcd1234_secret"})

                assert response.status_code == 503, (path, response.text)
                assert response.json() == {"message": "The database is unavailable; retry shortly.",
                                           "code": "service_unavailable", "extra": {"dependency": "database"}}
                assert response.headers["Retry-After"] == "5"
            assert client.get("/readyz").status_code == 503
