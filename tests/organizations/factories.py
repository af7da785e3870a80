"""Factories for identity and tenancy. Keys and tokens go through the real services, so the stored
hash matches and the plaintext (shown once in the product) is kept on the instance as `.plaintext`."""
import factory

from organizations import secrets, services
from organizations.models import ApiKey, Membership, Organization, SlackIntegration, User, UserToken

DEFAULT_PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    password = factory.django.Password(DEFAULT_PASSWORD)
    time_zone = "UTC"


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")
    time_zone = "UTC"


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)
    role = Membership.Role.MEMBER


class ApiKeyFactory(factory.django.DjangoModelFactory):
    """Created through services.api_key_create; `.plaintext` is the full key."""

    class Meta:
        model = ApiKey

    organization = factory.SubFactory(OrganizationFactory)
    name = factory.Sequence(lambda n: f"key {n}")
    created_by = None

    @classmethod
    def _create(cls, model_class, *, organization, name, created_by=None, revoked=False, scopes=None, **kwargs):
        api_key, full = services.api_key_create(organization=organization, name=name, created_by=created_by,
                                                scopes=scopes)
        if revoked:
            services.api_key_revoke(api_key=api_key)
        api_key.plaintext = full
        return api_key


class UserTokenFactory(factory.django.DjangoModelFactory):
    """A user token with a real hash; `.plaintext` is the full `hut_…` token."""

    class Meta:
        model = UserToken

    user = factory.SubFactory(UserFactory)

    @classmethod
    def _create(cls, model_class, *, user, **kwargs):
        full, prefix, key_hash = secrets.new_key(services.USER_TOKEN_KIND)
        token = model_class.objects.create(user=user, prefix=prefix, key_hash=key_hash, **kwargs)
        token.plaintext = full
        return token


SLACK_TEST_TOKEN = "xoxb-0000-test-token"


class SlackIntegrationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SlackIntegration

    organization = factory.SubFactory(OrganizationFactory)
    channel = "#general"
    token_encrypted = factory.LazyFunction(lambda: secrets.encrypt(SLACK_TEST_TOKEN))
    enabled = True
