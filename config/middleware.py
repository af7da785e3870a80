"""Request middleware: proxy-header trust, body size limit, JSON errors under /api/, structured
request logging (one line per request), 503 when a dependency is down, error pages for browser pages,
and the browser-state middleware (session, user, messages) left out of API requests that carry a
token or an API key."""
import ipaddress
import logging
import re
import time
from functools import cached_property

from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as messages_middleware
from django.contrib.sessions import middleware as sessions_middleware
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from rest_framework.authentication import get_authorization_header
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config.api import error_payload
from config.errors import ApplicationError

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
        if not isinstance(exception, ApplicationError):
            return None
        return render(request, "error.html", {"message": exception.message, "code": exception.code},
                      status=exception.status_code)


_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                  "HTTP_X_FORWARDED_PORT", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


class TrustedProxyMiddleware:
    """X-Forwarded-* headers are believed only from HERALD_TRUSTED_PROXIES; from any other peer they are
    dropped before anything (SECURE_PROXY_SSL_HEADER, the login throttle's client address) reads them.
    From a trusted proxy, REMOTE_ADDR becomes the client address it reports: the right-most entry of
    X-Forwarded-For that is not itself a trusted proxy."""

    def __init__(self, get_response):
        self.get_response = get_response

    @cached_property
    def networks(self):
        return [ipaddress.ip_network(p, strict=False) for p in settings.HERALD_TRUSTED_PROXIES]

    def trusted(self, address: str) -> bool:
        if not self.networks:  # none configured (the usual case): no address to parse
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def __call__(self, request):
        meta = request.META
        if not self.trusted(meta.get("REMOTE_ADDR", "")):
            for header in _PROXY_HEADERS:
                meta.pop(header, None)
        else:
            hops = [h.strip() for h in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
            while hops and self.trusted(hops[-1]):
                hops.pop()
            if hops:
                try:
                    meta["REMOTE_ADDR"] = str(ipaddress.ip_address(hops[-1]))
                except ValueError:
                    pass
        return self.get_response(request)


class BodySizeLimitMiddleware:
    """A body larger than HERALD_MAX_BODY_BYTES (or the route's own limit in
    HERALD_MAX_BODY_BYTES_BY_PATH) is refused with 413 before anything parses it (the declared
    Content-Length is checked; a body without one is never read by the JSON parser)."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.by_path = [(re.compile(pattern), limit)
                        for pattern, limit in getattr(settings, "HERALD_MAX_BODY_BYTES_BY_PATH", {}).items()]

    def _limit(self, path: str) -> int:
        for pattern, limit in self.by_path:
            if pattern.match(path):
                return limit
        return settings.HERALD_MAX_BODY_BYTES

    def __call__(self, request):
        declared = request.META.get("CONTENT_LENGTH") or "0"
        limit = self._limit(request.path) if self.by_path and declared != "0" else settings.HERALD_MAX_BODY_BYTES
        try:
            length = int(declared)
        except ValueError:
            return JsonResponse(error_payload("Invalid Content-Length.", "bad_request"), status=400)
        if length > limit:
            response = JsonResponse(error_payload(f"Request body larger than {limit} bytes.", "request_too_large",
                                                  {"max_bytes": limit}), status=413)
            response["Connection"] = "close"
            return response
        return self.get_response(request)


_STATUS_CODES = {400: "bad_request", 401: "not_authenticated", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "request_too_large", 500: "server_error"}


class ApiErrorsAsJsonMiddleware:
    """Under /api/ every error is the JSON error shape, even the ones Django renders as HTML before or
    around a view (DEBUG's technical 404 and 500 pages, a 405 from a plain Django view)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (response.status_code >= 400 and request.path.startswith("/api/")
                and not response.get("Content-Type", "").startswith("application/json")):
            status = response.status_code
            replacement = JsonResponse(
                error_payload(HttpResponse(status=status).reason_phrase + ".", _STATUS_CODES.get(status, "error")),
                status=status)
            for header in ("Retry-After", "WWW-Authenticate", "Allow"):
                if header in response:
                    replacement[header] = response[header]
            return replacement
        return response


# --- browser state, left out of token-authenticated API requests --------------------------------

API_CREDENTIALS_PATH_PREFIX = "/api/v1/"
# The keywords of organizations.authentication's UserTokenAuthentication and ApiKeyAuthentication.
API_CREDENTIALS_KEYWORDS = (b"token", b"bearer")


def api_credentials_request(request) -> bool:
    """A JSON API request (under /api/v1/, not asking for HTML) whose Authorization header names a
    user token or an API key. DRF authenticates it from that header alone: the token and API-key
    authenticators come before SessionAuthentication and each either accepts its keyword's
    credentials or refuses them with 401, so the session, Django's session user and the message
    store are never read (tests/security/test_api_credentials.py pins all of this). CSRF stays as it
    is for every request: it guards session-authenticated calls, which never match here."""
    cached = request.__dict__.get("_herald_api_credentials")
    if cached is None:
        header = get_authorization_header(request).split()
        cached = request.__dict__["_herald_api_credentials"] = bool(
            header and header[0].lower() in API_CREDENTIALS_KEYWORDS
            and request.path.startswith(API_CREDENTIALS_PATH_PREFIX)
            and "text/html" not in request.META.get("HTTP_ACCEPT", ""))  # the browsable API renders pages
    return cached


class _BrowserStateOnly:
    """Passes API-credential requests straight through: a session load and save, a lazy session user
    and a message store per request that nothing would read."""

    def __call__(self, request):
        if api_credentials_request(request):
            return self.get_response(request)
        return super().__call__(request)


class SessionMiddleware(_BrowserStateOnly, sessions_middleware.SessionMiddleware):
    pass


class AuthenticationMiddleware(_BrowserStateOnly, auth_middleware.AuthenticationMiddleware):
    pass


class MessageMiddleware(_BrowserStateOnly, messages_middleware.MessageMiddleware):
    pass
