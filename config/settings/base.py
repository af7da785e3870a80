"""Settings shared by every environment. Everything that differs comes from the environment.

Every variable read here is listed, with its default, in README.md ("Configuration").
"""
import os
from pathlib import Path

import dj_database_url
from celery.schedules import crontab  # noqa: F401  (used by periodic task declarations)
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


SECRET_KEY = env("SECRET_KEY", "herald-insecure-development-key-change-me")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in env("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "django_celery_beat",
    "channels",
    "organizations",
    "trackers",
    "notifications",
    "reports",
]

MIDDLEWARE = [
    "config.admission.QueueDeadlineMiddleware",
    "config.middleware.TrustedProxyMiddleware",
    "config.middleware.ApiErrorsAsJsonMiddleware",
    "config.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Django's session, auth and messages middleware, each skipped for an API request that carries
    # a token or an API key (config.middleware.api_credentials_request); CSRF is Django's own.
    "config.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "config.middleware.AuthenticationMiddleware",
    "config.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.middleware.RequestLogMiddleware",
    "config.middleware.DependencyUnavailableMiddleware",
    "config.middleware.PageErrorMiddleware",
    "reports.middleware.ActivityLogMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "organizations.context_processors.navigation",
                "config.context_processors.live_socket",
            ],
        },
    },
]

# --- Backing services -------------------------------------------------------
# `python -m config.backing` resolves these (env, then local servers, then embedded) before
# any process starts; settings only read the result.
DATABASE_URL = env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/herald")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
# Under ASGI every request runs its sync code on its own thread, so persistent per-thread
# connections pile up; psycopg's pool (Django 5.1+) bounds them per process instead. The web
# launcher (config/serve.py) turns it on; Celery workers are one thread per process and keep
# persistent connections (a pool's threads would not survive the prefork fork).
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 16)
if env_bool("DB_POOL", False):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN_SIZE", 1),
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": env_float("DB_POOL_TIMEOUT", 10.0),
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 60)
    # Celery's Django fixup resets the check around every task, so with it a worker pays a
    # `SELECT 1` per task. The delivery workers (partition queues, providers: only deliver_stream,
    # which retries an OperationalError) turn it off: a connection that broke fails the task's first
    # statement, the task is retried, and the fixup drops the connection after the failed task.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env_bool("DB_CONN_HEALTH_CHECKS", True)
# A frozen or partitioned worker host must not hold a stream's row lock for hours: Postgres ends a
# session idle in a transaction after DB_IDLE_IN_TRANSACTION_SECONDS, TCP keepalives notice a
# dead peer, and the fence does not send after DELIVERY_LOCK_BUDGET_SECONDS.
DATABASES["default"].setdefault("OPTIONS", {}).update({
    "keepalives": 1, "keepalives_idle": env_int("DB_KEEPALIVES_IDLE", 30),
    "keepalives_interval": 10, "keepalives_count": 3,
    "options": f"-c idle_in_transaction_session_timeout={env_int('DB_IDLE_IN_TRANSACTION_SECONDS', 60)}s",
})
# Server-side parameter binding (psycopg's Cursor instead of its ClientCursor): the query and its
# parameters travel apart, so psycopg can prepare a statement it sees DB_PREPARE_THRESHOLD times
# on a connection (Postgres then skips parsing and, with a generic plan, planning). psycopg keeps
# at most 100 statements prepared per connection (its prepared_max; least recently used deallocated).
# Prepared statements live in the server session: behind pgbouncer in transaction mode they need
# its prepared-statement support (max_prepared_statements > 0); else set DB_PREPARE_THRESHOLD=
# (empty, nothing prepared) or DB_SERVER_SIDE_BINDING=false. Hand-written SQL casts a parameter
# where Postgres cannot infer its type (see docs/operations.md).
DB_SERVER_SIDE_BINDING = env_bool("DB_SERVER_SIDE_BINDING", True)
if DB_SERVER_SIDE_BINDING:
    _threshold = env("DB_PREPARE_THRESHOLD", "5")
    DATABASES["default"]["OPTIONS"].update({
        "server_side_binding": True,
        "prepare_threshold": int(_threshold) if _threshold.strip() else None,
    })
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "herald:cache",
        "TIMEOUT": 300,
    }
}

# The live feed's layer (config/channel_layer.py). Default: Redis pub/sub, one message per web
# process per event; `capacity` bounds each connection's queue in its process (past it the
# connection is told of the gap and reads the log). CHANNEL_LAYER_BACKEND=
# config.channel_layer.ServerClockRedisChannelLayer: channels-redis' queues, one copy per
# connection in Redis, where `capacity` is per Redis queue, and `expiry` and `group_expiry` apply.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": env("CHANNEL_LAYER_BACKEND") or "config.channel_layer.HeraldPubSubChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            "prefix": "herald:asgi",
            "capacity": env_int("CHANNEL_LAYER_CAPACITY", 1000),
            # Seconds a message waits in a connection's queue, and a connection stays in a group
            # without re-joining (queue layer only). The live consumer notices what expired (see LIVE_*).
            "expiry": env_int("CHANNEL_LAYER_EXPIRY", 60),
            "group_expiry": env_int("CHANNEL_LAYER_GROUP_EXPIRY", 86400),
        },
    }
}

