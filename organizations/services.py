"""Writes for identity and tenancy. Each runs in one transaction."""
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.text import slugify

from config.errors import ApplicationError, Conflict, Forbidden, NotFound, RateLimited
from config.rawrows import RowReader
from notifications import publish
from trackers.services import tracker_create
from organizations import secrets, throttle
from organizations.errors import OrganizationsError
from organizations.models import (POSTAL_CODE_PATTERN, ApiKey, ApiKeyScope, Invitation, Membership, Organization,
                                  SecurityEvent, SlackIntegration, User, UserToken, default_api_key_scopes)
from organizations.selectors import ApiKeyPrincipal, user_get_by_email

logger = logging.getLogger("herald.organizations")

USER_TOKEN_KIND = "hut"
API_KEY_KIND = "hak"


def _validation(exc: ValidationError, field: str) -> ApplicationError:
    return ApplicationError("Invalid input.", code="validation_error", extra={"fields": {field: exc.messages}})


def security_event_record(*, kind: str, user: User | None = None, organization: Organization | None = None,
                          api_key: ApiKey | None = None, ip: str | None = None, detail: dict | None = None
                          ) -> SecurityEvent:
    """Append to the audit log, in the caller's transaction (so it commits or rolls back with the change)."""
    return SecurityEvent.objects.create(kind=kind, user=user, organization=organization, api_key=api_key,
                                        ip=ip or None, detail=detail or {})


def _push_access_revoked_on_commit(*, user_id: int, token_ids: list[int] | None) -> None:
    """After commit, tell the user's open WebSockets that access ended: those authenticated by one of
    `token_ids` (None: every socket of the user, cookie or token) close themselves. If Redis is down
    then, the sockets are refused at their next connect."""
    publish.push_user(user_id=user_id, message={"type": "access.revoked", "token_ids": token_ids})


_UNAVAILABLE = "That username or email cannot be used; choose another or sign in."


@transaction.atomic
def user_register(*, username: str, email: str, password: str, ip: str | None = None) -> tuple[User, str]:
    """Create a user and a first API token. Returns (user, token shown once).

    A taken username and a taken email get the same answer (409 registration_unavailable), so the
    endpoint does not say which emails have accounts; registrations are throttled per address."""
    throttle.registration_check(ip=ip)
    if (User.objects.filter(username__iexact=username).exists()
            or User.objects.filter(email__iexact=email).exists()):
        raise Conflict(_UNAVAILABLE, code=OrganizationsError.REGISTRATION_UNAVAILABLE)
    candidate = User(username=username, email=email)
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise _validation(exc, "password") from exc
    candidate.set_password(password)
    try:
        with transaction.atomic():
            candidate.save()
    except IntegrityError as exc:  # a concurrent registration won the race
        raise Conflict(_UNAVAILABLE, code=OrganizationsError.REGISTRATION_UNAVAILABLE) from exc
    security_event_record(kind=SecurityEvent.Kind.REGISTERED, user=candidate, ip=ip)
    return candidate, user_token_create(user=candidate, name="registration", ip=ip)


def user_login_check(*, username: str, ip: str | None) -> None:
    """Before a password is checked: 429 when the address or the account is throttled or locked."""
    throttle.login_attempt_check(username=username, ip=ip)


def user_login_failed(*, username: str, ip: str | None, via: str) -> None:
    """Record a wrong password (audit log, lockout counter); raises 429 account_locked when this
    failure locks the account."""
    user = User.objects.filter(username__iexact=username).first()
    security_event_record(kind=SecurityEvent.Kind.LOGIN_FAILED, user=user, ip=ip,
                          detail={"username": username[:150], "via": via})
    locked_for = throttle.login_failure_record(username=username)
    if locked_for is not None:
        security_event_record(kind=SecurityEvent.Kind.LOGIN_LOCKED, user=user, ip=ip,
                              detail={"username": username[:150], "seconds": locked_for})
        raise RateLimited("Too many failed logins for this account; try again later.", retry_after=locked_for,
                          code=OrganizationsError.ACCOUNT_LOCKED)


def user_login_succeeded(*, user: User, ip: str | None, via: str) -> None:
    security_event_record(kind=SecurityEvent.Kind.LOGIN, user=user, ip=ip, detail={"via": via})


