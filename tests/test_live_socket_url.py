"""Where pages open their live socket (config.context_processors.live_socket, rendered into the
layout's <meta name="herald-live-socket">, read by static/js/socket.js)."""
import pytest
from django.test import RequestFactory

from config.context_processors import live_socket


def url_for(settings, *, host="herald.test:8000", secure=False, ws_port="", explicit=""):
    settings.ALLOWED_HOSTS = ["*"]
    settings.HERALD_WS_PORT, settings.LIVE_WEBSOCKET_URL = ws_port, explicit
    request = RequestFactory().get("/", HTTP_HOST=host, secure=secure)
    return live_socket(request)["live_websocket_url"]


def test_one_port_the_page_uses_its_own_origin(settings):
    assert url_for(settings) == ""


def test_split_web_tier_the_socket_port_on_the_page_host(settings):
    assert url_for(settings, ws_port="8001") == "ws://herald.test:8001"
    assert url_for(settings, host="herald.test", secure=True, ws_port="8443") == "wss://herald.test:8443"
    assert url_for(settings, host="[::1]:8000", ws_port="8001") == "ws://[::1]:8001"


def test_an_explicit_url_wins(settings):
    assert url_for(settings, ws_port="8001", explicit="wss://live.herald.test") == "wss://live.herald.test"


@pytest.mark.django_db
def test_the_layout_carries_it(client, settings):
    settings.HERALD_WS_PORT = "8001"
    page = client.get("/accounts/login/", HTTP_HOST="testserver:8000")
    assert page.status_code == 200
    assert b'<meta name="herald-live-socket" content="ws://testserver:8001">' in page.content
    assert b"js/socket.js" in page.content
