"""Secrets at rest: Fernet encryption for provider tokens, hashing for API keys and user tokens."""
import base64
import hashlib
import hmac
import re
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _fernet() -> MultiFernet:
    keys = list(settings.HERALD_ENCRYPTION_KEYS)
    if not keys:
        if not settings.DEBUG:
            raise ImproperlyConfigured("HERALD_ENCRYPTION_KEYS must be set")
        # Development only: a key derived from SECRET_KEY so `make run` works out of the box.
        keys = [base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest()).decode()]
    return MultiFernet([Fernet(k) for k in keys])


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured("Stored secret cannot be decrypted with HERALD_ENCRYPTION_KEYS") from exc


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(kind: str) -> tuple[str, str, str]:
    """Return (full_key, prefix, hash). Format: `<kind>_<prefix>_<secret>`."""
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    full = f"{kind}_{prefix}_{secret}"
    return full, prefix, hash_secret(full)


def split_key(kind: str, key: str) -> str | None:
    """The prefix of a well-formed key of this kind, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != kind or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
        return None
    return parts[1]


def matches(key: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(key), key_hash)
