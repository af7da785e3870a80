"""Benchmark: the per-request cost of small pieces of the web tier's request path, apart (issue 12).

Each piece is called 20,000 times on RequestFactory token requests (POST /api/v1/trackers/1/start,
`Authorization: Token`) under config.settings.production, 7 rounds; prints the median and the best
round in microseconds of thread CPU per request: Django's session + auth + messages middleware and
Herald's (which skip them for such a request: config.middleware.api_credentials_request), DRF's
content negotiation and config.negotiation's, TrustedProxyMiddleware.trusted with no proxy
configured. No database or Redis is touched.

    .venv/bin/python bench/web_pieces.py
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.update(DJANGO_SETTINGS_MODULE="config.settings.production", SECRET_KEY="bench-secret-key-" + "x" * 40,
                  HERALD_ENCRYPTION_KEYS="YmVuY2gtd2ViLWNvc3QtYmVuY2gtd2ViLWNvc3QtYmU=",
                  HERALD_BASE_URL="http://127.0.0.1:8000", ALLOWED_HOSTS="127.0.0.1", SECURE_SSL_REDIRECT="false",
                  LOG_LEVEL="WARNING")
import django  # noqa: E402

django.setup()

from django.contrib.auth.middleware import AuthenticationMiddleware  # noqa: E402
from django.contrib.messages.middleware import MessageMiddleware  # noqa: E402
from django.contrib.sessions.middleware import SessionMiddleware  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from rest_framework.negotiation import DefaultContentNegotiation  # noqa: E402
from rest_framework.renderers import JSONRenderer  # noqa: E402
from rest_framework.request import Request  # noqa: E402

from config import middleware as herald  # noqa: E402
from config.negotiation import ContentNegotiation  # noqa: E402

N, ROUNDS = 20_000, 7
FACTORY = RequestFactory()


def view(request):
    return HttpResponse(b"{}", content_type="application/json")


def chain(classes):
    handler = view
    for cls in reversed(classes):
        handler = cls(handler)
    return handler


def token_requests():
    return [FACTORY.post("/api/v1/trackers/1/start", HTTP_AUTHORIZATION="Token hut_abc_def", HTTP_HOST="127.0.0.1")
            for _ in range(N)]


def drf_requests():
    return [Request(r) for r in token_requests()]


def measure(name: str, fn, make) -> None:
    rounds = []
    for _ in range(ROUNDS):
        batch = make()  # built outside the timed loop
        started = time.thread_time()
        for item in batch:
            fn(item)
        rounds.append((time.thread_time() - started) / len(batch) * 1e6)
    rounds.sort()
    print(f"{name:<34} median {rounds[len(rounds) // 2]:6.1f} us/request (best {rounds[0]:6.1f})", flush=True)


def main() -> None:
    load = os.getloadavg()
    print(f"{N} calls x {ROUNDS} rounds per piece, production settings; load average {load[0]:.2f}")
    measure("no middleware", chain([]), token_requests)
    measure("django session+auth+messages", chain([SessionMiddleware, AuthenticationMiddleware, MessageMiddleware]),
            token_requests)
    measure("herald session+auth+messages",
            chain([herald.SessionMiddleware, herald.AuthenticationMiddleware, herald.MessageMiddleware]),
            token_requests)
    renderers = [JSONRenderer()]
    drf, fast = DefaultContentNegotiation(), ContentNegotiation()
    measure("DRF DefaultContentNegotiation", lambda r: drf.select_renderer(r, renderers), drf_requests)
    measure("config.negotiation", lambda r: fast.select_renderer(r, renderers), drf_requests)
    proxy = herald.TrustedProxyMiddleware(view)
    measure("TrustedProxy.trusted (no proxies)", lambda r: proxy.trusted(r.META["REMOTE_ADDR"]), token_requests)


if __name__ == "__main__":
    main()
