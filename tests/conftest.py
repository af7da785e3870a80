"""Shared fixtures: API clients authenticated with real user tokens, an organization with one
member of each role, and a clean test Redis database for every test."""
import copy
import os
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest
import redis
from rest_framework.test import APIClient

from config.admission import LiveLag
from notifications.channels import registry
from notifications.ratelimit import RateLimiter, Scope
from organizations import services
from organizations.models import Membership, Organization, User
from tests.organizations.factories import MembershipFactory, UserFactory

ERROR_KEYS = {"message", "code", "extra"}


def assert_error(response, status: int, code: str) -> dict:
    """The one error format: exactly {"message", "code", "extra"}, with the given status and code."""
    assert response.status_code == status, (response.status_code, getattr(response, "content", b"")[:500])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    assert isinstance(body["extra"], dict), body
    return body


def pytest_configure(config):
    # WhiteNoise warns on every request when collectstatic has not run; irrelevant to API tests.
    config.addinivalue_line("filterwarnings", "ignore:No directory at:UserWarning")


def _redis_db(url: str) -> int:
    path = urlparse(url).path.strip("/")
    return int(path) if path else 0


@pytest.fixture(autouse=True)
def _flush_test_redis(settings):
    """Each test starts with an empty test Redis database (kick flags, rate limits, channel layer),
    declared fresh to the rate limiter (an empty Redis otherwise starts every bucket as spent).

    Refuses to flush database 0 (where `make run` keeps its data) unless TEST_REDIS_URL asks for it."""
    url = settings.REDIS_URL
    if _redis_db(url) == 0 and not os.environ.get("TEST_REDIS_URL"):
        raise RuntimeError(f"refusing to flush Redis database 0 ({url}); tests expect their own database")
    # Every provider tag, including those a channel declares only on its first send (webhook,
    # push, ...): a tag left out would start conservatively, as after lost history, and make the
    # first send of a test wait or not depending on how fast the test runs.
    # (Tags only: declaring the channels' limits into settings here would pin their defaults before a
    # test sets its own.)
    tags = {Scope(name).tag for name in settings.HERALD_RATE_LIMITS}
    for channel in registry.all_channels():
        tags.update(str(spec.get("tag") or name.split(".", 1)[0]) for name, spec in channel.rate_limits().items())
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        RateLimiter(client).start_fresh(tags=tags)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _fresh_live_lag():
    """LiveLag is per process: what a live-feed test's consumers observed (entries forwarded late,
    by design) must not make a later test's web refuse events as "backlog"."""
    for name in ("current", "previous", "started"):
        setattr(LiveLag, name, 0.0)
    yield


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user(db) -> User:
    return UserFactory()


@pytest.fixture
def auth_client(db):
    """auth_client(user) -> an APIClient sending `Authorization: Token <a real user token>`."""

    def make(user: User) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {services.user_token_create(user=user)}")
        client.user = user
        return client

    return make


@pytest.fixture
def api_key_client(db):
    """api_key_client(key) -> an APIClient sending `Authorization: Bearer <org API key>`."""

    def make(key: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        return client

    return make


@dataclass
class OrgWithMembers:
    org: Organization
    owner: User
    admin: User
    member: User


@pytest.fixture
def org_with_members(db) -> OrgWithMembers:
    """An organization made the way the product makes one (owner + "Main tracker"), plus an admin
    and a plain member."""
    owner = UserFactory()
    org = services.organization_create(creator=owner, name="Acme")
    admin = MembershipFactory(organization=org, role=Membership.Role.ADMIN).user
    member = MembershipFactory(organization=org, role=Membership.Role.MEMBER).user
    return OrgWithMembers(org=org, owner=owner, admin=admin, member=member)


@pytest.fixture
def other_org(db) -> OrgWithMembers:
    """A second, unrelated tenant."""
    owner = UserFactory()
    org = services.organization_create(creator=owner, name="Other Corp")
    admin = MembershipFactory(organization=org, role=Membership.Role.ADMIN).user
    member = MembershipFactory(organization=org, role=Membership.Role.MEMBER).user
    return OrgWithMembers(org=org, owner=owner, admin=admin, member=member)


def queries_for(django_assert_max_num_queries, limit: int, request):
    """Run `request()` under django_assert_max_num_queries(limit); return (query count, response)."""
    with django_assert_max_num_queries(limit) as captured:
        response = request()
    assert response.status_code == 200, response.content[:500]
    return len(captured), response


@pytest.fixture
def queue_layer(settings):
    """The test runs on channels-redis' queue layer (ServerClockRedisChannelLayer) instead of the
    default pub/sub layer (Channels rebuilds its layers when CHANNEL_LAYERS changes)."""
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["BACKEND"] = "config.channel_layer.ServerClockRedisChannelLayer"
    settings.CHANNEL_LAYERS = layers
    yield
