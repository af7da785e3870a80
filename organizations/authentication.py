"""DRF authentication: `Authorization: Token <user token>` and `Authorization: Bearer <org API key>`."""
from rest_framework import authentication, exceptions

from organizations.services import ApiKeyRejected, TokenRejected, api_key_authenticate, user_token_resolve


def _credentials(request, keyword: str) -> str | None:
    header = authentication.get_authorization_header(request).split()
    if not header or header[0].lower() != keyword.lower().encode():
        return None
    if len(header) != 2:
        raise exceptions.AuthenticationFailed(f"Invalid {keyword} header: expected '{keyword} <key>'.")
    try:
        return header[1].decode()
    except UnicodeError as exc:
        raise exceptions.AuthenticationFailed("Invalid characters in credentials.") from exc


class UserTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        key = _credentials(request, self.keyword)
        if key is None:
            return None
        try:
            token = user_token_resolve(key=key)
        except TokenRejected as exc:
            raise exceptions.AuthenticationFailed(exc.message, code=exc.code) from exc
        return token.user, token  # request.auth: the UserToken row

    def authenticate_header(self, request):
        return self.keyword


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        key = _credentials(request, self.keyword)
        if key is None:
            return None
        try:
            principal = api_key_authenticate(key=key)
        except ApiKeyRejected as exc:
            raise exceptions.AuthenticationFailed(exc.message, code=exc.code) from exc
        return principal, principal.api_key
