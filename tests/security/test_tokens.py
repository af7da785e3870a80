"""User tokens that end (issue 11 #3): sliding expiry, list and revoke, all revoked on a password
change, and open WebSockets of a revoked token or a deactivated user closed."""
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from config.asgi import application
from organizations import services
from organizations.models import SecurityEvent, User, UserToken
from tests.conftest import assert_error
from tests.organizations.factories import DEFAULT_PASSWORD, UserFactory

TOKENS = "/api/v1/auth/tokens"
ME = "/api/v1/me"
PASSWORD = "/api/v1/me/password"
NEW_PASSWORD = "An0ther-long-passphrase!"


def client_for(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def row(token: str) -> UserToken:
    return UserToken.objects.get(prefix=token.split("_")[1])


# --- expiry ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_token_expires_after_the_ttl_without_use(settings):
    token = services.user_token_create(user=UserFactory())
    UserToken.objects.filter(pk=row(token).pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert_error(client_for(token).get(ME), 401, "token_expired")


@pytest.mark.django_db
def test_new_token_lives_for_the_configured_ttl(settings):
    settings.HERALD_TOKEN_TTL_SECONDS = 3600
    token = services.user_token_create(user=UserFactory())
    remaining = (row(token).expires_at - timezone.now()).total_seconds()
    assert 3590 < remaining <= 3600


@pytest.mark.django_db
def test_expiry_slides_with_use(settings):
    settings.HERALD_TOKEN_TTL_SECONDS = 3600
    token = services.user_token_create(user=UserFactory())
    soon = timezone.now() + timedelta(seconds=30)
    UserToken.objects.filter(pk=row(token).pk).update(expires_at=soon, last_used_at=timezone.now() - timedelta(hours=1))

    assert client_for(token).get(ME).status_code == 200

    assert row(token).expires_at > timezone.now() + timedelta(seconds=3500)


# --- list and revoke ------------------------------------------------------------------------

@pytest.mark.django_db
def test_list_shows_my_live_tokens_only(django_assert_max_num_queries):
    me, other = UserFactory(), UserFactory()
    current = services.user_token_create(user=me, name="laptop")
    second = services.user_token_create(user=me, name="phone")
    revoked = services.user_token_create(user=me)
    services.user_token_revoke(user=me, token_id=row(revoked).id)
    expired = services.user_token_create(user=me)
    UserToken.objects.filter(pk=row(expired).pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    services.user_token_create(user=other)
    for _ in range(5):
        services.user_token_create(user=me)

    with django_assert_max_num_queries(6):
        response = client_for(current).get(TOKENS + "?page_size=100")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 7
    ids = [t["id"] for t in body["results"]]
    assert row(revoked).id not in ids and row(expired).id not in ids
    assert {t["id"] for t in body["results"] if t["current"]} == {row(current).id}
    assert set(body["results"][0]) == {"id", "prefix", "name", "created_at", "last_used_at", "expires_at", "current"}
    assert row(second).id in ids
    assert current not in response.content.decode()


@pytest.mark.django_db
def test_revoke_one_token():
    me = UserFactory()
    keep, drop = services.user_token_create(user=me), services.user_token_create(user=me)

    response = client_for(keep).delete(f"{TOKENS}/{row(drop).id}")

    assert response.status_code == 204
    assert_error(client_for(drop).get(ME), 401, "token_revoked")
    assert client_for(keep).get(ME).status_code == 200
    assert SecurityEvent.objects.filter(kind="token_revoked", user=me).count() == 1
    assert_error(client_for(keep).delete(f"{TOKENS}/{row(drop).id}"), 404, "token_not_found")


@pytest.mark.django_db
def test_another_users_token_is_404():
    me, other = UserFactory(), UserFactory()
    theirs = services.user_token_create(user=other)

    assert_error(client_for(services.user_token_create(user=me)).delete(f"{TOKENS}/{row(theirs).id}"), 404,
                 "token_not_found")
    assert client_for(theirs).get(ME).status_code == 200


@pytest.mark.django_db
def test_tokens_need_authentication(api_client):
    assert_error(api_client.get(TOKENS), 401, "not_authenticated")


# --- password change --------------------------------------------------------------------------

@pytest.mark.django_db
def test_password_change_revokes_every_token_and_returns_a_new_one():
    me = UserFactory()
    first, second = services.user_token_create(user=me), services.user_token_create(user=me)

    response = client_for(first).post(PASSWORD, {"current_password": DEFAULT_PASSWORD,
                                                 "new_password": NEW_PASSWORD}, format="json")

    assert response.status_code == 200, response.content
    for old in (first, second):
        assert_error(client_for(old).get(ME), 401, "token_revoked")
    assert client_for(response.json()["token"]).get(ME).status_code == 200
    me.refresh_from_db()
    assert me.check_password(NEW_PASSWORD)
    assert SecurityEvent.objects.filter(kind="password_changed", user=me).count() == 1


@pytest.mark.django_db
def test_password_change_needs_the_current_password():
    me = UserFactory()
    token = services.user_token_create(user=me)
    response = client_for(token).post(PASSWORD, {"current_password": "nope", "new_password": NEW_PASSWORD},
                                      format="json")
    assert_error(response, 400, "invalid_credentials")
    assert client_for(token).get(ME).status_code == 200


@pytest.mark.django_db
def test_a_password_set_any_other_way_ends_the_tokens_too():
    me = UserFactory()
    token = services.user_token_create(user=me)
    me.set_password(NEW_PASSWORD)  # e.g. manage.py changepassword
    me.save()
    assert_error(client_for(token).get(ME), 401, "token_revoked")


@pytest.mark.django_db
def test_admin_password_change_revokes_tokens(client):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-long-enough-123"))
    me = UserFactory()
    token = services.user_token_create(user=me)

    response = client.post(f"/admin/organizations/user/{me.pk}/password/",
                           {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"})

    assert response.status_code == 302, response.content[:2000]
    assert row(token).revoked_at is not None
    assert_error(client_for(token).get(ME), 401, "token_revoked")


# --- open WebSockets ----------------------------------------------------------------------------

def socket(query: str = "", cookie: str | None = None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, f"/ws/{query}", headers=headers)


async def opened(comm: WebsocketCommunicator) -> WebsocketCommunicator:
    connected, _ = await comm.connect(timeout=3)
    assert connected
    assert (await comm.receive_json_from(timeout=3))["type"] == "hello"
    return comm


async def closed_with(comm: WebsocketCommunicator) -> int | None:
    output = await comm.receive_output(timeout=3)
    assert output["type"] == "websocket.close", output
    return output.get("code")


@pytest.mark.django_db(transaction=True)
def test_revoking_a_token_closes_its_sockets_only():
    me = UserFactory()
    revoked, kept = services.user_token_create(user=me), services.user_token_create(user=me)

    async def body():
        doomed = await opened(socket(f"?token={revoked}"))
        survivor = await opened(socket(f"?token={kept}"))

        revoked_id = (await sync_to_async(row)(revoked)).id
        await sync_to_async(services.user_token_revoke)(user=me, token_id=revoked_id)

        assert await closed_with(doomed) == 4401
        await survivor.send_json_to({"type": "ping"})
        assert await survivor.receive_json_from(timeout=3) == {"type": "pong"}
        await survivor.disconnect()
        connected, _ = await socket(f"?token={revoked}").connect(timeout=3)
        assert not connected

    async_to_sync(body)()


@pytest.mark.django_db(transaction=True)
def test_deactivating_a_user_closes_every_socket_cookie_or_token(client):
    me = UserFactory()
    token = services.user_token_create(user=me)
    browser = Client()
    browser.force_login(me)
    name = django_settings.SESSION_COOKIE_NAME
    cookie = f"{name}={browser.cookies[name].value}"
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-long-enough-123"))

    async def body():
        by_token = await opened(socket(f"?token={token}"))
        by_cookie = await opened(socket(cookie=cookie))

        # The admin's change form, unticking "active".
        change = await sync_to_async(client.get)(f"/admin/organizations/user/{me.pk}/change/")
        form = change.context["adminform"].form
        data = {k: v for k, v in form.initial.items() if v is not None and k not in ("password", "groups",
                                                                                       "user_permissions")}
        data.update({"is_active": "", "date_joined_0": me.date_joined.strftime("%Y-%m-%d"),
                     "date_joined_1": me.date_joined.strftime("%H:%M:%S"), "last_login_0": "", "last_login_1": ""})
        data = {k: v for k, v in data.items() if k not in ("date_joined", "last_login", "is_active")}
        response = await sync_to_async(client.post)(f"/admin/organizations/user/{me.pk}/change/", data)
        assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""

        assert await closed_with(by_token) == 4401
        assert await closed_with(by_cookie) == 4401

    async_to_sync(body)()
    me.refresh_from_db()
    assert not me.is_active
    assert SecurityEvent.objects.filter(kind="user_deactivated", user=me).count() == 1


@pytest.mark.django_db(transaction=True)
def test_password_change_closes_open_sockets():
    me = UserFactory()
    token = services.user_token_create(user=me)

    async def body():
        comm = await opened(socket(f"?token={token}"))
        await sync_to_async(services.user_password_change)(user=me, password=NEW_PASSWORD)
        assert await closed_with(comm) == 4401

    async_to_sync(body)()


# --- the hand-written lookups of every request (config.rawrows) --------------------------------

def _fields(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


@pytest.mark.django_db
def test_token_lookup_returns_what_the_orm_does(django_assert_num_queries):
    me = UserFactory(first_name="Zoë", time_zone="Europe/Paris")
    key = services.user_token_create(user=me, name="laptop")
    client_for(key).get(ME)  # the first use writes last_used_at

    with django_assert_num_queries(1):  # the token and its user in one SELECT
        token = services.user_token_resolve(key=key)

    orm = UserToken.objects.select_related("user").get(prefix=key.split("_")[1])
    assert _fields(token) == _fields(orm) and _fields(token.user) == _fields(orm.user)
    assert token.user.pk == me.pk and token.last_used_at.tzinfo is not None
    assert not token._state.adding and token.user.get_username() == me.username


@pytest.mark.django_db
def test_api_key_lookup_returns_what_the_orm_does(django_assert_num_queries):
    from organizations.models import ApiKey

    owner = UserFactory()
    org = services.organization_create(creator=owner, name="Keys")
    row_, key = services.api_key_create(organization=org, name="ci", created_by=owner, scopes=["orgs:read"])
    services.api_key_authenticate(key=key)  # the first use writes last_used_at

    with django_assert_num_queries(1):
        principal = services.api_key_authenticate(key=key)

    assert _fields(principal.api_key) == _fields(ApiKey.objects.get(pk=row_.pk))
    assert principal.api_key.scopes == ["orgs:read"]  # a list (decoded JSON), not its text: `in` is exact
    assert "orgs" not in principal.api_key.scopes


@pytest.mark.django_db
@pytest.mark.parametrize("end", ["revoke", "deactivate", "password"])
def test_every_request_sees_a_token_end_at_once(end):
    me = UserFactory()
    key = services.user_token_create(user=me)
    client = client_for(key)
    assert client.get(ME).status_code == 200

    if end == "revoke":
        UserToken.objects.filter(user=me).update(revoked_at=timezone.now())
    elif end == "deactivate":
        User.objects.filter(pk=me.pk).update(is_active=False)
    else:
        me.set_password(NEW_PASSWORD)
        me.save(update_fields=["password"])

    assert client.get(ME).status_code == 401
