"""Bounded input (issue 11 #5), proxy and Host headers (#7), JSON errors under /api/ (#8)."""
import json

import pytest
from django.test import Client
from rest_framework.test import APIClient

from organizations import services
from tests.conftest import assert_error
from tests.organizations.factories import UserFactory

pytestmark = pytest.mark.django_db

REGISTER = "/api/v1/auth/register"


def post_raw(client, path: str, body: bytes):
    return client.generic("POST", path, body, content_type="application/json")


# --- body size and nesting (#5) -----------------------------------------------------------------

def test_body_over_the_limit_is_413_before_parsing(settings, api_client):
    settings.HERALD_MAX_BODY_BYTES = 1000
    body = json.dumps({"username": "a", "email": "a@example.com", "password": "x" * 5000}).encode()

    response = post_raw(api_client, REGISTER, body)

    error = assert_error(response, 413, "request_too_large")
    assert error["extra"] == {"max_bytes": 1000}


def test_default_limit_refuses_a_30_mb_body(api_client):
    response = post_raw(api_client, REGISTER, b'{"username": "' + b"a" * (30 * 1024 * 1024) + b'"}')
    assert_error(response, 413, "request_too_large")


def test_body_under_the_limit_is_parsed(settings, api_client):
    settings.HERALD_MAX_BODY_BYTES = 100_000
    response = post_raw(api_client, REGISTER, json.dumps({"username": "a"}).encode())
    assert_error(response, 400, "validation_error")


@pytest.mark.parametrize("debug", [False, True])
def test_json_nested_100000_deep_is_400_not_500(settings, api_client, debug):
    settings.DEBUG = debug
    response = post_raw(api_client, REGISTER, b"[" * 100_000 + b"]" * 100_000)
    assert_error(response, 400, "json_too_deep")


def test_json_nested_past_the_depth_limit_is_400(api_client):
    deep = {"username": "a"}
    for _ in range(40):
        deep = {"x": deep}
    response = api_client.post(REGISTER, deep, format="json")
    assert_error(response, 400, "json_too_deep")


def test_json_nan_is_400(api_client):
    assert_error(post_raw(api_client, REGISTER, b'{"username": NaN}'), 400, "malformed_request")


# --- JSON errors under /api/ (#8) -------------------------------------------------------------

@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", ["/api/v1/no-such-thing", "/api/nope", "/api/v1/orgs/abc/"])
def test_unknown_api_path_is_a_json_404_even_in_debug(settings, path, debug):
    settings.DEBUG = debug
    assert_error(Client().get(path), 404, "not_found")


# --- proxy and Host headers (#7) -------------------------------------------------------------

def test_pagination_links_use_the_base_url_not_the_host_header(settings):
    settings.HERALD_BASE_URL = "https://herald.example.com"
    user = UserFactory()
    for name in ("One", "Two", "Three"):
        services.organization_create(creator=user, name=name)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {services.user_token_create(user=user)}")

    first = client.get("/api/v1/orgs/?page_size=1", HTTP_HOST="evil.example").json()
    second = client.get("/api/v1/orgs/?page_size=1&page=2", HTTP_HOST="evil.example").json()

    assert first["next"] == "https://herald.example.com/api/v1/orgs/?page=2&page_size=1"
    assert second["previous"] == "https://herald.example.com/api/v1/orgs/?page_size=1"
    assert "evil" not in json.dumps([first, second])


@pytest.fixture
def https_only(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.HERALD_TRUSTED_PROXIES = ["10.0.0.0/8"]


def test_forwarded_proto_from_an_untrusted_peer_is_ignored(https_only):
    response = Client(REMOTE_ADDR="203.0.113.9").get("/healthz", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 301  # still plain HTTP: sent to https


def test_forwarded_proto_from_a_trusted_proxy_is_believed(https_only):
    response = Client(REMOTE_ADDR="10.1.2.3").get("/healthz", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 200