# The live feed (notifications/consumers.py): every LIVE_CHECK_SECONDS each connection re-reads
# its memberships and its organizations' published seq (one query) and fills what the layer lost;
# a gap larger than LIVE_GAP_MAX entries is not replayed but answered with {"type": "resync"}.
# Groups are re-joined every LIVE_GROUP_REFRESH_SECONDS (default: a third of the group expiry).
LIVE_CHECK_SECONDS = env_float("LIVE_CHECK_SECONDS", 5.0)
LIVE_GAP_MAX = env_int("LIVE_GAP_MAX", 1000)
LIVE_GROUP_REFRESH_SECONDS = env_float("LIVE_GROUP_REFRESH_SECONDS",
                                       CHANNEL_LAYERS["default"]["CONFIG"]["group_expiry"] / 3)

# Admission control (config/admission.py): per web process, at most WEB_MAX_IN_FLIGHT HTTP requests
# at once, and none that waited longer than WEB_MAX_QUEUE_SECONDS for the view thread; the excess
# is 503 service_unavailable with Retry-After: WEB_RETRY_AFTER_SECONDS, answered at once. 0: off.
WEB_MAX_IN_FLIGHT = env_int("WEB_MAX_IN_FLIGHT", 16)
WEB_MAX_QUEUE_SECONDS = env_float("WEB_MAX_QUEUE_SECONDS", 0.5)
WEB_RETRY_AFTER_SECONDS = env_int("WEB_RETRY_AFTER_SECONDS", 1)
# ... and while the in-app fan-out delivers entries later than this after they happened, requests
# that write new log entries are refused the same way (extra.reason "backlog"). 0: off.
WEB_MAX_DELIVERY_LAG_SECONDS = env_float("WEB_MAX_DELIVERY_LAG_SECONDS", 1.0)
# A split web tier (config.serve --ws-processes sets these in its children): how many socket processes
# publish their forwarding lag (read by the HTTP processes), and which one this is ("" : none).
WEB_WS_PROCESSES = env_int("WEB_WS_PROCESSES", 0)
WEB_WS_INDEX = env("WEB_WS_INDEX", "")
WEB_LAG_GUARDED_PATHS = [
    r"/api/v1/trackers/\d+/(start|stop)$",
    r"/api/v1/send(/batch)?$",
    r"/api/v1/(trackers|time-entries)/\d+/comments/$",
    r"/trackers/\d+/comments/post$",
]

AUTH_USER_MODEL = "organizations.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Default file storage (report files): a local directory unless STORAGES says otherwise.
MEDIA_ROOT = env("MEDIA_ROOT", str(BASE_DIR / "media"))
MEDIA_URL = "/media/"  # not served: report files are downloaded through the API only

# --- Secrets at rest -----------------------------------------------------------
# Fernet key(s), comma-separated, newest first; old keys still decrypt (rotation).
HERALD_ENCRYPTION_KEYS = [k.strip() for k in (env("HERALD_ENCRYPTION_KEYS", "") or "").split(",") if k.strip()]

# --- REST API ---------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "organizations.authentication.UserTokenAuthentication",
        "organizations.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated",
                                   "organizations.permissions.ApiKeyScopes"],
    "DEFAULT_PAGINATION_CLASS": "config.api.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "config.schema.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["config.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "config.negotiation.ContentNegotiation",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Herald API",
    "DESCRIPTION": "Ordered, rate-limited notifications for organizations that track time together.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Celery -------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL)
# kombu's Redis transport with one client per channel for its synchronous commands (config/broker.py:
# a quarter of send_task's CPU was building a redis.Redis per command); other broker schemes keep kombu's.
CELERY_BROKER_TRANSPORT = "config.broker:Transport" if CELERY_BROKER_URL.startswith("redis://") else None
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 120)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 100)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_DEFAULT_QUEUE = "default"
ORG_QUEUE_PARTITIONS = env_int("ORG_QUEUE_PARTITIONS", 8)
# Sends to external providers (Slack, tracker emails) run on this queue, consumed by a worker with
# several processes (Procfile `providers`), so a slow provider call never pins a concurrency-1
# partition worker and holds up the other organizations of its partition. Order is kept by the
# stream fence, not by the queue.
# Empty: provider sends stay on the org's partition queue.
DELIVERY_PROVIDER_QUEUE = env("DELIVERY_PROVIDER_QUEUE", "providers")
REPORTS_QUEUE = env("REPORTS_QUEUE", "reports")  # long report jobs, consumed by their own worker (Procfile)
CELERY_TASK_QUEUES = [Queue("default"), Queue("maintenance"), Queue(REPORTS_QUEUE)] + [
    Queue(f"org-{k}") for k in range(ORG_QUEUE_PARTITIONS)
] + ([Queue(DELIVERY_PROVIDER_QUEUE)] if DELIVERY_PROVIDER_QUEUE else [])
CELERY_TASK_ROUTES = ("config.routing.route_task",)
# Periodic tasks: declared once here; django-celery-beat's DatabaseScheduler loads them.
CELERY_BEAT_SCHEDULE: dict = {}

