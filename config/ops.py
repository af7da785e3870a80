"""Operational endpoints: liveness, readiness (Postgres, Redis, broker), Prometheus metrics, favicon."""
import logging
import os

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse
from django.templatetags.static import static
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client import REGISTRY

from config.celery import app
from notifications.delivery.sweeper import BacklogCollector

logger = logging.getLogger("herald.ops")


class _ThisProcess:
    """The default registry of this process, as one collector."""

    def collect(self):
        yield from REGISTRY.collect()
CHECK_TIMEOUT = 2.0


@require_GET
def favicon(request):
    """Resolved per request, not at URL import: without a collected static manifest only this
    redirect degrades (to the unhashed name), instead of every URL failing to load."""
    try:
        target = static("favicon.svg")
    except ValueError:  # ManifestStaticFilesStorage before collectstatic
        target = settings.STATIC_URL + "favicon.svg"
    return HttpResponseRedirect(target)


@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_postgres() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=CHECK_TIMEOUT,
                                  socket_connect_timeout=CHECK_TIMEOUT)
    try:
        client.ping()
    finally:
        client.close()


def _check_broker() -> None:
    with app.connection_for_write(settings.CELERY_BROKER_URL) as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)


CHECKS = {"postgres": _check_postgres, "redis": _check_redis, "broker": _check_broker}


@require_GET
def readyz(request):
    results, down = {}, []
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure means not ready; say which and why
            logger.warning("readiness check failed", extra={"check": name, "error": str(exc)})
            results[name] = f"down: {exc.__class__.__name__}"
            down.append(name)
    status = 503 if down else 200
    return JsonResponse({"status": "down" if down else "ok", "down": down, "checks": results}, status=status)


@require_GET
def metrics(request):
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # every process's counters, from the shared dir
    else:
        registry.register(_ThisProcess())
    registry.register(BacklogCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
