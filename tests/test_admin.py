"""The staff admin: every model is registered, and each changelist (with its search and filters)
and each change page renders for a superuser with real rows in it; non-staff are sent to login."""
import pytest
from django.contrib import admin
from django.urls import reverse

from organizations.models import User
from tests.notifications.factories import (DeliveryFactory, EmailDeferralFactory, NotificationFactory,
                                           NotificationPreferenceFactory)

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    user = User.objects.create_superuser("root", "root@example.com", "pw-long-enough-123")
    client.force_login(user)
    return client


def test_every_project_model_is_registered():
    from django.apps import apps

    ours = [m for m in apps.get_models() if m._meta.app_label in {"organizations", "trackers", "notifications"}]
    missing = [m.__name__ for m in ours if m not in admin.site._registry]
    assert missing == []


def test_every_changelist_search_and_change_page_renders(staff_client, org_with_members):
    NotificationFactory(), DeliveryFactory(), NotificationPreferenceFactory(), EmailDeferralFactory()
    # rows in the tables, so list columns are computed
    for model, model_admin in admin.site._registry.items():
        info = f"{model._meta.app_label}_{model._meta.model_name}"
        url = reverse(f"admin:{info}_changelist")
        assert staff_client.get(url).status_code == 200, url
        if model_admin.search_fields:
            assert staff_client.get(url, {"q": "x"}).status_code == 200, url
        obj = model._default_manager.first()
        if obj is not None:
            change = reverse(f"admin:{info}_change", args=[obj.pk])
            assert staff_client.get(change).status_code == 200, change


def test_non_staff_is_sent_to_login(client, org_with_members):
    client.force_login(org_with_members.member)
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