# --- Logging ---------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", "INFO")
LOG_FORMAT = env("LOG_FORMAT", "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "ts", "levelname": "level", "name": "logger"},
        },
        "console": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
    },
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "celery": {"level": env("CELERY_LOG_LEVEL", "INFO")},  # keeps the worker's "ready" line
        # One "received" and one "succeeded" line per task cost CPU on every event (the fan-out runs
        # thousands of tasks a second); failures and retries still log at WARNING/ERROR.
        "celery.worker.strategy": {"level": env("CELERY_TASK_LOG_LEVEL", "WARNING")},
        "celery.app.trace": {"level": env("CELERY_TASK_LOG_LEVEL", "WARNING")},
        "herald": {"level": LOG_LEVEL},
    },
}

# --- Herald ---------------------------------------------------------------------------
# Prometheus: with PROMETHEUS_MULTIPROC_DIR set (make run sets it), /metrics aggregates every
# process (web, workers); without it, only the serving process.
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR")

# Rate-limit scopes (notifications.ratelimit): requests per second and burst, per scope key. Scopes
# checked together share a Redis Cluster hash tag: "tag", default the name up to its first dot.
SLACK_API_URL = env("SLACK_API_URL", "https://slack.com/api/")
SLACK_TIMEOUT = env_float("SLACK_TIMEOUT", 5.0)
RATE_LIMIT_HEADROOM = env_float("RATE_LIMIT_HEADROOM", 0.02)
_SLACK_GLOBAL_PER_MINUTE = env_float("SLACK_GLOBAL_PER_MINUTE", 1000)
HERALD_RATE_LIMITS = {
    # Slack's limit is global across every organization Herald serves, counted per minute. A burst
    # of half the headroom (10 at 1000/min) keeps the full rate when a waiting worker wakes a few
    # ms late, while any 60 s window still holds at most rate*(1-headroom)*60 + burst < the limit.
    "slack.global": {"rate": _SLACK_GLOBAL_PER_MINUTE / 60.0,
                     "burst": env_int("SLACK_GLOBAL_BURST",
                                      max(1, int(_SLACK_GLOBAL_PER_MINUTE * RATE_LIMIT_HEADROOM / 2)))},
    # chat.postMessage: about one message per second per channel.
    "slack.channel": {"rate": env_float("SLACK_CHANNEL_PER_SECOND", 1.0),
                      "burst": env_int("SLACK_CHANNEL_BURST", 1)},
}