def user_login(*, request, username: str, password: str, ip: str | None) -> User:
    """A password login for the API: throttled before the hash is computed, audited either way."""
    user_login_check(username=username, ip=ip)
    user = authenticate(request, username=username, password=password)
    if user is None:
        user_login_failed(username=username, ip=ip, via="api")
        raise ApplicationError("Wrong username or password.", code=OrganizationsError.INVALID_CREDENTIALS,
                               status=400)
    user_login_succeeded(user=user, ip=ip, via="api")
    return user


KEY_CREATE_ATTEMPTS = 3


def _create_with_fresh_prefix(model, kind: str, **fields):
    """Insert a key row under a new random prefix; a prefix already taken (unique index) is drawn
    again instead of surfacing as an IntegrityError. Returns (row, full key)."""
    for attempt in range(KEY_CREATE_ATTEMPTS):
        full, prefix, key_hash = secrets.new_key(kind)
        try:
            with transaction.atomic():
                return model.objects.create(prefix=prefix, key_hash=key_hash, **fields), full
        except IntegrityError:
            if attempt == KEY_CREATE_ATTEMPTS - 1 or model.objects.filter(prefix=prefix).first() is None:
                raise  # not the prefix (or three collisions in a row: something else is wrong)
            logger.warning("key prefix collision; drawing again", extra={"model": model.__name__})
    raise AssertionError("unreachable")


def _password_binding(user: User) -> str:
    """Changes whenever the password does (any path: API, admin, manage.py changepassword)."""
    return hashlib.sha256(user.password.encode()).hexdigest()[:32]


def _token_expiry(now):
    return now + timedelta(seconds=settings.HERALD_TOKEN_TTL_SECONDS)


@transaction.atomic
def user_token_create(*, user: User, name: str = "", ip: str | None = None) -> str:
    token, full = _create_with_fresh_prefix(UserToken, USER_TOKEN_KIND, user=user, name=name[:100],
                                            auth_hash=_password_binding(user),
                                            expires_at=_token_expiry(timezone.now()))
    security_event_record(kind=SecurityEvent.Kind.TOKEN_CREATED, user=user, ip=ip,
                          detail={"token_id": token.id, "prefix": token.prefix, "name": token.name})
    return full


class TokenRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


_TOKEN_ROW, _TOKEN_USER_ROW = RowReader(UserToken, "t"), RowReader(User, "u")
_API_KEY_ROW = RowReader(ApiKey, "k")


