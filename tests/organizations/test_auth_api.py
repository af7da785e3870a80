"""POST /api/v1/auth/register, POST /api/v1/auth/token, GET|PATCH /api/v1/me."""
import pytest

from organizations.models import User, UserToken
from tests.conftest import assert_error
from tests.organizations.factories import DEFAULT_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

REGISTER = "/api/v1/auth/register"
TOKEN = "/api/v1/auth/token"
ME = "/api/v1/me"

GOOD_PASSWORD = "Tr0ub4dor&3-horse"


def _register(client, **overrides):
    payload = {"username": "alice", "email": "alice@example.com", "password": GOOD_PASSWORD, **overrides}
    return client.post(REGISTER, payload, format="json")


# --- register -------------------------------------------------------------------------------

def test_register_returns_user_and_working_token(api_client):
    response = _register(api_client)

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"user", "token"}
    assert body["user"]["username"] == "alice"
    assert body["user"]["email"] == "alice@example.com"
    assert body["user"]["time_zone"] == "UTC"
    assert "password" not in body["user"]
    assert body["token"].startswith("hut_")
    user = User.objects.get(username="alice")
    assert user.check_password(GOOD_PASSWORD)
    # Only a hash is stored.
    assert not UserToken.objects.filter(key_hash=body["token"]).exists()
    assert body["token"] not in str(list(UserToken.objects.values_list("prefix", "key_hash")))

    api_client.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")
    me = api_client.get(ME)
    assert me.status_code == 200
    assert me.json()["id"] == user.id


def test_register_weak_password_is_400_with_password_field(api_client):
    body = assert_error(_register(api_client, password="123"), 400, "validation_error")

    assert set(body["extra"]["fields"]) == {"password"}
    assert body["extra"]["fields"]["password"]
    assert not User.objects.filter(username="alice").exists()


def test_register_password_similar_to_username_is_rejected(api_client):
    body = assert_error(_register(api_client, username="zanzibar77", password="zanzibar77"), 400,
                        "validation_error")
    assert "password" in body["extra"]["fields"]


@pytest.mark.parametrize("username", ["alice", "ALICE"])
def test_register_duplicate_username_is_409(api_client, username):
    UserFactory(username="alice", email="first@example.com")

    assert_error(_register(api_client, username=username), 409, "registration_unavailable")
    assert User.objects.count() == 1


def test_register_duplicate_email_is_409_case_insensitive(api_client):
    UserFactory(username="first", email="alice@example.com")

    # The same answer as a taken username: registration does not tell which emails have accounts.
    assert_error(_register(api_client, email="Alice@Example.COM"), 409, "registration_unavailable")


def test_register_unknown_field_is_400(api_client):
    body = assert_error(_register(api_client, is_staff=True), 400, "validation_error")

    assert body["extra"]["fields"] == {"is_staff": ["Unknown field."]}
    assert not User.objects.filter(username="alice").exists()


def test_register_malformed_json_is_400_malformed_request(api_client):
    response = api_client.post(REGISTER, data='{"username": "alice", ', content_type="application/json")

    body = assert_error(response, 400, "malformed_request")
    assert body["extra"] == {}


@pytest.mark.parametrize("raw", ["[]", "null", '"alice"', "42"])
def test_register_non_object_json_is_400(api_client, raw):
    assert_error(api_client.post(REGISTER, data=raw, content_type="application/json"), 400, "validation_error")


def test_register_form_encoded_body_is_415(api_client):
    response = api_client.post(REGISTER, data={"username": "alice"})  # multipart, not JSON

    assert_error(response, 415, "unsupported_media_type")


def test_register_overlong_username_is_400(api_client):
    body = assert_error(_register(api_client, username="a" * 151), 400, "validation_error")

    assert "username" in body["extra"]["fields"]


@pytest.mark.parametrize("field,value", [
    ("username", "has space"),
    ("username", ""),
    ("email", "not-an-email"),
    ("email", "a" * 250 + "@example.com"),
    ("password", "x" * 129),
])
def test_register_invalid_field_is_400(api_client, field, value):
    body = assert_error(_register(api_client, **{field: value}), 400, "validation_error")

    assert field in body["extra"]["fields"]


def test_register_missing_fields_are_400(api_client):
    body = assert_error(api_client.post(REGISTER, {}, format="json"), 400, "validation_error")

    assert set(body["extra"]["fields"]) == {"username", "email", "password"}


def test_register_ignores_authorization_header(api_client):
    """Registration is public: a garbage Authorization header must not turn it into a 401."""
    api_client.credentials(HTTP_AUTHORIZATION="Token garbage")

    assert _register(api_client).status_code == 201


# --- token ----------------------------------------------------------------------------------

def test_token_returns_a_new_working_token(api_client):
    user = UserFactory(username="bob")

    response = api_client.post(TOKEN, {"username": "bob", "password": DEFAULT_PASSWORD}, format="json")

    assert response.status_code == 200, response.content
    token = response.json()["token"]
    assert set(response.json()) == {"token"}
    assert token.startswith("hut_")
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api_client.get(ME).json()["id"] == user.id


