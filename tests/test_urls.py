"""URL wiring: patterns are tried in order (the API first, its hot routes first of all), so no
pattern may match another route's paths, or reordering them would change what a URL reaches."""
import uuid

from django.urls import get_resolver, resolve, reverse
from django.urls.converters import IntConverter, PathConverter, UUIDConverter


def _sample(converter) -> object:
    if isinstance(converter, IntConverter):
        return 7
    if isinstance(converter, UUIDConverter):
        return uuid.UUID(int=7)
    if isinstance(converter, PathConverter):
        return "a/b"
    return "x"


def test_every_named_route_resolves_back_to_itself():
    resolver = get_resolver()
    names = [name for name in resolver.reverse_dict if isinstance(name, str)]
    assert "tracker-start" in names and "send" in names and "healthz" in names
    checked = 0
    for name in names:
        for _bits, _pattern, _defaults, converters in resolver.reverse_dict.getlist(name):
            kwargs = {param: _sample(converter) for param, converter in converters.items()}
            path = reverse(name, kwargs=kwargs)
            assert resolve(path).url_name == name, f"{path} reaches {resolve(path).url_name}, not {name}"
            checked += 1
    assert checked > 50


def test_the_hot_api_routes_are_reached_after_few_patterns():
    """Each pattern tried is a regular expression run on every request: tracker start tried 49
    before it when the API came after the browser pages, the send 73."""
    assert str(get_resolver().url_patterns[0].pattern) == "api/v1/"
    for path, name in (("/api/v1/trackers/1/start", "tracker-start"), ("/api/v1/trackers/1/stop", "tracker-stop"),
                       ("/api/v1/send", "send"), ("/healthz", "healthz")):
        match = resolve(path)
        assert match.url_name == name and len(match.tried) <= 8, (path, len(match.tried))
