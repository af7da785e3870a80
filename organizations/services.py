"""Writes for identity and tenancy. Each runs in one transaction."""
import logging

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.text import slugify

from config.errors import ApplicationError, Conflict, NotFound
from notifications import publish
from trackers.services import tracker_create
from organizations import secrets
from organizations.models import ApiKey, Membership, Organization, SlackIntegration, User, UserToken
from organizations.selectors import ApiKeyPrincipal, user_get_by_email

logger = logging.getLogger("herald.organizations")

USER_TOKEN_KIND = "hut"
API_KEY_KIND = "hak"


def _validation(exc: ValidationError, field: str) -> ApplicationError:
    return ApplicationError("Invalid input.", code="validation_error", extra={"fields": {field: exc.messages}})


@transaction.atomic
def user_register(*, username: str, email: str, password: str) -> tuple[User, str]:
    """Create a user and a first API token. Returns (user, token shown once)."""
    if User.objects.filter(username__iexact=username).exists():
        raise Conflict("That username is taken.", code="username_taken")
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict("An account with that email exists.", code="email_taken")
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
        raise Conflict("That username or email is taken.", code="username_taken") from exc
    return candidate, user_token_create(user=candidate)


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


def user_token_create(*, user: User) -> str:
    _, full = _create_with_fresh_prefix(UserToken, USER_TOKEN_KIND, user=user)
    return full


def user_token_authenticate(*, key: str) -> User | None:
    prefix = secrets.split_key(USER_TOKEN_KIND, key)
    if prefix is None:
        return None
    token = UserToken.objects.select_related("user").filter(prefix=prefix).first()
    if token is None or not secrets.matches(key, token.key_hash) or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        UserToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


PROFILE_FIELDS = ("email", "first_name", "last_name", "time_zone", "phone", "postal_code", "slack_user_id")


@transaction.atomic
def user_update(*, user: User, data: dict) -> User:
    fields = [f for f in PROFILE_FIELDS if f in data]
    email = data.get("email")
    if email and User.objects.filter(email__iexact=email).exclude(pk=user.pk).exists():
        raise Conflict("An account with that email exists.", code="email_taken")
    changed = [f for f in fields if getattr(user, f) != data[f]]
    for field in fields:
        setattr(user, field, data[field])
    try:
        # Uniqueness of the email is the explicit check above plus the unique index (409), not a 400 here.
        user.full_clean(exclude=["password", "username"], validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        raise ApplicationError("Invalid input.", code="validation_error", extra={"fields": exc.message_dict}) from exc
    if fields:
        try:
            with transaction.atomic():
                user.save(update_fields=fields)
        except IntegrityError as exc:  # the same email claimed by a concurrent update that committed first
            raise Conflict("An account with that email exists.", code="email_taken") from exc
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
def organization_create(*, creator: User, name: str, time_zone: str = "UTC", slug: str | None = None) -> Organization:
    """Create an organization, make the creator its owner and give it its first tracker."""

    if slug and Organization.objects.filter(slug=slug).exists():
        raise Conflict("That slug is taken.", code="slug_taken")
    organization = Organization(name=name, time_zone=time_zone, slug=slug or _unique_slug(name))
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


@transaction.atomic
def api_key_create(*, organization: Organization, name: str, created_by: User | None) -> tuple[ApiKey, str]:
    return _create_with_fresh_prefix(ApiKey, API_KEY_KIND, organization=organization, name=name,
                                     created_by=created_by)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


class ApiKeyRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def api_key_authenticate(*, key: str) -> ApiKeyPrincipal:
    prefix = secrets.split_key(API_KEY_KIND, key)
    api_key = ApiKey.objects.filter(prefix=prefix).first() if prefix else None
    if api_key is None or not secrets.matches(key, api_key.key_hash):
        raise ApiKeyRejected("invalid_api_key", "Invalid API key.")
    if api_key.revoked_at is not None:
        raise ApiKeyRejected("revoked_api_key", "This API key has been revoked.")
    now = timezone.now()
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return ApiKeyPrincipal(api_key=api_key)


def organization_next_seq(*, organization_id: int, count: int = 1) -> int:
    """Reserve `count` sequence numbers; returns the last. Must run inside the caller's transaction:
    the row lock taken by the UPDATE serializes writers per organization and a rollback returns
    the numbers, so the sequence stays gapless."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE organizations_organization SET last_event_seq = last_event_seq + %s, last_event_at = now() "
            "WHERE id = %s RETURNING last_event_seq",
            [count, organization_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise NotFound("Organization not found.", code="organization_not_found")
    return row[0]
