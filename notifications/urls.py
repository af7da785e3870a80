from django.urls import path

from notifications import apis
from notifications.channels import registry

urlpatterns = [
    path("orgs/<int:org_id>/events/", apis.OrgLogListApi.as_view(), name="org-events"),
    path("notifications/", apis.NotificationListApi.as_view(), name="notification-list"),
    path("notifications/unread-count", apis.UnreadCountApi.as_view(), name="notification-unread-count"),
    path("notifications/<int:notification_id>/read", apis.NotificationReadApi.as_view(), name="notification-read"),
    path("notifications/read-all", apis.NotificationReadAllApi.as_view(), name="notification-read-all"),
]
# Endpoints a channel contributes (e.g. an organization's webhook endpoints).
urlpatterns += [pattern for channel in registry.all_channels() for pattern in channel.urlpatterns()]
