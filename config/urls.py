"""URL wiring: the browser pages, the REST API under /api/v1/, OpenAPI, admin, health and metrics."""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import ops
from organizations import signin

# Django tries patterns in order, one regular expression each, on every request: the API comes
# first, and in it the hot routes (tracker start/stop, send) are tried before the rest (about 70
# patterns were tried before a tracker start). No two patterns match the same path, so the order
# changes only the cost (tests/test_urls.py resolves every named route back to itself).
api_v1 = [
    path("", include("trackers.urls")),
    path("", include("notifications.send.urls")),
    path("", include("organizations.urls")),
    path("", include("notifications.urls")),
    path("", include("notifications.preferences_urls")),
    path("", include("reports.urls")),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("healthz", ops.healthz, name="healthz"),
    path("", include("trackers.pages")),
    path("", include("organizations.pages")),
    path("", include("reports.pages")),
    path("", include("notifications.pages")),
    path("accounts/login/", signin.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("favicon.ico", ops.favicon),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
]

handler400 = "config.api.json_400"
handler403 = "config.api.json_403"
handler404 = "config.api.json_404"
handler500 = "config.api.json_500"
