from django.urls import path

from notifications import apis, template_apis
from notifications.channels import registry

urlpatterns = [
    path("orgs/<int:org_id>/events/", apis.OrgLogListApi.as_view(), name="org-events"),
    path("notifications/", apis.NotificationListApi.as_view(), name="notification-list"),
    path("notifications/unread-count", apis.UnreadCountApi.as_view(), name="notification-unread-count"),
    path("notifications/<int:notification_id>/read", apis.NotificationReadApi.as_view(), name="notification-read"),
    path("notifications/read-all", apis.NotificationReadAllApi.as_view(), name="notification-read-all"),
    path("orgs/<int:org_id>/templates/", template_apis.TemplateListCreateApi.as_view(), name="org-templates"),
    path("templates/<int:template_id>", template_apis.TemplateDetailApi.as_view(), name="template-detail"),
    path("templates/<int:template_id>/preview", template_apis.TemplatePreviewApi.as_view(), name="template-preview"),
]
# Endpoints a channel contributes (e.g. an organization's webhook endpoints).
urlpatterns += [pattern for channel in registry.all_channels() for pattern in channel.urlpatterns()]