def _token_with_user(prefix: str) -> UserToken | None:
    """The token of `prefix` with its user, in one hand-written SELECT (every authenticated
    request runs it: the ORM's version cost 14x the CPU, config.rawrows)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_TOKEN_ROW.columns}, {_TOKEN_USER_ROW.columns} FROM organizations_usertoken t "
                       f"JOIN organizations_user u ON u.id = t.user_id WHERE t.prefix = %s", [prefix])
        row = cursor.fetchone()
    if row is None:
        return None
    token = _TOKEN_ROW.build(row[:len(_TOKEN_ROW)])
    token.user = _TOKEN_USER_ROW.build(row[len(_TOKEN_ROW):])
    return token


def user_token_resolve(*, key: str) -> UserToken:
    """The live token for `key` (with its user), or TokenRejected. Slides the expiry on use.
    Read from the database on every request: a revoked token, a deactivated user or a changed
    password is refused from the next request on."""
    prefix = secrets.split_key(USER_TOKEN_KIND, key)
    token = _token_with_user(prefix) if prefix else None
    if token is None or not secrets.matches(key, token.key_hash) or not token.user.is_active:
        raise TokenRejected(OrganizationsError.INVALID_TOKEN, "Invalid token.")
    if token.revoked_at is not None or (token.auth_hash and not hmac.compare_digest(
            token.auth_hash, _password_binding(token.user))):
        raise TokenRejected(OrganizationsError.TOKEN_REVOKED, "This token has been revoked.")
    now = timezone.now()
    ttl = timedelta(seconds=settings.HERALD_TOKEN_TTL_SECONDS)
    expires_at = token.expires_at or ((token.last_used_at or token.created_at) + ttl)
    if expires_at <= now:
        raise TokenRejected(OrganizationsError.TOKEN_EXPIRED, "This token has expired; sign in again.")
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        token.last_used_at, token.expires_at = now, _token_expiry(now)
        with connection.cursor() as cursor:
            cursor.execute("UPDATE organizations_usertoken SET last_used_at = %s, expires_at = %s WHERE id = %s",
                           [now, token.expires_at, token.pk])
    return token


def user_token_authenticate(*, key: str) -> User | None:
    try:
        return user_token_resolve(key=key).user
    except TokenRejected:
        return None


@transaction.atomic
def user_token_revoke(*, user: User, token_id: int, ip: str | None = None) -> UserToken:
    """Revoke one of the user's own tokens (another user's is 404); its open WebSockets close."""
    token = UserToken.objects.select_for_update().filter(user=user, id=token_id, revoked_at__isnull=True).first()
    if token is None:
        raise NotFound("Token not found.", code=OrganizationsError.TOKEN_NOT_FOUND)
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    security_event_record(kind=SecurityEvent.Kind.TOKEN_REVOKED, user=user, ip=ip,
                          detail={"token_id": token.id, "prefix": token.prefix})
    _push_access_revoked_on_commit(user_id=user.id, token_ids=[token.id])
    return token


def _revoke_all_tokens(*, user: User) -> int:
    return UserToken.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())


@transaction.atomic
def user_password_change(*, user: User, password: str, ip: str | None = None, via: str = "api") -> User:
    """Set a new password; every token of the user is revoked and every open WebSocket closed."""
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise _validation(exc, "new_password") from exc
    user.set_password(password)
    user.save(update_fields=["password"])
    revoked = _revoke_all_tokens(user=user)
    security_event_record(kind=SecurityEvent.Kind.PASSWORD_CHANGED, user=user, ip=ip,
                          detail={"via": via, "tokens_revoked": revoked})
    _push_access_revoked_on_commit(user_id=user.id, token_ids=None)
    return user


@transaction.atomic
def user_deactivate(*, user: User, by: User | None = None) -> User:
    """Deactivate an account: its tokens are revoked and its open WebSockets closed after commit."""
    if user.is_active:
        user.is_active = False
        user.save(update_fields=["is_active"])
    revoked = _revoke_all_tokens(user=user)
    security_event_record(kind=SecurityEvent.Kind.USER_DEACTIVATED, user=user,
                          detail={"by": by.pk if by else None, "tokens_revoked": revoked})
    _push_access_revoked_on_commit(user_id=user.id, token_ids=None)
    return user


PROFILE_FIELDS = ("email", "first_name", "last_name", "time_zone", "locale", "phone", "postal_code", "slack_user_id")


@transaction.atomic
def user_update(*, user: User, data: dict) -> User:
    fields = [f for f in PROFILE_FIELDS if f in data]
    email = data.get("email")
    if email and User.objects.filter(email__iexact=email).exclude(pk=user.pk).exists():
        raise Conflict("An account with that email exists.", code="email_taken")
    changed = [f for f in fields if getattr(user, f) != data[f]]
    old_zone = user.time_zone
    for field in fields:
        setattr(user, field, data[field])
    try:
        # Uniqueness of the email is the explicit check above plus the unique index (409), not a 400 here.
        # A phone stored before numbers were checked as E.164 does not block other changes.
        exclude = ["password", "username"] + ([] if "phone" in data else ["phone"])
        user.full_clean(exclude=exclude, validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        raise ApplicationError("Invalid input.", code="validation_error", extra={"fields": exc.message_dict}) from exc
    if fields:
        try:
            with transaction.atomic():
                user.save(update_fields=fields)
        except IntegrityError as exc:  # the same email claimed by a concurrent update that committed first
            raise Conflict("An account with that email exists.", code="email_taken") from exc
    if "time_zone" in changed:  # scheduled sends at a local time follow the member, in this transaction
        publish.member_time_zone_changed(user_id=user.id, old_zone=old_zone, new_zone=user.time_zone)
    if changed:
        # Queued in this transaction (durable with the change); the send is kicked on commit.
        publish.profile_updated(user=user, changed=changed)
    return user


def _unique_slug(name: str) -> str:
    base = slugify(name)[:50] or "org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def organization_create(*, creator: User, name: str, time_zone: str = "UTC", slug: str | None = None,
                        locale: str = "en") -> Organization:
    """Create an organization, make the creator its owner and give it its first tracker."""

    if slug and Organization.objects.filter(slug=slug).exists():
        raise Conflict("That slug is taken.", code="slug_taken")
    organization = Organization(name=name, time_zone=time_zone, slug=slug or _unique_slug(name), locale=locale)
    try:
        organization.full_clean(validate_unique=False)
    except ValidationError as exc:
        raise ApplicationError("Invalid input.", code="validation_error", extra={"fields": exc.message_dict}) from exc
    for attempt in range(5):  # two organizations of the same name created at once race for the slug
        try:
            with transaction.atomic():
                organization.save()
            break
        except IntegrityError as exc:
            if slug or attempt == 4:
                raise Conflict("That slug is taken.", code="slug_taken") from exc
            organization.slug = _unique_slug(name)
    Membership.objects.create(organization=organization, user=creator, role=Membership.Role.OWNER)
    tracker_create(organization=organization, name="Main tracker")
    publish.organization_created(organization_id=organization.id)
    publish.membership_added(user=creator, organization_id=organization.id)
    return organization


@transaction.atomic
def membership_create(*, organization: Organization, email: str, role: str) -> Membership:
    user = user_get_by_email(email=email)
    if user is None:
        raise NotFound("No user with that email.", code="user_not_found")
    if role == Membership.Role.OWNER:
        raise ApplicationError("Owners are made by transfer, not by invitation.", code="invalid_role")
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise Conflict("That user is already a member.", code="membership_exists")
    try:
        with transaction.atomic():
            membership = Membership.objects.create(organization=organization, user=user, role=role)
            publish.membership_added(user=user, organization_id=organization.id)
            security_event_record(kind=SecurityEvent.Kind.MEMBERSHIP_CREATED, user=user, organization=organization,
                                  detail={"role": role})
    except IntegrityError as exc:
        raise Conflict("That user is already a member.", code="membership_exists") from exc
    publish.membership_changed(user_id=user.pk)
    return membership


@transaction.atomic
def membership_delete(*, membership: Membership) -> None:
    """Remove a member. Their open WebSocket connections leave the organization's group as soon as
    this commits (and within one live check interval if that push is lost)."""
    user_id = membership.user_id
    membership.delete()
    publish.membership_changed(user_id=user_id)


def _membership_for_change(*, organization: Organization, membership_id: int) -> Membership:
    """The member row, locked; another organization's is 404. Owners are made and unmade by a
    transfer, so an owner's row is not changed or removed here (409 owner_protected)."""
    membership = (Membership.objects.select_for_update().select_related("user")
                  .filter(organization=organization, id=membership_id).first())
    if membership is None:
        raise NotFound("Member not found.", code=OrganizationsError.MEMBERSHIP_NOT_FOUND)
    if membership.role == Membership.Role.OWNER:
        raise Conflict("An owner's membership changes only by a transfer of ownership.",
                       code=OrganizationsError.OWNER_PROTECTED)
    return membership


