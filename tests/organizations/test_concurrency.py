"""Races in identity and tenancy writes, on real Postgres connections."""
import threading

import pytest
from django.db import connection

from config.errors import ApplicationError
from organizations import services
from organizations.models import Membership, Organization, User
from tests.organizations.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _race(count: int, call) -> tuple[list, list, list]:
    """Run call(i) in `count` threads released together; returns (results, app errors, other errors)."""
    barrier = threading.Barrier(count)
    results, app_errors, errors = [], [], []
    lock = threading.Lock()

    def body(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            value = call(index)
        except ApplicationError as exc:
            with lock:
                app_errors.append(exc)
        except Exception as exc:  # asserted empty by callers
            with lock:
                errors.append(repr(exc))
        else:
            with lock:
                results.append(value)
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, app_errors, errors


def test_same_name_orgs_created_at_once_both_succeed():
    """The slug is derived, not chosen: two people naming their org "Acme" at the same moment must
    both get one (acme, acme-2), not a 500 from the unique index."""
    creators = UserFactory.create_batch(2)

    results, app_errors, errors = _race(2, lambda i: services.organization_create(creator=creators[i], name="Acme"))

    assert errors == [], errors
    assert app_errors == []
    assert sorted(o.slug for o in results) == ["acme", "acme-2"]
    assert Membership.objects.filter(role="owner").count() == 2


def test_same_username_registered_at_once_one_wins():
    results, app_errors, errors = _race(
        2, lambda i: services.user_register(username="racer", email=f"racer{i}@example.com",
                                            password="Tr0ub4dor&3-horse"))

    assert errors == [], errors
    assert len(results) == 1
    assert [e.code for e in app_errors] == ["registration_unavailable"]
    assert User.objects.filter(username="racer").count() == 1


def test_same_member_added_at_once_one_wins():
    owner = UserFactory()
    organization = services.organization_create(creator=owner, name="Team")
    UserFactory(email="newcomer@example.com")

    results, app_errors, errors = _race(
        2, lambda i: services.membership_create(organization=organization, email="newcomer@example.com",
                                                role="member"))

    assert errors == [], errors
    assert len(results) == 1
    assert [e.code for e in app_errors] == ["membership_exists"]
    assert Membership.objects.filter(organization=organization).count() == 2
    assert Organization.objects.count() == 1
