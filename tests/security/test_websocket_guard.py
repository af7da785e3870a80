"""/ws/ handshake Origin check (issue 11 #4) and bad frames answered, not crashed on (#5), through the
real ASGI application and Redis channel layer."""
import json
import os
import subprocess
import sys

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client

from config.asgi import application
from config.websocket import origin_allowed
from organizations import services as org_services
from tests.organizations.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

OK_ORIGIN = "http://127.0.0.1"
FERNET_KEY = "dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdC0="


def comm(query: str = "", origin: str | None = OK_ORIGIN, cookie: str | None = None) -> WebsocketCommunicator:
    headers = [(b"host", b"127.0.0.1")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, f"/ws/{query}", headers=headers)


def session_cookie(user) -> str:
    browser = Client()
    browser.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return f"{name}={browser.cookies[name].value}"


def connects(communicator: WebsocketCommunicator) -> bool:
    async def body():
        connected, _ = await communicator.connect(timeout=3)
        if connected:
            hello = await communicator.receive_json_from(timeout=3)
            assert hello["type"] == "hello"
            await communicator.disconnect()
        return connected

    return async_to_sync(body)()


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1.evil.example",
                                    "https://127.0.0.1:8000@evil.example", "file://", "garbage"])
def test_foreign_origin_is_refused_even_with_a_valid_token(origin):
    token = org_services.user_token_create(user=UserFactory())
    assert not connects(comm(f"?token={token}", origin=origin))


def test_foreign_origin_is_refused_for_a_session_cookie():
    assert not connects(comm(origin="http://evil.example", cookie=session_cookie(UserFactory())))


def test_cookie_socket_without_origin_is_refused():
    assert not connects(comm(origin=None, cookie=session_cookie(UserFactory())))


def test_token_socket_without_origin_is_accepted():
    """Scripts and services authenticate with ?token= and send no Origin: no cookie is at stake."""
    token = org_services.user_token_create(user=UserFactory())
    assert connects(comm(f"?token={token}", origin=None))


def test_allowed_origin_with_cookie_is_accepted():
    assert connects(comm(origin=OK_ORIGIN, cookie=session_cookie(UserFactory())))
    assert connects(comm(origin="http://127.0.0.1:43123", cookie=session_cookie(UserFactory())))


def test_origin_matching():
    allowed = ["https://herald.example.com", "http://127.0.0.1:*"]
    assert origin_allowed("https://herald.example.com", allowed)
    assert origin_allowed("https://HERALD.example.com:443", allowed)
    assert origin_allowed("http://127.0.0.1:8000", allowed)
    assert not origin_allowed("http://herald.example.com", allowed)  # scheme differs
    assert not origin_allowed("https://herald.example.com:8443", allowed)
    assert not origin_allowed("https://evil.herald.example.com", allowed)
    assert not origin_allowed("https://127.0.0.1:8000", allowed)
    assert not origin_allowed(None, allowed)
    assert not origin_allowed("null", ["*"])  # "*" is not a pattern


def _settings_of(module: str, env: dict) -> dict:
    code = ("import json, django; from django.conf import settings; "
            "print(json.dumps({'origins': settings.HERALD_WS_ALLOWED_ORIGINS, 'hosts': settings.ALLOWED_HOSTS}))")
    base = {k: v for k, v in os.environ.items() if k not in ("ALLOWED_HOSTS", "WS_ALLOWED_ORIGINS")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**base, "DJANGO_SETTINGS_MODULE": module, **env},
                            cwd=django_settings.BASE_DIR)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("module", ["config.settings.local", "config.settings.test", "config.settings.production"])
def test_every_settings_module_has_an_explicit_origin_list(module):
    values = _settings_of(module, {"SECRET_KEY": "x" * 60, "HERALD_ENCRYPTION_KEYS": FERNET_KEY,
                                   "HERALD_BASE_URL": "https://herald.example.com"})
    origins = values["origins"]
    assert origins and "*" not in origins
    assert not origin_allowed("http://evil.example", origins)
    assert not origin_allowed("null", origins)
    if module == "config.settings.production":
        assert origins == ["https://herald.example.com"]
    if module == "config.settings.local":
        assert "*" not in values["hosts"]


# --- bad frames (#5) ----------------------------------------------------------------------------

@pytest.mark.parametrize(("frame", "code"), [
    ({"bytes_data": b"\x00\xff\x10binary"}, "binary_frame"),
    ({"text_data": "not json {"}, "malformed_frame"),
    ({"text_data": "[1, 2]"}, "malformed_frame"),
    ({"text_data": "[" * 100_000 + "]" * 100_000}, "frame_too_large"),
    ({"text_data": "[" * 5_000 + "]" * 5_000}, "json_too_deep"),
    ({"text_data": '{"a":' * 40 + "1" + "}" * 40}, "json_too_deep"),
    ({"text_data": '{"type": NaN}'}, "malformed_frame"),
])
def test_bad_frame_gets_an_error_and_the_socket_stays_open(frame, code):
    token = org_services.user_token_create(user=UserFactory())

    async def body():
        communicator = comm(f"?token={token}")
        connected, _ = await communicator.connect(timeout=3)
        assert connected
        await communicator.receive_json_from(timeout=3)  # hello
        await communicator.send_to(**frame)
        error = await communicator.receive_json_from(timeout=3)
        assert error["type"] == "error" and error["code"] == code, error
        assert set(error) == {"type", "message", "code", "extra"}
        await communicator.send_json_to({"type": "ping"})
        assert await communicator.receive_json_from(timeout=3) == {"type": "pong"}
        await communicator.disconnect()

    async_to_sync(body)()