@transaction.atomic
def membership_role_change(*, organization: Organization, membership_id: int, role: str, by: User | None = None,
                           ip: str | None = None) -> Membership:
    """Make a member an admin or an admin a member (audited). Owner is not a role one is given."""
    if role not in (Membership.Role.ADMIN, Membership.Role.MEMBER):
        raise ApplicationError("The role must be admin or member; owners are made by transfer.",
                               code=OrganizationsError.INVALID_ROLE, extra={"fields": {"role": ["admin or member"]}})
    membership = _membership_for_change(organization=organization, membership_id=membership_id)
    if membership.role != role:
        before = membership.role
        membership.role = role
        membership.save(update_fields=["role"])
        security_event_record(kind=SecurityEvent.Kind.ROLE_CHANGED, user=by, organization=organization, ip=ip,
                              detail={"member_id": membership.user_id, "from": before, "to": role})
    return membership


@transaction.atomic
def membership_remove(*, organization: Organization, membership_id: int, by: User | None = None,
                      ip: str | None = None) -> None:
    """Remove a member (audited); their open WebSockets leave the organization on commit."""
    membership = _membership_for_change(organization=organization, membership_id=membership_id)
    security_event_record(kind=SecurityEvent.Kind.MEMBERSHIP_REMOVED, user=by, organization=organization, ip=ip,
                          detail={"member_id": membership.user_id, "role": membership.role})
    membership_delete(membership=membership)


