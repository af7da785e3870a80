"""Operational endpoints (/healthz, /readyz, /metrics), the OpenAPI schema and docs, JSON 404s."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.conftest import assert_error
from tests.trackers.factories import TrackerFactory
from trackers import services

pytestmark = pytest.mark.django_db

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def test_healthz(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_favicon_redirects_to_the_static_icon(client):
    response = client.get("/favicon.ico")

    assert response.status_code == 302
    assert response["Location"].endswith("favicon.svg")


def test_healthz_needs_no_database(client, django_db_blocker):
    with django_db_blocker.block():
        assert client.get("/healthz").status_code == 200


def test_readyz_all_ok(client):
    response = client.get("/readyz")

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "down": [],
                               "checks": {"postgres": "ok", "redis": "ok", "broker": "ok"}}


def test_readyz_names_redis_and_broker_when_unreachable(client, settings):
    settings.REDIS_URL = UNREACHABLE_REDIS
    settings.CELERY_BROKER_URL = UNREACHABLE_REDIS

    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert sorted(body["down"]) == ["broker", "redis"]
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("down")
    assert body["checks"]["broker"].startswith("down")
    # The reason names an exception class, never a URL with credentials.
    assert "127.0.0.1:1" not in response.content.decode()


def test_readyz_only_broker_down(client, settings):
    settings.CELERY_BROKER_URL = UNREACHABLE_REDIS

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["down"] == ["broker"]


def _counter(text: str, action: str) -> float:
    match = re.search(rf'^herald_tracker_events_total\{{action="{action}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_prometheus_text_counts_committed_events(client, django_capture_on_commit_callbacks,
                                                         monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before["Content-Type"].startswith("text/plain")
    text = before.content.decode()
    assert "# TYPE herald_tracker_events_total counter" in text
    assert "# TYPE herald_delivery_backlog gauge" in text

    tracker = TrackerFactory()
    with django_capture_on_commit_callbacks(execute=True):
        services.tracker_start(tracker_id=tracker.id, actor=None)

    after = client.get("/metrics").content.decode()
    assert _counter(after, "start") == _counter(text, "start") + 1


def test_schema_endpoint_serves_openapi(client):
    response = client.get("/api/schema/?format=json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in ["/api/v1/auth/register", "/api/v1/auth/token", "/api/v1/me", "/api/v1/orgs/",
                 "/api/v1/orgs/{org_id}/", "/api/v1/orgs/{org_id}/members/", "/api/v1/orgs/{org_id}/slack",
                 "/api/v1/orgs/{org_id}/trackers/", "/api/v1/trackers/{tracker_id}/start",
                 "/api/v1/trackers/{tracker_id}/stop", "/api/v1/orgs/{org_id}/events/",
                 "/api/v1/notifications/", "/api/v1/notifications/unread-count",
                 "/api/v1/notifications/{notification_id}/read", "/api/v1/notifications/read-all"]:
        assert path in schema["paths"], path


def test_schema_default_is_yaml(client):
    response = client.get("/api/schema/")

    assert response.status_code == 200
    assert response.content.startswith(b"openapi: 3.")


def test_schema_generates_without_warnings(tmp_path: Path):
    """drf-spectacular's own check: every endpoint documented, no warnings (they mean a wrong schema)."""
    manage = Path(django_settings.BASE_DIR) / "manage.py"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    result = subprocess.run(
        [sys.executable, str(manage), "spectacular", "--fail-on-warn", "--validate",
         "--file", str(tmp_path / "schema.yaml"), "--settings=config.settings.test"],
        capture_output=True, text=True, timeout=120, env=env, cwd=django_settings.BASE_DIR,
    )
    warnings = "\n".join(dict.fromkeys(
        line.split(": ", 1)[-1] for line in result.stderr.splitlines() if "Warning" in line or "Error" in line))
    assert result.returncode == 0, f"drf-spectacular failed:\n{warnings or result.stderr[-3000:]}"


def test_docs_page(client):
    response = client.get("/api/docs/")

    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/nope/", "/api/v1/orgs/abc/"])
def test_unknown_api_path_is_json_404(client, path):
    response = client.get(path)

    body = assert_error(response, 404, "not_found")
    assert body == {"message": "Not found.", "code": "not_found", "extra": {}}


def test_method_not_allowed_is_json_405(client, auth_client, user):
    assert_error(auth_client(user).delete("/api/v1/orgs/"), 405, "method_not_allowed")


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=xx", "multipart/form-data"])
def test_a_broken_multipart_body_is_a_json_400_or_415(auth_client, org_with_members, content_type):
    """Django may reject the body before DRF runs; either way the answer is the one error format."""
    client = auth_client(org_with_members.owner)
    client.raise_request_exception = False
    response = client.generic("POST", f"/api/v1/orgs/{org_with_members.org.id}/trackers/", b"name=abc",
                              content_type=content_type)

    assert response.status_code in (400, 415)
    body = response.json()
    assert set(body) == {"message", "code", "extra"} and body["code"]


def test_other_errors_stay_a_json_500(auth_client, user, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr("organizations.selectors.organization_list_for_user", broken)
    client = auth_client(user)
    client.raise_request_exception = False

    assert_error(client.get("/api/v1/orgs/"), 500, "server_error")
