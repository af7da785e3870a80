"""URLs of the preferences endpoints; included under /api/v1/ by config.urls."""
from django.urls import path

from notifications.preferences_apis import OrganizationPreferencesApi, PreferencesApi

urlpatterns = [
    path("me/preferences", PreferencesApi.as_view(), name="me-preferences"),
    path("orgs/<int:org_id>/preferences", OrganizationPreferencesApi.as_view(), name="org-preferences"),
]
