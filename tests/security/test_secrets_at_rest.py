"""Secrets at rest (issue 11 #10) and key prefixes (issue 9 #12): the admin shows hash prefixes only,
the development Slack-token key is this checkout's own, prefixes are long and a collision is drawn
again, and two concurrent PATCH /me to one email give 200 + 409, never a 500."""
import base64
import hashlib
import os
import stat
import threading

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.urls import reverse
from rest_framework.test import APIClient

from organizations import secrets, services
from organizations.models import ApiKey, User, UserToken
from tests.organizations.factories import ApiKeyFactory, OrganizationFactory, UserFactory, UserTokenFactory


@pytest.fixture
def staff_client(client, db):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-long-enough-123"))
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("model", [ApiKey, UserToken])
def test_admin_shows_only_a_prefix_of_the_hash(staff_client, model):
    row = ApiKeyFactory(organization=OrganizationFactory()) if model is ApiKey else UserTokenFactory()
    info = f"{model._meta.app_label}_{model._meta.model_name}"

    pages = [staff_client.get(reverse(f"admin:{info}_changelist")),
             staff_client.get(reverse(f"admin:{info}_change", args=[row.pk]))]

    for page in pages:
        assert page.status_code == 200
        html = page.content.decode()
        assert row.key_hash not in html
        assert row.key_hash[:20] not in html
    assert row.key_hash[:8] in pages[1].content.decode()


def test_development_key_is_generated_per_checkout_not_derived_from_secret_key(settings, tmp_path):
    settings.HERALD_ENCRYPTION_KEYS = []
    settings.HERALD_DEV_ENCRYPTION_KEY_FILE = str(tmp_path / ".run" / "dev-encryption-key")

    ciphertext = secrets.encrypt("xoxb-secret")

    key_file = tmp_path / ".run" / "dev-encryption-key"
    assert key_file.exists()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert secrets.decrypt(ciphertext) == "xoxb-secret"
    assert Fernet(key_file.read_text().strip()).decrypt(ciphertext.encode()) == b"xoxb-secret"
    # Whoever knows the public default SECRET_KEY cannot decrypt it.
    derived = base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest())
    with pytest.raises(InvalidToken):
        Fernet(derived).decrypt(ciphertext.encode())
    # Stable: the same key next time (a restart can still read what it stored).
    assert secrets.decrypt(secrets.encrypt("again")) == "again"


def test_another_checkout_gets_another_key(settings, tmp_path):
    settings.HERALD_ENCRYPTION_KEYS = []
    settings.HERALD_DEV_ENCRYPTION_KEY_FILE = str(tmp_path / "a")
    first = secrets.encrypt("x")
    settings.HERALD_DEV_ENCRYPTION_KEY_FILE = str(tmp_path / "b")
    with pytest.raises(Exception):  # noqa: B017  (ImproperlyConfigured: not decryptable with b's key)
        secrets.decrypt(first)


def test_without_keys_or_a_development_key_file_nothing_is_encrypted(settings):
    settings.HERALD_ENCRYPTION_KEYS = []
    settings.HERALD_DEV_ENCRYPTION_KEY_FILE = ""  # every settings module but config.settings.local
    settings.DEBUG = True  # DEBUG alone does not make up a key
    with pytest.raises(ImproperlyConfigured, match="HERALD_ENCRYPTION_KEYS must be set"):
        secrets.encrypt("xoxb-secret")


# --- prefixes (issue 9 #12) -----------------------------------------------------------------

def test_prefixes_carry_64_bits():
    _, prefix, _ = secrets.new_key("hut")
    assert len(prefix) == 16 and int(prefix, 16) >= 0


@pytest.fixture
def colliding_prefix(monkeypatch):
    """The next token_hex() returns `value` once (a prefix already in the table), then real ones."""
    real = secrets.secrets.token_hex
    pending: list[str] = []

    def fake(nbytes=None):
        return pending.pop(0) if pending else real(nbytes)

    monkeypatch.setattr(secrets.secrets, "token_hex", fake)
    return pending


@pytest.mark.django_db
def test_user_token_prefix_collision_draws_again(colliding_prefix):
    user = UserFactory()
    existing = UserToken.objects.get(prefix=services.user_token_create(user=user).split("_")[1])
    colliding_prefix.append(existing.prefix)

    token = services.user_token_create(user=user)

    assert token.split("_")[1] != existing.prefix
    assert services.user_token_authenticate(key=token) == user
    assert UserToken.objects.filter(user=user).count() == 2


@pytest.mark.django_db
def test_api_key_prefix_collision_draws_again(colliding_prefix):
    organization = OrganizationFactory()
    first, _ = services.api_key_create(organization=organization, name="a", created_by=None)
    colliding_prefix.append(first.prefix)

    second, full = services.api_key_create(organization=organization, name="b", created_by=None)

    assert second.prefix != first.prefix
    assert services.api_key_authenticate(key=full).api_key == second


@pytest.mark.django_db
def test_tokens_issued_with_8_char_prefixes_still_authenticate():
    user = UserFactory()
    full = "hut_0123abcd_" + "s" * 43
    UserToken.objects.create(user=user, prefix="0123abcd", key_hash=secrets.hash_secret(full))
    assert services.user_token_authenticate(key=full) == user


# --- concurrent PATCH /me (issue 9 #12) -------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_two_concurrent_patch_me_to_the_same_email_give_200_and_409():
    rounds = 8
    for n in range(rounds):
        users = UserFactory.create_batch(2)
        tokens = [services.user_token_create(user=u) for u in users]
        barrier = threading.Barrier(2)
        statuses, bodies = [], []
        lock = threading.Lock()

        def patch(token):
            client = APIClient(raise_request_exception=False)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
            try:
                barrier.wait(timeout=30)
                response = client.patch("/api/v1/me", {"email": f"same{n}@example.com"}, format="json")
                with lock:
                    statuses.append(response.status_code)
                    bodies.append(response.content[:300])
            finally:
                connection.close()

        threads = [threading.Thread(target=patch, args=(t,)) for t in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert sorted(statuses) == [200, 409], (statuses, bodies)
        assert User.objects.filter(email=f"same{n}@example.com").count() == 1
