"""DRF's content negotiation with the usual request answered without parsing its Accept header."""
from rest_framework.negotiation import DefaultContentNegotiation


class ContentNegotiation(DefaultContentNegotiation):
    """What almost every client sends: no Accept (or `*/*`, or exactly the first renderer's media
    type), no query string (so no `?format=`), no format suffix. DRF then picks the first renderer
    and its media type; this returns that pair without tokenizing and ranking media types
    (tests/test_api_negotiation.py compares the two over many requests). Anything else goes
    through DRF's own negotiation."""

    def select_renderer(self, request, renderers, format_suffix=None):
        meta = request.META
        if renderers and not format_suffix and not meta.get("QUERY_STRING"):
            first = renderers[0]
            accept = meta.get("HTTP_ACCEPT", "*/*")
            if accept == "*/*" or accept == first.media_type:
                return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)