INVITATION_KIND = "hin"


@transaction.atomic
def invitation_create(*, organization: Organization, email: str, role: str, invited_by: User | None = None,
                      api_key: ApiKey | None = None, ip: str | None = None) -> tuple[Invitation, str]:
    """Invite an email address to the organization. Returns (invitation, token shown once).

    The answer does not depend on whether an account with that email exists (nothing to probe);
    inviting the same address again while an invitation is pending renews it (new token, new expiry).
    An API key (scope members:write) may invite members only, never admins."""
    if role == Membership.Role.OWNER:
        raise ApplicationError("Owners are made by transfer, not by invitation.", code=OrganizationsError.INVALID_ROLE)
    if api_key is not None and role != Membership.Role.MEMBER:
        raise Forbidden("An API key can invite members only; an admin invites admins.",
                        code=OrganizationsError.INVALID_ROLE)
    email = email.strip()
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise Conflict("That person is already a member.", code=OrganizationsError.MEMBERSHIP_EXISTS)
    expires_at = timezone.now() + timedelta(seconds=settings.HERALD_INVITATION_TTL_SECONDS)
    full, prefix, key_hash = secrets.new_key(INVITATION_KIND)
    pending = (Invitation.objects.select_for_update()
               .filter(organization=organization, email__iexact=email, status=Invitation.Status.PENDING).first())
    if pending is not None:
        pending.role, pending.prefix, pending.key_hash, pending.expires_at = role, prefix, key_hash, expires_at
        pending.invited_by, pending.invited_by_api_key = invited_by, api_key
        pending.save(update_fields=["role", "prefix", "key_hash", "expires_at", "invited_by", "invited_by_api_key"])
        invitation = pending
    else:
        try:
            with transaction.atomic():
                invitation = Invitation.objects.create(
                    organization=organization, email=email, role=role, prefix=prefix, key_hash=key_hash,
                    expires_at=expires_at, invited_by=invited_by, invited_by_api_key=api_key)
        except IntegrityError as exc:  # the same address invited at the same moment
            raise Conflict("That address was just invited.", code=OrganizationsError.MEMBERSHIP_EXISTS) from exc
    security_event_record(kind=SecurityEvent.Kind.INVITATION_CREATED, user=invited_by, organization=organization,
                          api_key=api_key, ip=ip, detail={"invitation_id": invitation.id, "role": role})
    return invitation, full


@transaction.atomic
def invitation_accept(*, user: User, token: str, ip: str | None = None) -> Membership:
    """The invitee joins: the token must be valid, pending, unexpired, and addressed to the signed-in
    user's email (anyone else gets 404, as for an unknown token). Single use."""
    prefix = secrets.split_key(INVITATION_KIND, token)
    invitation = (Invitation.objects.select_for_update().select_related("organization")
                  .filter(prefix=prefix).first()) if prefix else None
    if (invitation is None or not secrets.matches(token, invitation.key_hash)
            or not user.email or invitation.email.lower() != user.email.lower()):
        raise NotFound("Invitation not found.", code=OrganizationsError.INVITATION_NOT_FOUND)
    if invitation.status != Invitation.Status.PENDING:
        raise Conflict("This invitation has already been used or withdrawn.", code=OrganizationsError.INVITATION_USED)
    if invitation.expires_at <= timezone.now():
        raise ApplicationError("This invitation has expired; ask for a new one.",
                               code=OrganizationsError.INVITATION_EXPIRED, status=410)
    membership = membership_create(organization=invitation.organization, email=user.email, role=invitation.role)
    invitation.status, invitation.accepted_by, invitation.decided_at = (Invitation.Status.ACCEPTED, user,
                                                                        timezone.now())
    invitation.save(update_fields=["status", "accepted_by", "decided_at"])
    security_event_record(kind=SecurityEvent.Kind.INVITATION_ACCEPTED, user=user, organization=invitation.organization,
                          ip=ip, detail={"invitation_id": invitation.id, "role": invitation.role})
    return membership


