from django.urls import path

from notifications import apis

urlpatterns = [
    path("notifications/", apis.NotificationListApi.as_view(), name="notification-list"),
    path("notifications/unread-count", apis.UnreadCountApi.as_view(), name="notification-unread-count"),
    path("notifications/<int:notification_id>/read", apis.NotificationReadApi.as_view(), name="notification-read"),
    path("notifications/read-all", apis.NotificationReadAllApi.as_view(), name="notification-read-all"),
]
