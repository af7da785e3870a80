"""Throttles for password logins and registration, on the one shared Redis limiter
(notifications.ratelimit; scopes `auth.*` in settings.HERALD_RATE_LIMITS).

Checked before the password hash is computed, so a flood of attempts costs a Redis call each, not
~0.3 s of CPU. The account key is the lower-cased username as typed, whether or not such an account
exists (an unknown name is throttled exactly like a known one).
"""
from django.conf import settings

from config.errors import RateLimited
from notifications.ratelimit import Scope, limiter
from organizations.errors import OrganizationsError

LOCKOUT = "auth.login.lockout"


def _account(username: str) -> str:
    return username.strip().lower()[:150]


def login_attempt_check(*, username: str, ip: str | None) -> None:
    """Take one attempt from the client address and the account, or raise RateLimited (429):
    code `account_locked` while a lockout runs, else `rate_limited`."""
    account = _account(username)
    decision = limiter.acquire([Scope("auth.login.ip", ip or "unknown"), Scope("auth.login.account", account),
                                Scope(LOCKOUT, account)])
    if decision.allowed:
        return
    if decision.blocked_by is not None and decision.blocked_by.name == LOCKOUT:
        raise RateLimited("Too many failed logins for this account; try again later.",
                          retry_after=decision.wait, code=OrganizationsError.ACCOUNT_LOCKED)
    raise RateLimited("Too many login attempts; slow down.", retry_after=decision.wait,
                      code=OrganizationsError.RATE_LIMITED)


def login_failure_record(*, username: str) -> float | None:
    """Count a failed password for the account. Returns the lockout in seconds when this failure
    starts one (the caller answers 429 account_locked), else None."""
    account = _account(username)
    if limiter.acquire([Scope("auth.login.failures", account)]).allowed:
        return None
    seconds = float(settings.LOGIN_LOCKOUT_SECONDS)
    limiter.pause(Scope(LOCKOUT, account), seconds)
    return seconds


def registration_check(*, ip: str | None) -> None:
    decision = limiter.acquire([Scope("auth.register.ip", ip or "unknown")])
    if not decision.allowed:
        raise RateLimited("Too many registrations from this address; try again later.", retry_after=decision.wait,
                          code=OrganizationsError.RATE_LIMITED)
