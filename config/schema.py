"""OpenAPI wiring: unique component names for view-nested Input/Output serializers."""
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema


class AutoSchema(SpectacularAutoSchema):
    def get_serializer_name(self, serializer, direction):
        # "MeApi.Input" -> "MeApiInput": every view's nested serializer gets its own component.
        return serializer.__class__.__qualname__.replace(".", "")
