"""WebSocket handshake guard: the Origin header is checked against HERALD_WS_ALLOWED_ORIGINS.

ALLOWED_HOSTS says which Host names this server answers to; it is not a list of sites allowed to
open a socket with a visitor's cookies (and is "*" in development). The allowed origins are an
explicit list of `scheme://host[:port]`; an entry ending in `:*` allows any port of that host
(tests and development, where servers run on free ports). A socket authenticated by the session
cookie must send an allowed Origin: without one, any page could not be told from ours. A client
that authenticates with `?token=` (scripts, other services) may omit Origin; if it sends one, the
Origin must be allowed too. `Origin: null` (sandboxed frames, file://) is never allowed.
"""
from urllib.parse import parse_qs, urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _normalize(origin: str) -> tuple[str, str, str] | None:
    """(scheme, host, port) of an origin or pattern; port "*" for a wildcard; None if malformed."""
    wildcard = origin.endswith(":*")
    try:
        parts = urlsplit(origin[:-2] if wildcard else origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    return parts.scheme, parts.hostname.lower(), "*" if wildcard else str(port or _DEFAULT_PORTS[parts.scheme])


def origin_allowed(origin: str | None, allowed: list[str] | tuple[str, ...]) -> bool:
    if not origin:
        return False
    candidate = _normalize(origin)
    if candidate is None:
        return False
    for pattern in allowed:
        wanted = _normalize(pattern)
        if wanted is None:
            continue
        if wanted[:2] == candidate[:2] and wanted[2] in ("*", candidate[2]):
            return True
    return False


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return None


class OriginGuard:
    """ASGI middleware for the websocket protocol: refuses the handshake (HTTP 403) when the Origin
    is not allowed (see the module docstring)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        origin = _header(scope, b"origin")
        token_auth = "token" in parse_qs(scope.get("query_string", b"").decode("latin1"))
        if origin is None:
            allowed = token_auth
        else:
            allowed = origin_allowed(origin, settings.HERALD_WS_ALLOWED_ORIGINS)
        if not allowed:
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
