"""config.serve with --ws-processes: HTTP on the web port, /ws/ on a port of its own served by Daphne;
one address for the user: the page names the socket's address, the session cookie signs the socket
in across the ports, and the Origin check still holds (the page's origin, not the socket's)."""
import json
import re

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from organizations.services import organization_create, user_token_create
from tests.organizations.factories import UserFactory
from tests.support.stack import Stack

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]
PASSWORD = "serve-split-pass-123"


@pytest.fixture
def web(transactional_db):
    with Stack() as harness:
        harness.start_web("web", processes=1, ws_processes=1)
        harness.wait_ready(timeout=60)
        with harness.dump_logs_on_failure(lines=40):
            yield harness


def signed_in_cookie(base: str) -> str:
    with httpx.Client(base_url=base, timeout=10) as client:
        form = client.get("/accounts/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        done = client.post("/accounts/login/", data={"username": "split-user", "password": PASSWORD,
                                                     "csrfmiddlewaretoken": csrf})
        assert done.status_code in (302, 303), done.text[:300]
        return "; ".join(f"{k}={v}" for k, v in client.cookies.items())


def test_the_page_names_the_socket_port_and_the_session_signs_the_socket_in(web):
    user = UserFactory(username="split-user")
    user.set_password(PASSWORD)
    user.save()
    organization_create(creator=user, name="Split Co")
    base, ws = web.url("web"), web.ws_url("web")
    assert ws != base.replace("http", "ws")

    page = httpx.get(base + "/accounts/login/", timeout=10)
    assert f'<meta name="herald-live-socket" content="{ws}">' in page.text

    cookie = signed_in_cookie(base)
    with connect(f"{ws}/ws/", origin=base, additional_headers={"Cookie": cookie}, open_timeout=15) as sock:
        hello = json.loads(sock.recv(timeout=15))
    assert hello["type"] == "hello"

    with pytest.raises(InvalidStatus) as refused:  # another site's page, with the visitor's cookie
        connect(f"{ws}/ws/", origin="http://evil.example", additional_headers={"Cookie": cookie},
                open_timeout=15)
    assert refused.value.response.status_code == 403

    with pytest.raises(InvalidStatus) as elsewhere:  # the HTTP port takes no sockets: they would load it
        connect(f"{base.replace('http', 'ws')}/ws/", origin=base, additional_headers={"Cookie": cookie},
                open_timeout=15)
    assert elsewhere.value.response.status_code == 403

    token = user_token_create(user=user)
    with connect(f"{ws}/ws/?token={token}", open_timeout=15) as sock:  # scripts: token, no Origin
        assert json.loads(sock.recv(timeout=15))["type"] == "hello"

    assert httpx.get(base + "/healthz", timeout=10).status_code == 200
