"""URL of the preferences endpoint; included under /api/v1/ by config.urls."""
from django.urls import path

from notifications.preferences_apis import PreferencesApi

urlpatterns = [
    path("me/preferences", PreferencesApi.as_view(), name="me-preferences"),
]
