"""URL wiring: the browser pages, the REST API under /api/v1/, OpenAPI, admin, health and metrics."""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import ops
from organizations import signin

api_v1 = [
    path("", include("organizations.urls")),
    path("", include("trackers.urls")),
    path("", include("notifications.urls")),
    path("", include("notifications.preferences_urls")),
    path("", include("notifications.send.urls")),
    path("", include("reports.urls")),
]

urlpatterns = [
    path("", include("trackers.pages")),
    path("", include("organizations.pages")),
    path("", include("reports.pages")),
    path("", include("notifications.pages")),
    path("accounts/login/", signin.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("favicon.ico", ops.favicon),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
]

handler400 = "config.api.json_400"
handler403 = "config.api.json_403"
handler404 = "config.api.json_404"
handler500 = "config.api.json_500"