# --- Channels (notifications.channels.registry) ---------------------------------------------
# name -> backend class and options. Adding a channel is one module plus one entry here.
# OPTIONS: batch_max (entries per request), retry_seconds (how long a failing head is retried
# before it becomes a dead letter; default 24 h), plus the channel's own.
HERALD_CHANNELS = {
    "inapp": {"BACKEND": "notifications.channels.inapp.InAppChannel", "OPTIONS": {"batch_max": 50}},
    "slack": {"BACKEND": "notifications.channels.slack.SlackChannel",
              "OPTIONS": {"batch_max": 50, "retry_seconds": env_float("SLACK_RETRY_SECONDS", 24 * 3600)}},
    "email": {"BACKEND": "notifications.channels.email.EmailChannel",
              "OPTIONS": {"batch_max": 500, "retry_seconds": env_float("EMAIL_RETRY_SECONDS", 24 * 3600)}},
    "webhook": {"BACKEND": "notifications.channels.webhook.WebhookChannel",
                "OPTIONS": {"retry_seconds": env_float("WEBHOOK_RETRY_SECONDS", 24 * 3600),
                            "timeout": env_float("WEBHOOK_TIMEOUT", 10.0),
                            # plain http:// only to these hosts (tests, a local receiver); else https only
                            "allow_http_hosts": [h.strip() for h in (env("WEBHOOK_ALLOW_HTTP_HOSTS", "") or "")
                                                 .split(",") if h.strip()]}},
    # SMS through a Twilio-compatible API, failing over to the secondary (docs/channels.md).
    "sms": {"BACKEND": "notifications.channels.sms.SmsChannel",
            "OPTIONS": {"retry_seconds": env_float("SMS_RETRY_SECONDS", 24 * 3600),
                        "timeout": env_float("SMS_TIMEOUT", 10.0),
                        "rate_per_second": env_float("SMS_PER_SECOND", 10.0), "burst": env_int("SMS_BURST", 10),
                        "recipient_per_minute": env_float("SMS_PER_RECIPIENT_PER_MINUTE", 6.0),
                        "recipient_burst": env_int("SMS_PER_RECIPIENT_BURST", 3),
                        # StatusCallback on every message: Twilio posts sent/delivered/undelivered to
                        # <url>/<provider> (default {HERALD_BASE_URL}/api/v1/callbacks/twilio).
                        "status_callbacks": env_bool("SMS_STATUS_CALLBACKS", True),
                        "status_callback_url": env("SMS_STATUS_CALLBACK_URL", ""),
                        "providers": {
                            provider: {"url": env(f"SMS_{provider.upper()}_URL", "https://api.twilio.com"),
                                       "account_sid": env(f"SMS_{provider.upper()}_ACCOUNT_SID", ""),
                                       "auth_token": env(f"SMS_{provider.upper()}_AUTH_TOKEN", ""),
                                       "from": env(f"SMS_{provider.upper()}_FROM", "")}
                            for provider in ("primary", "secondary")}}},
    # Push through an FCM HTTP v1-compatible API to the devices members register (docs/channels.md).
    "push": {"BACKEND": "notifications.channels.push.PushChannel",
             "OPTIONS": {"retry_seconds": env_float("PUSH_RETRY_SECONDS", 24 * 3600),
                         "timeout": env_float("PUSH_TIMEOUT", 10.0),
                         "url": env("PUSH_FCM_URL", "https://fcm.googleapis.com"),
                         "project_id": env("PUSH_FCM_PROJECT_ID", ""),
                         "access_token": env("PUSH_FCM_ACCESS_TOKEN", ""),
                         "rate_per_second": env_float("PUSH_PER_SECOND", 100.0), "burst": env_int("PUSH_BURST", 50),
                         "device_per_minute": env_float("PUSH_PER_DEVICE_PER_MINUTE", 240.0),
                         "max_devices_per_user": env_int("PUSH_MAX_DEVICES_PER_USER", 20)}},
    # WhatsApp through a Cloud API-compatible endpoint to the member's phone (docs/channels.md).
    "whatsapp": {"BACKEND": "notifications.channels.whatsapp.WhatsAppChannel",
                 "OPTIONS": {"retry_seconds": env_float("WHATSAPP_RETRY_SECONDS", 24 * 3600),
                             "timeout": env_float("WHATSAPP_TIMEOUT", 10.0),
                             "url": env("WHATSAPP_API_URL", "https://graph.facebook.com"),
                             "api_version": env("WHATSAPP_API_VERSION", "21.0"),
                             "phone_number_id": env("WHATSAPP_PHONE_NUMBER_ID", ""),
                             "access_token": env("WHATSAPP_ACCESS_TOKEN", ""),
                             "rate_per_second": env_float("WHATSAPP_PER_SECOND", 80.0),
                             "burst": env_int("WHATSAPP_BURST", 20),
                             "recipient_per_minute": env_float("WHATSAPP_PER_RECIPIENT_PER_MINUTE", 10.0),
                             # Status webhooks (POST /api/v1/callbacks/whatsapp): the Meta app's secret
                             # signs them; the verify token answers the subscription handshake (GET).
                             "app_secret": env("WHATSAPP_APP_SECRET", ""),
                             "webhook_verify_token": env("WHATSAPP_WEBHOOK_VERIFY_TOKEN", "")}},
    # Apprise URLs an organization configures (100+ services), encrypted at rest (docs/channels.md).
    "apprise": {"BACKEND": "notifications.channels.apprise.AppriseChannel",
                "OPTIONS": {"retry_seconds": env_float("APPRISE_RETRY_SECONDS", 24 * 3600),
                            "rate_per_second": env_float("APPRISE_PER_SECOND", 1.0),
                            "burst": env_int("APPRISE_BURST", 5),
                            # json://, xml://, form:// only to public hosts, except these
                            "allow_private_hosts": [h.strip() for h in (env("APPRISE_ALLOW_PRIVATE_HOSTS", "")
                                                                        or "").split(",") if h.strip()]}},
}

# Delivery: retries with exponential backoff and jitter until the channel's retry window closes,
# then a dead letter.
# A worker that held a stream's lock longer than this before sending (its process was frozen)
# does not send: the database may have freed the lock (idle_in_transaction_session_timeout).
DELIVERY_LOCK_BUDGET_SECONDS = env_float("DELIVERY_LOCK_BUDGET_SECONDS", 30.0)
# A wait longer than this is not scheduled as a Celery countdown; the sweeper finds the stream
# once its next_attempt_at has passed.
DELIVERY_MAX_RETRY_COUNTDOWN = env_float("DELIVERY_MAX_RETRY_COUNTDOWN", 300.0)
DELIVERY_BACKOFF_BASE = env_float("DELIVERY_BACKOFF_BASE", 0.5)
DELIVERY_BACKOFF_MAX = env_float("DELIVERY_BACKOFF_MAX", 60.0)
DELIVERY_STALL_SECONDS = env_float("DELIVERY_STALL_SECONDS", 10.0)
# Local streams (in-app) are drained by one drain_partition task per wake of an org partition
# (notifications.delivery.kicks): it takes up to DELIVERY_PARTITION_BATCH dirty streams at a time,
# waits up to DELIVERY_PARTITION_LINGER_SECONDS for more kicks before going idle (so a busy
# partition needs no Celery message per event), and hands over to a new task after
# DELIVERY_PARTITION_BUDGET_SECONDS, or as soon as other messages wait on its queue (retry chains).
DELIVERY_PARTITION_BATCH = env_int("DELIVERY_PARTITION_BATCH", 32)
DELIVERY_PARTITION_LINGER_SECONDS = env_float("DELIVERY_PARTITION_LINGER_SECONDS", 2.0)
DELIVERY_PARTITION_BUDGET_SECONDS = env_float("DELIVERY_PARTITION_BUDGET_SECONDS", 10.0)
# The committed runs of a batch of streams are announced (WebSocket publish) together, but none
# waits longer than this after its commit for the rest of the batch (notifications.delivery.drain).
DELIVERY_ANNOUNCE_HOLD_SECONDS = env_float("DELIVERY_ANNOUNCE_HOLD_SECONDS", 0.1)
CELERY_BEAT_SCHEDULE["notifications.sweep_streams"] = {
    "task": "notifications.tasks.sweep_streams",
    "schedule": env_float("SWEEP_INTERVAL_SECONDS", 5.0),
}

