"""Structured request logging: one line per request with method, path, status and duration."""
import logging
import time

logger = logging.getLogger("herald.request")


class RequestLogMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        logger.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "user_id": getattr(getattr(request, "user", None), "pk", None),
            },
        )
        return response


class DependencyUnavailableMiddleware:
    """Postgres or Redis unreachable while a view runs: 503 in the one error format, with
    Retry-After, instead of a bare 500. `/readyz` names what is down."""

    RETRY_AFTER_SECONDS = 5

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        from django.db import InterfaceError, OperationalError
        from django.http import JsonResponse

        from config.api import error_payload
        from kombu.exceptions import OperationalError as BrokerError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if isinstance(exception, (OperationalError, InterfaceError)):
            dependency = "database"
        elif isinstance(exception, (RedisConnectionError, RedisTimeoutError, BrokerError)):
            dependency = "redis"
        else:
            return None
        logger.warning("dependency unavailable", extra={"dependency": dependency, "path": request.path,
                                                         "error": str(exception)[:200]})
        response = JsonResponse(error_payload(f"The {dependency} is unavailable; retry shortly.",
                                              "service_unavailable", {"dependency": dependency}), status=503)
        response["Retry-After"] = str(self.RETRY_AFTER_SECONDS)
        return response


class PageErrorMiddleware:
    """An application error escaping a browser page (the API answers its own): the error page with
    the error's status and message, not a 500. Another org's object is a 404 page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        from django.shortcuts import render

        from config.errors import ApplicationError

        if not isinstance(exception, ApplicationError):
            return None
        return render(request, "error.html", {"message": exception.message, "code": exception.code},
                      status=exception.status_code)
