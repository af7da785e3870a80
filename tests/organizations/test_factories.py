"""The factories build rows the product itself would accept (so other tests start from valid data)."""
import pytest

from organizations import services
from tests.notifications.factories import DeliveryFactory, DeliveryStreamFactory, NotificationFactory
from tests.organizations.factories import (
    SLACK_TEST_TOKEN,
    ApiKeyFactory,
    MembershipFactory,
    OrganizationFactory,
    SlackIntegrationFactory,
    UserFactory,
    UserTokenFactory,
)
from tests.trackers.factories import TimeEntryFactory, TrackerEventFactory, TrackerFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("factory", [
    UserFactory, OrganizationFactory, MembershipFactory, SlackIntegrationFactory, TrackerFactory,
    TrackerEventFactory, TimeEntryFactory, NotificationFactory, DeliveryStreamFactory, DeliveryFactory,
])
def test_factory_rows_are_valid(factory):
    instance = factory()

    instance.full_clean()
    assert instance.pk is not None


def test_user_factory_password_works():
    from tests.organizations.factories import DEFAULT_PASSWORD

    assert UserFactory().check_password(DEFAULT_PASSWORD)


def test_api_key_factory_key_authenticates():
    key = ApiKeyFactory()

    assert services.api_key_authenticate(key=key.plaintext).api_key == key


def test_revoked_api_key_factory():
    key = ApiKeyFactory(revoked=True)

    with pytest.raises(services.ApiKeyRejected) as exc:
        services.api_key_authenticate(key=key.plaintext)
    assert exc.value.code == "revoked_api_key"


def test_user_token_factory_authenticates():
    token = UserTokenFactory()

    assert services.user_token_authenticate(key=token.plaintext) == token.user


def test_slack_integration_factory_token_decrypts():
    assert services.slack_token(integration=SlackIntegrationFactory()) == SLACK_TEST_TOKEN


def test_tracker_event_factory_keeps_org_seq_consistent():
    tracker = TrackerFactory()
    events = TrackerEventFactory.create_batch(3, tracker=tracker)

    tracker.organization.refresh_from_db()
    assert [e.seq for e in events] == [1, 2, 3]
    assert tracker.organization.last_event_seq == 3