# Circuit breakers per provider (notifications.breaker); keys override the defaults there.
# Besides the ratio over the window, `consecutive_failures` in a row open a breaker at any traffic.
HERALD_BREAKERS = {
    "slack": {"window": env_float("SLACK_BREAKER_WINDOW", 30.0), "min_calls": env_int("SLACK_BREAKER_MIN_CALLS", 10),
              "failure_ratio": env_float("SLACK_BREAKER_RATIO", 0.5),
              "open_seconds": env_float("SLACK_BREAKER_OPEN_SECONDS", 5.0),
              "consecutive_failures": env_int("SLACK_BREAKER_CONSECUTIVE", 5)},
}

# Per-provider breakers of the SMS, push and WhatsApp channels (docs/channels.md).
for _breaker in ("sms-primary", "sms-secondary"):
    HERALD_BREAKERS[_breaker] = {
        "window": env_float("SMS_BREAKER_WINDOW", 30.0), "min_calls": env_int("SMS_BREAKER_MIN_CALLS", 5),
        "failure_ratio": env_float("SMS_BREAKER_RATIO", 0.5),
        "open_seconds": env_float("SMS_BREAKER_OPEN_SECONDS", 5.0),
        "max_open_seconds": env_float("SMS_BREAKER_MAX_OPEN_SECONDS", 60.0),
        "consecutive_failures": env_int("SMS_BREAKER_CONSECUTIVE", 5)}

HERALD_BREAKERS["fcm"] = {"open_seconds": env_float("PUSH_BREAKER_OPEN_SECONDS", 5.0),
                          "consecutive_failures": env_int("PUSH_BREAKER_CONSECUTIVE", 5)}
HERALD_BREAKERS["whatsapp"] = {"open_seconds": env_float("WHATSAPP_BREAKER_OPEN_SECONDS", 5.0),
                               "consecutive_failures": env_int("WHATSAPP_BREAKER_CONSECUTIVE", 5)}

# --- Email (notifications.email, notifications.channels.email) ---------------------------------
# Two SMTP providers: mail goes to the primary; when its breaker is open or it fails with a
# connection error, a timeout or a 4xx, the same message goes to the secondary.
EMAIL_PRIMARY_HOST = env("EMAIL_PRIMARY_HOST", "127.0.0.1")
EMAIL_PRIMARY_PORT = env_int("EMAIL_PRIMARY_PORT", 25)
EMAIL_PRIMARY_USER = env("EMAIL_PRIMARY_USER", "")
EMAIL_PRIMARY_PASSWORD = env("EMAIL_PRIMARY_PASSWORD", "")
EMAIL_SECONDARY_HOST = env("EMAIL_SECONDARY_HOST", "127.0.0.1")
EMAIL_SECONDARY_PORT = env_int("EMAIL_SECONDARY_PORT", 2525)
EMAIL_SECONDARY_USER = env("EMAIL_SECONDARY_USER", "")
EMAIL_SECONDARY_PASSWORD = env("EMAIL_SECONDARY_PASSWORD", "")
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0)  # seconds, every socket operation of an SMTP call
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)  # STARTTLS on both providers
EMAIL_FROM = env("EMAIL_FROM", "Herald <herald@localhost>")
DEFAULT_FROM_EMAIL = EMAIL_FROM
# A digest lists at most this many events; the rest are summarized ("… and N more").
EMAIL_DIGEST_MAX_LINES = env_int("EMAIL_DIGEST_MAX_LINES", 50)
EMAIL_MAX_ATTEMPTS = env_int("EMAIL_MAX_ATTEMPTS", 8)  # account emails (OutboundEmail) before a dead letter
EMAIL_OUTBOUND_LANES = env_int("EMAIL_OUTBOUND_LANES", 2)  # drain tasks in flight at once for OutboundEmail
EMAIL_OUTBOUND_LEASE_SECONDS = env_float("EMAIL_OUTBOUND_LEASE_SECONDS", 120.0)
HERALD_RATE_LIMITS["email.api"] = {  # the provider's API limit, shared by every worker and email kind
    "rate": env_float("EMAIL_API_PER_MINUTE", 200) / 60.0, "burst": env_int("EMAIL_API_BURST", 1)}
