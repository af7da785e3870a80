"""ASGI entry point: Django for HTTP (behind admission control, config.admission; one thread hop
per request, config.asgi_http), Channels for WebSockets at /ws/ (Origin checked against
HERALD_WS_ALLOWED_ORIGINS, see config.websocket; refused in the HTTP processes of a split web tier,
config.serve --ws-processes)."""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
django.setup(set_prefix=False)  # what django.core.asgi.get_asgi_application() does first

from config.asgi_http import OneHopASGIHandler  # noqa: E402

django_asgi_app = OneHopASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from config.admission import AdmissionControl  # noqa: E402
from config.websocket import OriginGuard  # noqa: E402

from notifications.consumers import LiveConsumer  # noqa: E402
from organizations.middleware import WebSocketAuthMiddleware  # noqa: E402

from channels.security.websocket import WebsocketDenier  # noqa: E402
from django.conf import settings  # noqa: E402

websocket_app = OriginGuard(WebSocketAuthMiddleware(URLRouter([path("ws/", LiveConsumer.as_asgi())])))
if settings.WEB_WS_PROCESSES and settings.WEB_WS_INDEX == "":
    # An HTTP process of a split web tier (config.serve --ws-processes): /ws/ is served by the socket
    # processes on HERALD_WS_PORT, where the pages connect; a socket here would load the HTTP side.
    websocket_app = WebsocketDenier.as_asgi()

application = ProtocolTypeRouter({"http": AdmissionControl(django_asgi_app), "websocket": websocket_app})
