"""Test settings: real Postgres and Redis, a Redis database of its own, fast hashing."""
from config.settings.base import *  # noqa: F401,F403
from config.settings.base import CACHES, CHANNEL_LAYERS, HERALD_CHANNELS, HERALD_DAILY_CAPS, env, env_float, env_int

# Tests use their own Redis database so `make run` data is never flushed by a test run.
REDIS_URL = env("TEST_REDIS_URL") or REDIS_URL.rsplit("/", 1)[0] + "/9"  # noqa: F405
CELERY_BROKER_URL = REDIS_URL
CACHES["default"]["LOCATION"] = REDIS_URL
CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [REDIS_URL]
CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = "herald-test:asgi"

# The test process itself is single-threaded; processes the tests start read DB_POOL themselves.
DATABASES["default"].get("OPTIONS", {}).pop("pool", None)  # noqa: F405
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOG_LEVEL = "WARNING"
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
LOGGING["handlers"]["stdout"]["formatter"] = "console"  # noqa: F405
LOGGING["loggers"]["herald"]["level"] = "WARNING"  # noqa: F405
ALLOWED_HOSTS = ["*"]
HERALD_BASE_URL = "http://testserver"
# Stack tests run Daphne on free ports of the loopback address.
HERALD_WS_ALLOWED_ORIGINS = ["http://127.0.0.1", "http://127.0.0.1:*", "http://localhost:*", "http://testserver"]
HERALD_ENCRYPTION_KEYS = ["dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdC0="]
MEDIA_ROOT = env("MEDIA_ROOT") or str(BASE_DIR / ".run" / "test-media")  # noqa: F405
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Daphne started by browser tests serves the static files straight from static/ (no collectstatic).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
# Webhook tests deliver to receivers on loopback over plain HTTP.
HERALD_CHANNELS["webhook"]["OPTIONS"]["allow_http_hosts"] = ["127.0.0.1"]
# Admission control is tested on its own (tests/test_admission.py); the suite runs on a loaded box
# where a queue deadline would refuse ordinary test requests.
WEB_MAX_IN_FLIGHT = env_int("WEB_MAX_IN_FLIGHT", 0)
WEB_MAX_QUEUE_SECONDS = env_float("WEB_MAX_QUEUE_SECONDS", 0)
WEB_MAX_DELIVERY_LAG_SECONDS = env_float("WEB_MAX_DELIVERY_LAG_SECONDS", 0)
# Apprise tests notify a json:// receiver on loopback.
HERALD_CHANNELS["apprise"]["OPTIONS"]["allow_private_hosts"] = ["127.0.0.1"]
# The SMS / push / WhatsApp stack tests send dozens of messages to one member in a day; the daily cap
# itself is tested with its own settings (tests/notifications/test_policy_delivery.py).
HERALD_DAILY_CAPS = {**HERALD_DAILY_CAPS, "sms": 1000, "push": 1000, "whatsapp": 1000}
