"""The address pages open their live socket (/ws/) at, rendered into the layout (`live_websocket_url`,
read by static/js/*.js from `<meta name="herald-live-socket">`).

- `LIVE_WEBSOCKET_URL` set (`ws[s]://host[:port]`): that, as it is (a proxy or another host serves
  /ws/);
- else `HERALD_WS_PORT` set (config.serve with `--ws-processes`: Daphne serves /ws/ on its own port):
  the page's own host name on that port, `wss` when the request came over HTTPS. The session cookie
  goes along (cookies are not scoped by port) and the socket's Origin is still the page's, so
  WS_ALLOWED_ORIGINS stays the site's address;
- else empty: the page's own origin.
"""
from django.conf import settings
from django.http.request import split_domain_port


def live_socket(request) -> dict:
    url = settings.LIVE_WEBSOCKET_URL
    if not url and settings.HERALD_WS_PORT:
        host, _ = split_domain_port(request.get_host())  # an IPv6 literal keeps its brackets
        url = f"{'wss' if request.is_secure() else 'ws'}://{host}:{settings.HERALD_WS_PORT}"
    return {"live_websocket_url": url}
