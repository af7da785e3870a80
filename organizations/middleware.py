"""WebSocket authentication: the Django session cookie, or `?token=<user token>`."""
from urllib.parse import parse_qs

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.sessions import CookieMiddleware, SessionMiddleware

from organizations.services import TokenRejected, user_token_resolve


@database_sync_to_async
def _token(key: str):
    try:
        return user_token_resolve(key=key)
    except TokenRejected:
        return None


class _TokenOrSessionAuth(AuthMiddleware):
    async def resolve_scope(self, scope):
        token = parse_qs(scope.get("query_string", b"").decode()).get("token", [None])[0]
        if token is not None:
            # A token, even a bad one, is the only credential considered: no silent session fallback.
            from django.contrib.auth.models import AnonymousUser

            row = await _token(token)
            scope["user"]._wrapped = row.user if row is not None else AnonymousUser()
            # The consumer closes when this token is revoked (access.revoked on the user's group).
            scope["auth_token_id"] = row.id if row is not None else None
            return
        await super().resolve_scope(scope)


def WebSocketAuthMiddleware(inner):  # noqa: N802  (mirrors channels.auth.AuthMiddlewareStack)
    return CookieMiddleware(SessionMiddleware(_TokenOrSessionAuth(inner)))
