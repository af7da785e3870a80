"""Secrets at rest: Fernet encryption for provider tokens, hashing for API keys and user tokens."""
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def development_key(path: str | Path) -> str:
    """This checkout's own Fernet key, generated on first use (mode 0600). Never derived from
    SECRET_KEY, whose development default is public."""
    path = Path(path)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def _fernet() -> MultiFernet:
    keys = list(settings.HERALD_ENCRYPTION_KEYS)
    if not keys:
        if not settings.HERALD_DEV_ENCRYPTION_KEY_FILE:
            raise ImproperlyConfigured("HERALD_ENCRYPTION_KEYS must be set")
        # Development only (`make run` works out of the box): a key of this checkout under .run/.
        keys = [development_key(settings.HERALD_DEV_ENCRYPTION_KEY_FILE)]
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


PREFIX_HEX_CHARS = 16  # 64 bits: no birthday collision in practice (8 hex chars collided at ~77k keys)


def new_key(kind: str) -> tuple[str, str, str]:
    """Return (full_key, prefix, hash). Format: `<kind>_<prefix>_<secret>`."""
    prefix = secrets.token_hex(PREFIX_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(32)
    full = f"{kind}_{prefix}_{secret}"
    return full, prefix, hash_secret(full)


def split_key(kind: str, key: str) -> str | None:
    """The prefix of a well-formed key of this kind, else None (8 hex chars: keys made before 2026-12)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != kind or not re.fullmatch(r"[0-9a-f]{8}|[0-9a-f]{16}", parts[1]):
        return None
    return parts[1]


def matches(key: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(key), key_hash)