@transaction.atomic
def invitation_revoke(*, organization: Organization, invitation_id: int, by: User | None = None,
                      api_key: ApiKey | None = None, ip: str | None = None) -> Invitation:
    invitation = (Invitation.objects.select_for_update()
                  .filter(organization=organization, id=invitation_id, status=Invitation.Status.PENDING).first())
    if invitation is None:
        raise NotFound("Invitation not found.", code=OrganizationsError.INVITATION_NOT_FOUND)
    invitation.status, invitation.decided_at = Invitation.Status.REVOKED, timezone.now()
    invitation.save(update_fields=["status", "decided_at"])
    security_event_record(kind=SecurityEvent.Kind.INVITATION_REVOKED, user=by, organization=organization,
                          api_key=api_key, ip=ip, detail={"invitation_id": invitation.id})
    return invitation


def slack_token(*, integration: SlackIntegration) -> str:
    return secrets.decrypt(integration.token_encrypted)


@transaction.atomic
def slack_integration_set(*, organization: Organization, channel: str, token: str) -> SlackIntegration:
    """Store the channel and the encrypted token; Slack delivery starts with the next entry."""
    integration, _ = SlackIntegration.objects.update_or_create(
        organization=organization,
        defaults={"channel": channel, "token_encrypted": secrets.encrypt(token), "enabled": True},
    )
    publish.destination_enabled(organization_id=organization.id, channel="slack")
    return integration


def api_key_create(*, organization: Organization, name: str, created_by: User | None,
                   scopes: list[str] | None = None, ip: str | None = None) -> tuple[ApiKey, str]:
    """A new key of the organization with `scopes` (default DEFAULT_API_KEY_SCOPES: no key or
    membership management). Returns (key row, full key shown once)."""
    chosen = sorted(set(default_api_key_scopes() if scopes is None else scopes))
    unknown = [s for s in chosen if s not in ApiKeyScope.values]
    if unknown:
        raise ApplicationError("Unknown scope.", code=OrganizationsError.INVALID_SCOPE, extra={"scopes": unknown})
    api_key, full = _create_with_fresh_prefix(ApiKey, API_KEY_KIND, organization=organization, name=name,
                                              created_by=created_by, scopes=chosen)
    security_event_record(kind=SecurityEvent.Kind.API_KEY_CREATED, user=created_by, organization=organization,
                          api_key=api_key, ip=ip, detail={"prefix": api_key.prefix, "scopes": chosen})
    return api_key, full


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, by: User | None = None, ip: str | None = None) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        security_event_record(kind=SecurityEvent.Kind.API_KEY_REVOKED, user=by, organization=api_key.organization,
                              api_key=api_key, ip=ip, detail={"prefix": api_key.prefix})
    return api_key


class ApiKeyRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def api_key_authenticate(*, key: str) -> ApiKeyPrincipal:
    """The principal of a live API key (read on every request: a revoked key is refused from the
    next one on), or ApiKeyRejected. One hand-written SELECT (config.rawrows)."""
    prefix = secrets.split_key(API_KEY_KIND, key)
    api_key = None
    if prefix:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {_API_KEY_ROW.columns} FROM organizations_apikey k WHERE k.prefix = %s", [prefix])
            row = cursor.fetchone()
        api_key = _API_KEY_ROW.build(row) if row is not None else None
    if api_key is None or not secrets.matches(key, api_key.key_hash):
        raise ApiKeyRejected("invalid_api_key", "Invalid API key.")
    if api_key.revoked_at is not None:
        raise ApiKeyRejected("revoked_api_key", "This API key has been revoked.")
    now = timezone.now()
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE organizations_apikey SET last_used_at = %s WHERE id = %s", [now, api_key.pk])
    return ApiKeyPrincipal(api_key=api_key)


# --- Bulk postal codes ---------------------------------------------------------------------------

BULK_MAX_ROWS = 100_000
_POSTAL_CODE_RE = re.compile(POSTAL_CODE_PATTERN)
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
_BAD_ROWS_SHOWN = 1000  # extra.rows lists at most this many (extra.bad_rows counts them all)


@dataclass(frozen=True)
class PostalCodesResult:
    matched: int
    unmatched: list[str]  # the emails as submitted, in request order