# Per-recipient caps: at most N messages per calendar day of the recipient's time zone, per
# channel, across organizations and kinds, counted in Postgres (notifications.DailySendCount).
# Every per-recipient channel (email, sms, push, whatsapp) has one: HERALD_DAILY_CAPS names a channel's
# own, else HERALD_DAILY_CAP_DEFAULT; a member may set theirs between 0 and HERALD_DAILY_CAP_MAX.
HERALD_DAILY_CAP_DEFAULT = env_int("HERALD_DAILY_CAP_DEFAULT", 10)
HERALD_DAILY_CAP_MAX = env_int("HERALD_DAILY_CAP_MAX", 100)
HERALD_DAILY_CAPS = {"email": env_int("EMAIL_PER_RECIPIENT_PER_DAY", 10)}
for _provider in ("primary", "secondary"):
    HERALD_BREAKERS[f"smtp-{_provider}"] = {
        "window": env_float("EMAIL_BREAKER_WINDOW", 30.0), "min_calls": env_int("EMAIL_BREAKER_MIN_CALLS", 3),
        "failure_ratio": env_float("EMAIL_BREAKER_RATIO", 0.5),
        "open_seconds": env_float("EMAIL_BREAKER_OPEN_SECONDS", 5.0),
        "max_open_seconds": env_float("EMAIL_BREAKER_MAX_OPEN_SECONDS", 60.0),
        "consecutive_failures": env_int("EMAIL_BREAKER_CONSECUTIVE", 5)}
CELERY_BEAT_SCHEDULE["notifications.sweep_email"] = {
    "task": "notifications.tasks.sweep_email",
    "schedule": env_float("EMAIL_SWEEP_INTERVAL_SECONDS", 30.0),
}

# --- The send API (notifications.send) --------------------------------------------------------
SEND_IDEMPOTENCY_TTL_SECONDS = env_int("SEND_IDEMPOTENCY_TTL_SECONDS", 24 * 3600)  # Stripe's 24 h per key
SEND_MAX_SCHEDULE_DAYS = env_int("SEND_MAX_SCHEDULE_DAYS", 366)  # send_at at most this far ahead
# Priorities: while the organization's log is this many entries ahead of a send's channel streams,
# promotional sends wait (re-checked every SEND_PROMOTIONAL_HOLD_SECONDS) so transactional ones go
# first; past SEND_PROMOTIONAL_SHED_BACKLOG they are shed (status "shed", recorded, never silent).
SEND_PROMOTIONAL_DELAY_BACKLOG = env_int("SEND_PROMOTIONAL_DELAY_BACKLOG", 500)
SEND_PROMOTIONAL_SHED_BACKLOG = env_int("SEND_PROMOTIONAL_SHED_BACKLOG", 5000)
SEND_PROMOTIONAL_HOLD_SECONDS = env_float("SEND_PROMOTIONAL_HOLD_SECONDS", 5.0)
CELERY_BEAT_SCHEDULE["notifications.sweep_due_sends"] = {  # scheduled sends that fell due
    "task": "notifications.tasks.sweep_due_sends",
    "schedule": env_float("SEND_DISPATCH_INTERVAL_SECONDS", 5.0),
}
CELERY_BEAT_SCHEDULE["notifications.publish_due_digests"] = {  # members' digests whose window ended
    "task": "notifications.tasks.publish_due_digests",
    "schedule": env_float("DIGEST_INTERVAL_SECONDS", 30.0),
}
# A provider's status report for a message not recorded yet (it overtook the send's commit) is held
# and applied by this sweep once the message is known; dropped after the wait (then it was not ours).
EARLY_STATUS_REPORT_SWEEP_SECONDS = env_float("EARLY_STATUS_REPORT_SWEEP_SECONDS", 5.0)
EARLY_STATUS_REPORT_WAIT_SECONDS = env_float("EARLY_STATUS_REPORT_WAIT_SECONDS", 600.0)
CELERY_BEAT_SCHEDULE["notifications.sweep_early_status_reports"] = {
    "task": "notifications.tasks.sweep_early_status_reports",
    "schedule": EARLY_STATUS_REPORT_SWEEP_SECONDS,
}
CELERY_BEAT_SCHEDULE["notifications.sweep_idempotency_keys"] = {  # expired Idempotency-Keys
    "task": "notifications.tasks.sweep_idempotency_keys",
    "schedule": crontab(minute=23),  # hourly
}

