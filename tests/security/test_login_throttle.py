"""Login and registration throttles on the shared Redis limiter (issue 11 #2): per client address, per
account, a lockout after repeated failures; 429 with Retry-After; the sign-in page too; audited."""
import time

import pytest
from django.test import Client
from rest_framework.test import APIClient

from organizations.models import SecurityEvent
from tests.conftest import assert_error
from tests.organizations.factories import DEFAULT_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

TOKEN = "/api/v1/auth/token"
REGISTER = "/api/v1/auth/register"
LOGIN_PAGE = "/accounts/login/"


def limits(settings, **scopes):
    settings.HERALD_RATE_LIMITS = {**settings.HERALD_RATE_LIMITS,
                                   **{name.replace("_", "."): spec for name, spec in scopes.items()}}


def login(client, username, password, **extra):
    return client.post(TOKEN, {"username": username, "password": password}, format="json", **extra)


def test_fifty_wrong_passwords_lock_the_account(api_client):
    UserFactory(username="bob")
    statuses = [login(api_client, "bob", f"wrong-{i}").status_code for i in range(50)]

    assert statuses[:10] == [400] * 10
    assert set(statuses[10:]) == {429}
    locked = login(api_client, "bob", DEFAULT_PASSWORD)  # even the right password, while locked
    body = assert_error(locked, 429, "account_locked")
    assert 800 < int(locked["Retry-After"]) <= 900
    assert body["extra"]["retry_after"] > 800
    assert SecurityEvent.objects.filter(kind="login_failed").count() == 11
    assert SecurityEvent.objects.filter(kind="login_locked").count() == 1


def test_lockout_ends_after_its_time(settings, api_client):
    settings.LOGIN_LOCKOUT_SECONDS = 1
    UserFactory(username="bob")
    for i in range(11):
        login(api_client, "bob", f"wrong-{i}")
    assert_error(login(api_client, "bob", DEFAULT_PASSWORD), 429, "account_locked")

    time.sleep(1.3)

    assert login(api_client, "bob", DEFAULT_PASSWORD).status_code == 200
    assert SecurityEvent.objects.filter(kind="login", detail__via="api").count() == 1


def test_unknown_account_is_throttled_like_a_known_one(api_client):
    statuses = [login(api_client, "nobody", "x").status_code for _ in range(12)]
    assert statuses == [400] * 10 + [429, 429]


def test_per_address_limit_across_accounts(settings):
    limits(settings, auth_login_ip={"rate": 5 / 60, "burst": 5, "headroom": 0.0})
    attacker, other = APIClient(REMOTE_ADDR="203.0.113.7"), APIClient(REMOTE_ADDR="203.0.113.8")

    statuses = [login(attacker, f"user{i}", "x").status_code for i in range(6)]

    assert statuses == [400] * 5 + [429]
    response = login(attacker, "user99", "x")
    assert_error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) >= 1
    assert login(other, "user99", "x").status_code == 400  # another address is not held back


def test_forwarded_for_counts_only_behind_a_trusted_proxy(settings):
    limits(settings, auth_login_ip={"rate": 2 / 60, "burst": 2, "headroom": 0.0})
    settings.HERALD_TRUSTED_PROXIES = ["10.0.0.0/8"]
    spoofer = APIClient(REMOTE_ADDR="203.0.113.7")
    proxy = APIClient(REMOTE_ADDR="10.0.0.2")

    # A client cannot dodge the limit by inventing X-Forwarded-For addresses.
    spoofed = [login(spoofer, f"u{i}", "x", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}").status_code for i in range(3)]
    assert spoofed == [400, 400, 429]
    # Behind the proxy, each real client has its own budget.
    behind = [login(proxy, f"v{i}", "x", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}").status_code for i in range(3)]
    assert behind == [400, 400, 400]
    assert SecurityEvent.objects.filter(kind="login_failed", ip="198.51.100.2").exists()


def test_registration_is_throttled_per_address(settings, api_client):
    limits(settings, auth_register_ip={"rate": 3 / 3600, "burst": 3, "headroom": 0.0})
    statuses = [api_client.post(REGISTER, {"username": f"new{i}", "email": f"new{i}@example.com",
                                           "password": "Tr0ub4dor&3-horse"}, format="json").status_code
                for i in range(4)]
    assert statuses == [201, 201, 201, 429]


def test_sign_in_page_is_throttled_and_locks_too():
    UserFactory(username="carol")
    browser = Client()
    statuses = [browser.post(LOGIN_PAGE, {"username": "carol", "password": f"bad{i}"}).status_code
                for i in range(12)]

    assert statuses[:10] == [200] * 10  # the form again, with its error
    assert statuses[10:] == [429, 429]
    locked = browser.post(LOGIN_PAGE, {"username": "carol", "password": DEFAULT_PASSWORD})
    assert locked.status_code == 429 and int(locked["Retry-After"]) > 800
    assert b"Too many failed logins" in locked.content
    assert SecurityEvent.objects.filter(kind="login_failed", detail__via="web").count() == 11


def test_sign_in_page_success_is_audited():
    user = UserFactory(username="dave")
    response = Client().post(LOGIN_PAGE, {"username": "dave", "password": DEFAULT_PASSWORD})
    assert response.status_code == 302
    assert SecurityEvent.objects.filter(kind="login", user=user, detail__via="web").count() == 1
