"""Bounded JSON: a nesting limit for REST bodies (the DRF parser) and WebSocket frames.

Kept apart from config.api: DRF reads DEFAULT_PARSER_CLASSES while config.api imports its views."""
import codecs
import json

from django.conf import settings
from rest_framework import exceptions, parsers


class JsonTooDeep(ValueError):
    pass


def _depth_exceeds(value, limit: int) -> bool:
    """True if containers nest deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def json_loads_bounded(text: str | bytes, *, max_depth: int | None = None):
    """json.loads that refuses nesting deeper than HERALD_MAX_JSON_DEPTH (JsonTooDeep, a ValueError)
    instead of recursing until RecursionError."""
    limit = settings.HERALD_MAX_JSON_DEPTH if max_depth is None else max_depth
    try:
        value = json.loads(text, parse_constant=json_strict_constant)
    except RecursionError as exc:
        raise JsonTooDeep(f"JSON nested deeper than {limit} levels.") from exc
    if _depth_exceeds(value, limit):
        raise JsonTooDeep(f"JSON nested deeper than {limit} levels.")
    return value


def json_strict_constant(name: str):
    raise ValueError(f"{name} is not valid JSON.")


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser with a nesting limit: too deep is 400 json_too_deep, never a RecursionError.
    The body size was already bounded by BodySizeLimitMiddleware."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
            return json_loads_bounded(text)
        except JsonTooDeep as exc:
            raise exceptions.ParseError(str(exc), code="json_too_deep")
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}")