# --- Reports, stats and the activity log (reports/) --------------------------------------------
REPORT_MAX_RANGE_DAYS = env_int("REPORT_MAX_RANGE_DAYS", 366)  # reports and stats: at most a year
REPORT_RETENTION_DAYS = env_int("REPORT_RETENTION_DAYS", 7)  # report files are deleted after this
REPORT_CHUNK_ROWS = env_int("REPORT_CHUNK_ROWS", 5000)  # rows per fetch from the server-side cursor
REPORT_PROGRESS_SECONDS = env_float("REPORT_PROGRESS_SECONDS", 1.0)  # progress writes and pushes, at most
REPORT_HEARTBEAT_SECONDS = env_float("REPORT_HEARTBEAT_SECONDS", 5.0)
# A running job whose heartbeat is older than this lost its worker: the sweep queues it again.
REPORT_STALE_SECONDS = env_float("REPORT_STALE_SECONDS", 60.0)
# A queued job not picked up for this long is sent again (its message may be lost).
REPORT_RESEND_SECONDS = env_float("REPORT_RESEND_SECONDS", 300.0)
REPORT_MAX_ATTEMPTS = env_int("REPORT_MAX_ATTEMPTS", 3)  # runs (first + restarts) before a job fails
REPORT_TIME_LIMIT = env_int("REPORT_TIME_LIMIT", 3600)  # seconds, hard limit of one run
CELERY_BEAT_SCHEDULE["reports.sweep_reports"] = {
    "task": "reports.tasks.sweep_reports",
    "schedule": env_float("REPORT_SWEEP_INTERVAL_SECONDS", 30.0),
}
CELERY_BEAT_SCHEDULE["reports.purge_expired_reports"] = {
    "task": "reports.tasks.purge_expired_reports",
    "schedule": crontab(minute=17),  # hourly
}
# Stats endpoint: per caller (user or API key) and per organization, across every web process.
HERALD_RATE_LIMITS["stats.caller"] = {"rate": env_float("STATS_PER_MINUTE_PER_CALLER", 30) / 60.0,
                                      "burst": env_int("STATS_BURST_PER_CALLER", 10), "headroom": 0.0}
HERALD_RATE_LIMITS["stats.org"] = {"rate": env_float("STATS_PER_MINUTE_PER_ORG", 120) / 60.0,
                                   "burst": env_int("STATS_BURST_PER_ORG", 30), "headroom": 0.0}
# Activity log of API writes: daily partitions, created ahead and dropped after the retention.
ACTIVITY_PATH_PREFIX = "/api/"
ACTIVITY_RETENTION_DAYS = env_int("ACTIVITY_RETENTION_DAYS", 30)
ACTIVITY_PARTITIONS_AHEAD_DAYS = env_int("ACTIVITY_PARTITIONS_AHEAD_DAYS", 7)
ACTIVITY_PURGE_PAUSE_SECONDS = env_float("ACTIVITY_PURGE_PAUSE_SECONDS", 1.0)  # between two dropped days
# URL kwarg -> model with organization_id: how a write on /trackers/{tracker_id}/... finds its org.
ACTIVITY_OBJECT_MODELS = {"tracker_id": "trackers.Tracker", "entry_id": "trackers.TimeEntry",
                          "comment_id": "trackers.Comment", "report_id": "reports.ReportJob"}
CELERY_BEAT_SCHEDULE["reports.purge_activity_log"] = {
    "task": "reports.tasks.purge_activity_log",
    "schedule": crontab(minute=5, hour=0),  # daily, just after midnight UTC
}
# Search (reports.search): the log of every search, the hourly top-10 served from Redis.
SEARCH_TOP_WINDOW_SECONDS = env_int("SEARCH_TOP_WINDOW_SECONDS", 3600)  # "the last hour"
SEARCH_TOP_CACHE_SECONDS = env_int("SEARCH_TOP_CACHE_SECONDS", 2 * 3600 + 600)  # a value outlives one missed refresh
SEARCH_LOG_RETENTION_DAYS = env_int("SEARCH_LOG_RETENTION_DAYS", 30)
SEARCH_LOG_PURGE_BATCH = env_int("SEARCH_LOG_PURGE_BATCH", 50000)  # log rows deleted per refresh, at most
CELERY_BEAT_SCHEDULE["reports.refresh_search_top"] = {
    "task": "reports.tasks.refresh_search_top",
    "schedule": crontab(minute=0),  # hourly
}

# Retention of notifications and delivery records (notifications/retention.py): archived as
# gzipped JSON lines to the storage below, then removed from the hot tables in small batches.
NOTIFICATION_RETENTION_DAYS = env_int("NOTIFICATION_RETENTION_DAYS", 90)
NOTIFICATION_RETENTION_BATCH = env_int("NOTIFICATION_RETENTION_BATCH", 2000)
NOTIFICATION_RETENTION_PAUSE_SECONDS = env_float("NOTIFICATION_RETENTION_PAUSE_SECONDS", 0.2)
NOTIFICATION_ARCHIVE_STORAGE = env("NOTIFICATION_ARCHIVE_STORAGE", "default")  # a STORAGES alias
NOTIFICATION_ARCHIVE_PREFIX = env("NOTIFICATION_ARCHIVE_PREFIX", "archive")
CELERY_BEAT_SCHEDULE["notifications.archive_notifications"] = {
    "task": "notifications.tasks.archive_notifications",
    "schedule": crontab(minute=35, hour=1),  # daily
}

# --- Security (docs/security.md) ---------------------------------------------------------------
def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in (env(name, default) or "").split(",") if item.strip()]


