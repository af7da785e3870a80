"""`make run`'s settings (config.settings.local): served as production serves it unless DEBUG is
asked for: no debug cursor, no technical error pages, and still working out of the box (the
development encryption key of this checkout)."""
import json
import os
import subprocess
import sys

from django.conf import settings

PROBE = """
import django, json
django.setup()
from django.conf import settings
from django.db import connection
from django.test import Client
from organizations import secrets
missing = Client(HTTP_HOST="127.0.0.1").get("/no-such-page-here/")
page = missing.content.decode()
print(json.dumps({
    "debug": settings.DEBUG,
    "queries_logged": connection.queries_logged,
    "missing": [missing.status_code, "Traceback" in page or "DJANGO_SETTINGS_MODULE" in page],
    "roundtrip": secrets.decrypt(secrets.encrypt("xoxb-local")),
}))
"""


def run_local(tmp_path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEBUG", "HERALD_ENCRYPTION_KEYS"))}
    env.update(DJANGO_SETTINGS_MODULE="config.settings.local",
               HERALD_DEV_ENCRYPTION_KEY_FILE=str(tmp_path / "dev-key"), **extra)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env=env,
                            cwd=settings.BASE_DIR)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_make_run_serves_without_debug_by_default(tmp_path):
    facts = run_local(tmp_path)
    assert facts["debug"] is False
    assert facts["queries_logged"] is False  # no CursorDebugWrapper on every statement
    assert facts["missing"] == [404, False]  # no technical 404 page (URL patterns, settings)
    assert facts["roundtrip"] == "xoxb-local"  # the checkout's own key, without HERALD_ENCRYPTION_KEYS
    assert (tmp_path / "dev-key").exists()


def test_debug_is_there_when_asked_for(tmp_path):
    facts = run_local(tmp_path, DEBUG="true")
    assert facts["debug"] is True
    assert facts["queries_logged"] is True
