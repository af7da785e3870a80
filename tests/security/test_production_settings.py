"""Production settings (issue 11 #8): `manage.py check --deploy` has nothing to say, the API renders
JSON only, and URLs load without a collected static manifest."""
import json
import os
import subprocess
import sys

from django.conf import settings

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings.production",
    "SECRET_KEY": "7Gq2-production-like-secret-key-with-enough-entropy-x81LmZ0pQvW3",
    "HERALD_ENCRYPTION_KEYS": "dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdC0=",
    "HERALD_BASE_URL": "https://herald.example.com",
    "ALLOWED_HOSTS": "herald.example.com",
}


def run_production(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "WS_ALLOWED", "DEBUG"))}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120,
                          env={**env, **PRODUCTION_ENV}, cwd=settings.BASE_DIR)


def test_check_deploy_is_clean():
    result = run_production("manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout, result.stdout + result.stderr


PROBE = """
import django, json
django.setup()
from django.conf import settings
from django.test import Client
client = Client(HTTP_HOST="herald.example.com")
docs = client.get("/api/v1/orgs/", secure=True, HTTP_ACCEPT="text/html")
missing = client.get("/api/v1/nope", secure=True, HTTP_ACCEPT="text/html")
icon = client.get("/favicon.ico", secure=True)
plain = client.get("/api/v1/orgs/")
print(json.dumps({
    "renderers": settings.REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"],
    "html_accept": [docs.status_code, docs["Content-Type"]],
    "missing": [missing.status_code, missing["Content-Type"]],
    "favicon": icon.status_code,
    "plain_http": [plain.status_code, plain.get("Location")],
    "hsts": docs.get("Strict-Transport-Security"),
}))
"""


def test_production_api_is_json_only_and_https_only():
    result = run_production("-c", PROBE)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["renderers"] == ["rest_framework.renderers.JSONRenderer"]
    # Asking for HTML gets JSON (401 here: no credentials), never the browsable API.
    assert facts["html_accept"][1].startswith("application/json"), facts
    assert facts["missing"] == [404, "application/json"], facts
    assert facts["favicon"] == 302  # no manifest (collectstatic not run) and still no crash
    assert facts["plain_http"] == [301, "https://herald.example.com/api/v1/orgs/"]
    assert facts["hsts"] and "max-age=31536000" in facts["hsts"]
