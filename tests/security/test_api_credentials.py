"""API requests that carry a token or an API key skip the browser-state middleware (session, session
user, messages: config.middleware.api_credentials_request); everything else, CSRF for
session-authenticated API calls first of all, stays as it was."""
import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.authentication import SessionAuthentication
from rest_framework.test import APIClient
from rest_framework.views import APIView

from config import middleware
from organizations import authentication
from organizations.models import ApiKeyScope
from organizations import services
from tests.conftest import assert_error
from trackers.models import Tracker

pytestmark = pytest.mark.django_db

ME = "/api/v1/me"


def start_path(org) -> str:
    return f"/api/v1/trackers/{Tracker.objects.get(organization=org).id}/start"


def browser_state(response) -> set[str]:
    request = response.wsgi_request
    return {name for name in ("session", "_messages", "_cached_user") if name in request.__dict__} | (
        {"user(lazy)"} if type(request.__dict__.get("user")).__name__ == "SimpleLazyObject" else set())


def session_client(user, enforce_csrf_checks=True) -> APIClient:
    client = APIClient(enforce_csrf_checks=enforce_csrf_checks)
    client.force_login(user)
    return client


# --- what is skipped ----------------------------------------------------------------------------

def test_a_token_request_gets_no_session_user_or_message_store(auth_client, user):
    response = auth_client(user).get(ME)

    assert response.status_code == 200 and response.json()["id"] == user.id
    assert response.wsgi_request.__dict__.get("_herald_api_credentials") is True
    assert "session" not in response.wsgi_request.__dict__
    assert "_messages" not in response.wsgi_request.__dict__
    assert response.wsgi_request.user == user  # DRF's, from the token
    assert "Set-Cookie" not in response and "Cookie" not in response.get("Vary", "")
    assert response["X-Frame-Options"] == "DENY"  # the other middleware still runs


def test_an_api_key_request_gets_no_session(api_key_client, org_with_members):
    _, key = services.api_key_create(organization=org_with_members.org, name="k", created_by=None,
                                     scopes=[ApiKeyScope.NOTIFICATIONS_SEND])
    response = api_key_client(key).post("/api/v1/send", {"recipients": [org_with_members.member.id], "kind": "x",
                                                          "data": {}}, format="json")

    assert response.status_code != 401, response.content
    assert "session" not in response.wsgi_request.__dict__ and "_messages" not in response.wsgi_request.__dict__


def test_a_token_write_is_still_logged_with_its_user(auth_client, org_with_members):
    from reports.models import ActivityLog

    client = auth_client(org_with_members.member)
    response = client.post(start_path(org_with_members.org))

    assert response.status_code == 200, response.content
    row = ActivityLog.objects.get(action="tracker-start")
    assert (row.actor_user_id, row.organization_id) == (org_with_members.member.id, org_with_members.org.id)


def test_a_token_with_a_session_cookie_is_the_token_user_and_the_session_is_untouched(auth_client, user,
                                                                                         org_with_members):
    client = auth_client(user)
    client.force_login(org_with_members.owner)  # a session cookie of another user rides along

    response = client.get(ME)

    assert response.json()["id"] == user.id
    assert "session" not in response.wsgi_request.__dict__ and "Set-Cookie" not in response


def test_a_bad_token_with_a_session_cookie_is_401_not_the_session_user(org_with_members):
    client = session_client(org_with_members.owner)
    client.credentials(HTTP_AUTHORIZATION="Token herald_nope_nope")

    assert_error(client.get(ME), 401, "invalid_token")
    assert_error(client.post(start_path(org_with_members.org)), 401, "invalid_token")


# --- what is not skipped ------------------------------------------------------------------------

def test_a_session_api_write_without_the_csrf_token_is_403(org_with_members):
    client = session_client(org_with_members.owner)

    body = assert_error(client.post(start_path(org_with_members.org)), 403, "permission_denied")

    assert "CSRF" in body["message"]
    assert not Tracker.objects.get(organization=org_with_members.org).is_running


def test_a_session_api_write_with_the_csrf_token_is_served(org_with_members):
    client = session_client(org_with_members.owner)
    client.get("/me/profile/")  # a page sets the CSRF cookie
    token = client.cookies["csrftoken"].value

    response = client.post(start_path(org_with_members.org), HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 200, response.content
    assert {"session", "user(lazy)"} <= browser_state(response)


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Tokenx abc", "TokenBearer", ""])
def test_other_authorization_headers_keep_the_session(org_with_members, header):
    client = session_client(org_with_members.owner, enforce_csrf_checks=False)
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get(ME)

    assert response.status_code == 200 and response.json()["id"] == org_with_members.owner.id
    assert "session" in response.wsgi_request.__dict__


def test_a_token_request_for_html_keeps_the_session(auth_client, user):
    """The browsable API (local settings) renders a page with the layout's context processors."""
    response = auth_client(user).get(ME, HTTP_ACCEPT="text/html")

    assert "session" in response.wsgi_request.__dict__


def test_a_token_request_outside_the_json_api_keeps_the_session(auth_client, user):
    response = auth_client(user).get("/api/schema/")

    assert "session" in response.wsgi_request.__dict__


def test_browser_pages_keep_session_messages_and_csrf(org_with_members):
    client = session_client(org_with_members.owner)

    page = client.get("/me/profile/")
    assert page.status_code == 200
    assert {"session", "_messages"} <= browser_state(page)
    assert "csrftoken" in client.cookies

    refused = client.post("/me/profile/", {"first_name": "x"})
    assert refused.status_code == 403


# --- why it is safe: every route the predicate covers authenticates from the header alone ------

def _api_v1_views(patterns=None, prefix=""):
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _api_v1_views(entry.url_patterns, route)
        elif isinstance(entry, URLPattern) and ("/" + route).startswith(middleware.API_CREDENTIALS_PATH_PREFIX):
            yield route, entry.callback


def test_every_json_api_route_is_a_drf_view_that_reads_the_header_before_the_session():
    keywords = {cls.keyword.lower().encode() for cls in (authentication.UserTokenAuthentication,
                                                         authentication.ApiKeyAuthentication)}
    assert keywords == set(middleware.API_CREDENTIALS_KEYWORDS)
    views = list(_api_v1_views())
    assert len(views) > 40
    for route, callback in views:
        view_class = getattr(callback, "cls", None)
        assert view_class is not None and issubclass(view_class, APIView), route
        assert getattr(callback, "csrf_exempt", False), route  # CSRF comes from SessionAuthentication
        classes = list(view_class.authentication_classes)
        if SessionAuthentication in classes:
            before = classes[:classes.index(SessionAuthentication)]
            assert {authentication.UserTokenAuthentication, authentication.ApiKeyAuthentication} <= set(before), route
