"""The inbox: list (newest first), unread filter, unread count, read one, read all."""
import pytest
from django.utils import timezone

from notifications.models import Notification
from tests.conftest import assert_error, queries_for
from tests.notifications.factories import NotificationFactory
from tests.organizations.factories import UserFactory

pytestmark = pytest.mark.django_db

LIST = "/api/v1/notifications/"
UNREAD_COUNT = "/api/v1/notifications/unread-count"
READ_ALL = "/api/v1/notifications/read-all"


def read_url(notification_id):
    return f"/api/v1/notifications/{notification_id}/read"


@pytest.fixture
def inbox(user):
    """Four notifications for `user` (the second one read) and two for someone else."""
    mine = NotificationFactory.create_batch(4, recipient=user)
    mine[1].read_at = timezone.now()
    mine[1].save(update_fields=["read_at"])
    NotificationFactory.create_batch(2, recipient=UserFactory())
    return mine


def test_list_newest_first_and_only_mine(auth_client, user, inbox):
    response = auth_client(user).get(LIST)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 4
    assert [n["id"] for n in body["results"]] == [n.id for n in reversed(inbox)]
    assert set(body["results"][0]) == {"id", "organization_id", "seq", "kind", "title", "body", "data",
                                       "created_at", "read_at"}
    assert body["results"][2]["read_at"] is not None


@pytest.mark.parametrize("flag", ["true", "1", "TRUE"])
def test_list_unread_only(auth_client, user, inbox, flag):
    body = auth_client(user).get(f"{LIST}?unread={flag}").json()

    assert [n["id"] for n in body["results"]] == [inbox[3].id, inbox[2].id, inbox[0].id]
    assert all(n["read_at"] is None for n in body["results"])


def test_list_unread_false_lists_all(auth_client, user, inbox):
    assert auth_client(user).get(f"{LIST}?unread=false").json()["count"] == 4


@pytest.mark.parametrize("flag", ["maybe", "2", "tru"])
def test_list_unread_must_be_a_boolean(auth_client, user, inbox, flag):
    body = assert_error(auth_client(user).get(f"{LIST}?unread={flag}"), 400, "validation_error")

    assert "unread" in body["extra"]["fields"]


def test_list_page_size(auth_client, user, inbox):
    body = auth_client(user).get(f"{LIST}?page_size=3").json()

    assert len(body["results"]) == 3
    assert body["next"] is not None
    second = auth_client(user).get(f"{LIST}?page_size=3&page=2").json()
    assert [n["id"] for n in second["results"]] == [inbox[0].id]


def test_list_bad_page_is_404_json(auth_client, user, inbox):
    assert_error(auth_client(user).get(f"{LIST}?page=99"), 404, "not_found")


def test_list_unauthenticated_is_401(api_client):
    assert_error(api_client.get(LIST), 401, "not_authenticated")


def test_list_query_count_does_not_grow(auth_client, user, django_assert_max_num_queries):
    client = auth_client(user)
    NotificationFactory(recipient=user)
    client.get(LIST)
    few, _ = queries_for(django_assert_max_num_queries, 3, lambda: client.get(LIST))

    NotificationFactory.create_batch(25, recipient=user)
    many, response = queries_for(django_assert_max_num_queries, 3, lambda: client.get(LIST))

    assert response.json()["count"] == 26
    assert many == few


def test_unread_count(auth_client, user, inbox):
    response = auth_client(user).get(UNREAD_COUNT)

    assert response.status_code == 200
    assert response.json() == {"unread": 3}


def test_unread_count_unauthenticated_is_401(api_client):
    assert_error(api_client.get(UNREAD_COUNT), 401, "not_authenticated")


def test_read_one(auth_client, user, inbox):
    client = auth_client(user)

    response = client.post(read_url(inbox[0].id))

    assert response.status_code == 200, response.content
    assert response.json()["id"] == inbox[0].id
    assert response.json()["read_at"] is not None
    assert Notification.objects.get(pk=inbox[0].pk).read_at is not None
    assert client.get(UNREAD_COUNT).json() == {"unread": 2}


def test_read_one_twice_keeps_first_read_at(auth_client, user, inbox):
    client = auth_client(user)
    first = client.post(read_url(inbox[0].id)).json()["read_at"]

    second = client.post(read_url(inbox[0].id))

    assert second.status_code == 200
    assert second.json()["read_at"] == first


def test_read_another_users_notification_is_404(auth_client, user, inbox):
    theirs = Notification.objects.exclude(recipient=user).first()

    body = assert_error(auth_client(user).post(read_url(theirs.id)), 404, "notification_not_found")

    assert body["extra"] == {}
    assert Notification.objects.get(pk=theirs.pk).read_at is None


def test_read_nonexistent_is_404(auth_client, user):
    assert_error(auth_client(user).post(read_url(987654321)), 404, "notification_not_found")


def test_read_all(auth_client, user, inbox):
    client = auth_client(user)

    response = client.post(READ_ALL)

    assert response.status_code == 200
    assert response.json() == {"updated": 3}
    assert client.get(UNREAD_COUNT).json() == {"unread": 0}
    # Other users' inboxes are untouched.
    assert Notification.objects.exclude(recipient=user).filter(read_at__isnull=True).count() == 2
    assert client.post(READ_ALL).json() == {"updated": 0}


def test_read_all_unauthenticated_is_401(api_client):
    assert_error(api_client.post(READ_ALL), 401, "not_authenticated")


def test_read_get_is_405(auth_client, user, inbox):
    assert_error(auth_client(user).get(read_url(inbox[0].id)), 405, "method_not_allowed")
