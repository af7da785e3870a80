"""WebSocket authentication: the Django session cookie, or `?token=<user token>`."""
from urllib.parse import parse_qs

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.sessions import CookieMiddleware, SessionMiddleware

from organizations.services import user_token_authenticate


@database_sync_to_async
def _user_from_token(key: str):
    return user_token_authenticate(key=key)


class _TokenOrSessionAuth(AuthMiddleware):
    async def resolve_scope(self, scope):
        token = parse_qs(scope.get("query_string", b"").decode()).get("token", [None])[0]
        if token is not None:
            # A token, even a bad one, is the only credential considered: no silent session fallback.
            from django.contrib.auth.models import AnonymousUser

            scope["user"]._wrapped = (await _user_from_token(token)) or AnonymousUser()
            return
        await super().resolve_scope(scope)


def WebSocketAuthMiddleware(inner):  # noqa: N802  (mirrors channels.auth.AuthMiddlewareStack)
    return CookieMiddleware(SessionMiddleware(_TokenOrSessionAuth(inner)))