def postal_code_normalize(raw: str) -> str | None:
    """Trimmed, upper case, inner whitespace as one space; None unless it then matches
    POSTAL_CODE_PATTERN (3-10 of A-Z 0-9 space hyphen, a letter or digit at both ends)."""
    code = " ".join(raw.split()).upper()
    return code if _POSTAL_CODE_RE.match(code) else None


def _postal_code_rows(updates: list) -> tuple[list[str], list[str], list[str]]:
    """(submitted emails, lower-cased emails, normalized codes), or ApplicationError listing every
    bad row by index: nothing is written unless every row is good."""
    submitted, emails, codes, bad, seen = [], [], [], [], {}
    for index, row in enumerate(updates):
        if not (isinstance(row, dict) and row.keys() == {"email", "postal_code"}
                and isinstance(row["email"], str) and isinstance(row["postal_code"], str)):
            bad.append({"index": index, "field": None, "code": OrganizationsError.ROW_MALFORMED,
                        "message": 'Expected {"email": string, "postal_code": string}.'})
            continue
        email = row["email"].strip()
        lowered = email.lower()
        if len(email) > 254 or not _EMAIL_RE.match(email):
            bad.append({"index": index, "field": "email", "code": OrganizationsError.EMAIL_INVALID,
                        "message": "Not an email address."})
        elif lowered in seen:
            bad.append({"index": index, "field": "email", "code": OrganizationsError.EMAIL_DUPLICATED,
                        "message": f"The same email as row {seen[lowered]}."})
        else:
            seen[lowered] = index
        code = postal_code_normalize(row["postal_code"])
        if code is None:
            bad.append({"index": index, "field": "postal_code", "code": OrganizationsError.POSTAL_CODE_INVALID,
                        "message": "3 to 10 characters of A-Z, 0-9, space and hyphen, starting and ending with "
                                   "a letter or digit."})
        submitted.append(email)
        emails.append(lowered)
        codes.append(code)
    if bad:
        raise ApplicationError(f"{len({b['index'] for b in bad})} of {len(updates)} rows are invalid; nothing "
                               "was updated.", code=OrganizationsError.BULK_ROWS_INVALID,
                               extra={"bad_rows": len({b["index"] for b in bad}), "rows": bad[:_BAD_ROWS_SHOWN]})
    return submitted, emails, codes


# One statement: the rows as arrays, matched to the organization's members by lower(email) (the
# user_email_unique_ci index's expression), updated; the positions of the matched rows come back
# as one array (an anti-join against the UPDATE's output in SQL was planned as a nested loop over
# a CTE: quadratic, 20 s at 100,000 rows).
_POSTAL_CODES_SQL = """
WITH updated AS (
    UPDATE organizations_membership m SET postal_code = input.postal_code
    FROM unnest(%(emails)s::text[], %(codes)s::text[]) WITH ORDINALITY AS input(email, postal_code, position),
         organizations_user usr
    WHERE m.organization_id = %(org)s AND usr.id = m.user_id AND lower(usr.email) = input.email
      AND usr.email <> ''
    RETURNING input.position
)
SELECT coalesce(array_agg(position), '{}') FROM updated
"""


@transaction.atomic
def membership_postal_codes_update(*, organization: Organization, updates: list) -> PostalCodesResult:
    """Set the postal code of the organization's members named by email (case-insensitive; other
    organizations' members are never matched), up to BULK_MAX_ROWS rows, in one UPDATE ... FROM
    unnest(...). All or nothing: any invalid row (a malformed email or postal code, an email given
    twice) is a 400 listing the bad rows, and nothing is written."""
    if len(updates) > BULK_MAX_ROWS:
        raise ApplicationError(f"At most {BULK_MAX_ROWS} updates per request.",
                               code=OrganizationsError.BULK_TOO_MANY_ROWS,
                               extra={"max_rows": BULK_MAX_ROWS, "rows": len(updates)})
    submitted, emails, codes = _postal_code_rows(updates)
    with connection.cursor() as cursor:
        cursor.execute(_POSTAL_CODES_SQL, {"emails": emails, "codes": codes, "org": organization.id})
        matched = set(cursor.fetchone()[0])
    unmatched = [email for position, email in enumerate(submitted, start=1) if position not in matched]
    return PostalCodesResult(matched=len(matched), unmatched=unmatched)
