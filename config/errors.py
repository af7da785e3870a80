"""Application errors raised by services; the API layer turns them into {"message","code","extra"}.

Services raise these (never DRF exceptions) so they stay usable from tasks, consumers and admin.
"""
from typing import Any


class ApplicationError(Exception):
    status_code = 400
    default_code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, extra: dict[str, Any] | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.extra = extra or {}
        if status is not None:
            self.status_code = status

    def display(self) -> str:
        """The message, the fields it names and the code, as one line for a browser page (the same
        message and code the API answers)."""
        fields = self.extra.get("fields") if isinstance(self.extra.get("fields"), dict) else {}
        detail = "; ".join(f"{name}: {' '.join(map(str, errs)) if isinstance(errs, list) else errs}"
                           for name, errs in fields.items())
        return f"{self.message}{' (' + detail + ')' if detail else ''} [{self.code}]"


class NotFound(ApplicationError):
    status_code = 404
    default_code = "not_found"


class Conflict(ApplicationError):
    status_code = 409
    default_code = "conflict"


class Forbidden(ApplicationError):
    status_code = 403
    default_code = "permission_denied"


class RateLimited(ApplicationError):
    status_code = 429
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None):
        super().__init__(message, code=code, extra={"retry_after": retry_after})
        self.retry_after = retry_after