# Absolute URLs Herald builds (pagination links, invitation links) start with this, never with the
# request's Host header.
HERALD_BASE_URL = env("HERALD_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
# Pages allowed to open /ws/ (config.websocket): exact `scheme://host[:port]`; `:*` = any port.
HERALD_WS_ALLOWED_ORIGINS = env_list("WS_ALLOWED_ORIGINS", HERALD_BASE_URL)
# Where pages open their live socket (config.context_processors): LIVE_WEBSOCKET_URL (`ws[s]://host[:port]`)
# if set, else the page's host on HERALD_WS_PORT (set by config.serve --ws-processes), else the page's origin.
LIVE_WEBSOCKET_URL = env("LIVE_WEBSOCKET_URL", "").rstrip("/")
HERALD_WS_PORT = env("HERALD_WS_PORT", "")
# Reverse proxies (IPs or CIDRs) whose X-Forwarded-For / -Proto / -Host are believed; from any other
# peer those headers are dropped (config.middleware.TrustedProxyMiddleware).
HERALD_TRUSTED_PROXIES = env_list("TRUSTED_PROXIES")
# Request bodies: larger ones are refused with 413 before anything reads them; JSON nested deeper
# than this is refused with 400 (REST bodies and WebSocket frames).
HERALD_MAX_BODY_BYTES = env_int("MAX_BODY_BYTES", 1024 * 1024)
# Routes that take bigger bodies (path regex -> bytes): the bulk postal-code update (100,000 rows),
# a batch send (1,000 sends, 10,000 recipients given as emails, each send with its data).
HERALD_MAX_BODY_BYTES_BY_PATH = {
    r"^/api/v1/orgs/\d+/members/postal-codes$": env_int("BULK_MAX_BODY_BYTES", 32 * 1024 * 1024),
    r"^/api/v1/send/batch$": env_int("SEND_BATCH_MAX_BODY_BYTES", 8 * 1024 * 1024),
}
# Django's own cap is the largest of them: the middleware has already refused anything larger per route.
DATA_UPLOAD_MAX_MEMORY_SIZE = max([HERALD_MAX_BODY_BYTES, *HERALD_MAX_BODY_BYTES_BY_PATH.values()])
HERALD_MAX_JSON_DEPTH = env_int("MAX_JSON_DEPTH", 32)
HERALD_MAX_WS_FRAME_BYTES = env_int("MAX_WS_FRAME_BYTES", 64 * 1024)
# Development only (config.settings.local sets it): where HERALD_ENCRYPTION_KEYS is empty, the
# Slack-token key generated once per checkout in this file, never derived from the public default
# SECRET_KEY. Empty (every other settings module): no key, no start.
HERALD_DEV_ENCRYPTION_KEY_FILE = ""
# Login and registration throttles (organizations.throttle), on the shared Redis limiter. An attempt
# takes one from its client address and one from the account; LOGIN_LOCKOUT_FAILURES failed
# passwords for one account within LOGIN_LOCKOUT_WINDOW_SECONDS lock it for LOGIN_LOCKOUT_SECONDS
# (password logins only: existing tokens and sessions keep working). 429 with Retry-After.
LOGIN_LOCKOUT_FAILURES = env_int("LOGIN_LOCKOUT_FAILURES", 10)
LOGIN_LOCKOUT_WINDOW_SECONDS = env_float("LOGIN_LOCKOUT_WINDOW_SECONDS", 900.0)
LOGIN_LOCKOUT_SECONDS = env_float("LOGIN_LOCKOUT_SECONDS", 900.0)
HERALD_RATE_LIMITS.update({
    "auth.login.ip": {"rate": env_float("LOGIN_PER_IP_PER_MINUTE", 30) / 60.0,
                      "burst": env_int("LOGIN_PER_IP_PER_MINUTE", 30), "headroom": 0.0},
    "auth.login.account": {"rate": env_float("LOGIN_PER_ACCOUNT_PER_MINUTE", 20) / 60.0,
                           "burst": env_int("LOGIN_PER_ACCOUNT_PER_MINUTE", 20), "headroom": 0.0},
    "auth.login.failures": {"rate": LOGIN_LOCKOUT_FAILURES / LOGIN_LOCKOUT_WINDOW_SECONDS,
                            "burst": LOGIN_LOCKOUT_FAILURES, "headroom": 0.0},
    # Never limits by itself (a pass is a millisecond); a lockout pauses it for the account.
    "auth.login.lockout": {"rate": 1000.0, "burst": 1000, "headroom": 0.0},
    "auth.register.ip": {"rate": env_float("REGISTER_PER_IP_PER_HOUR", 20) / 3600.0,
                         "burst": env_int("REGISTER_PER_IP_PER_HOUR", 20), "headroom": 0.0},
})
# User tokens expire this long after their last use (sliding window).
HERALD_TOKEN_TTL_SECONDS = env_int("TOKEN_TTL_SECONDS", 30 * 86400)
# Invitations to join an organization expire after this long.
HERALD_INVITATION_TTL_SECONDS = env_int("INVITATION_TTL_SECONDS", 7 * 86400)

# Notification templates (notifications.templating): the sandbox's budgets.
TEMPLATE_RENDER_TIMEOUT_SECONDS = env_float("TEMPLATE_RENDER_TIMEOUT_SECONDS", 1.0)  # per render of a template
TEMPLATE_MAX_SOURCE_CHARS = env_int("TEMPLATE_MAX_SOURCE_CHARS", 20_000)  # per field, at save
TEMPLATE_MAX_OUTPUT_CHARS = env_int("TEMPLATE_MAX_OUTPUT_CHARS", 100_000)  # per field and per intermediate value