@pytest.mark.parametrize("username,password", [("bob", "wrong-password"), ("nobody", DEFAULT_PASSWORD)])
def test_token_wrong_credentials_is_400(api_client, username, password):
    UserFactory(username="bob")

    body = assert_error(api_client.post(TOKEN, {"username": username, "password": password}, format="json"),
                        400, "invalid_credentials")
    assert body["extra"] == {}


def test_token_inactive_user_is_refused(api_client):
    UserFactory(username="bob", is_active=False)

    assert_error(api_client.post(TOKEN, {"username": "bob", "password": DEFAULT_PASSWORD}, format="json"),
                 400, "invalid_credentials")


def test_token_unknown_field_is_400(api_client):
    UserFactory(username="bob")
    response = api_client.post(TOKEN, {"username": "bob", "password": DEFAULT_PASSWORD, "otp": "1"}, format="json")

    body = assert_error(response, 400, "validation_error")
    assert body["extra"]["fields"] == {"otp": ["Unknown field."]}


def test_token_missing_password_is_400(api_client):
    body = assert_error(api_client.post(TOKEN, {"username": "bob"}, format="json"), 400, "validation_error")
    assert set(body["extra"]["fields"]) == {"password"}


# --- me -------------------------------------------------------------------------------------

def test_me_returns_profile(auth_client, user):
    response = auth_client(user).get(ME)

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == user.id
    assert body["username"] == user.username
    assert set(body) == {"id", "username", "email", "first_name", "last_name", "time_zone", "locale", "phone",
                         "postal_code", "slack_user_id", "date_joined"}


def test_me_patch_updates_profile(auth_client, user):
    response = auth_client(user).patch(ME, {"time_zone": "Europe/Paris", "phone": "+33 1 23 45 67 89",
                                            "first_name": "Zoé"}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["time_zone"] == "Europe/Paris"
    user.refresh_from_db()
    assert (user.time_zone, user.phone, user.first_name) == ("Europe/Paris", "+33123456789", "Zoé")


def test_me_patch_bad_time_zone_is_400(auth_client, user):
    body = assert_error(auth_client(user).patch(ME, {"time_zone": "Mars/Olympus_Mons"}, format="json"),
                        400, "validation_error")

    assert "time_zone" in body["extra"]["fields"]
    user.refresh_from_db()
    assert user.time_zone == "UTC"


def test_me_patch_unknown_field_is_400(auth_client, user):
    body = assert_error(auth_client(user).patch(ME, {"username": "root", "is_superuser": True}, format="json"),
                        400, "validation_error")

    assert body["extra"]["fields"] == {"is_superuser": ["Unknown field."], "username": ["Unknown field."]}
    user.refresh_from_db()
    assert not user.is_superuser


def test_me_patch_email_of_another_user_is_409(auth_client, user):
    UserFactory(email="taken@example.com")

    assert_error(auth_client(user).patch(ME, {"email": "TAKEN@example.com"}, format="json"), 409, "email_taken")


@pytest.mark.parametrize("phone", ["call me maybe", "0612345678", "+0612345678", "+12345", "+1234567890123456",
                                   "+1 555 01x0 200"])
def test_me_patch_bad_phone_is_400(auth_client, user, phone):
    body = assert_error(auth_client(user).patch(ME, {"phone": phone}, format="json"), 400,
                        "validation_error")
    assert "phone" in body["extra"]["fields"]
    user.refresh_from_db()
    assert user.phone == ""


def test_me_patch_phone_is_stored_in_e164_and_can_be_cleared(auth_client, user):
    client = auth_client(user)
    assert client.patch(ME, {"phone": "+1 (415) 555-0100"}, format="json").json()["phone"] == "+14155550100"
    assert client.patch(ME, {"phone": ""}, format="json").json()["phone"] == ""


def test_me_unauthenticated_is_401(api_client):
    response = api_client.get(ME)

    body = assert_error(response, 401, "not_authenticated")
    assert body["extra"] == {}
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("header", [
    "Token hut_deadbeef_not-a-real-secret",   # well formed, unknown prefix
    "Token garbage",                            # malformed
    "Token a b",                                # wrong arity
    "Token hut_abcd\x00efg_secret",             # NUL in the prefix must not reach Postgres (500)
    "Token ünïcode",                            # not UTF-8 on the wire
])
def test_me_invalid_token_is_401(api_client, header):
    api_client.credentials(HTTP_AUTHORIZATION=header)

    expected = "invalid_token" if header.count(" ") == 1 and header.isascii() else "authentication_failed"
    body = assert_error(api_client.get(ME), 401, expected)
    assert body["extra"] == {}


def test_me_token_with_right_prefix_wrong_secret_is_401(api_client, user):
    from organizations.services import user_token_create

    token = user_token_create(user=user)
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token[:-4]}AAAA")

    assert_error(api_client.get(ME), 401, "invalid_token")


def test_me_token_of_deactivated_user_is_401(auth_client, user):
    client = auth_client(user)
    user.is_active = False
    user.save(update_fields=["is_active"])

    assert_error(client.get(ME), 401, "invalid_token")


def test_me_unauthenticated_patch_is_401(api_client):
    assert_error(api_client.patch(ME, {"time_zone": "UTC"}, format="json"), 401, "not_authenticated")


def test_me_delete_is_405(auth_client, user):
    assert_error(auth_client(user).delete(ME), 405, "method_not_allowed")
