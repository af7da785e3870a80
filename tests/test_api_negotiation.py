"""config.negotiation.ContentNegotiation answers the usual request at once and agrees with DRF's own
negotiation on every request, unusual ones included."""
import pytest
from django.http import Http404
from rest_framework import exceptions
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from config.negotiation import ContentNegotiation

ACCEPTS = [None, "*/*", "application/json", "application/json; indent=4", "text/html", "text/html,*/*;q=0.8",
           "application/*", "text/csv", "", "application/json, text/html", "*/*;q=0.1", "APPLICATION/JSON"]
RENDERER_SETS = [[JSONRenderer()], [JSONRenderer(), BrowsableAPIRenderer()], [BrowsableAPIRenderer(), JSONRenderer()]]


def outcome(negotiation, request, renderers, suffix):
    try:
        renderer, media_type = negotiation.select_renderer(request, renderers, suffix)
    except (exceptions.NotAcceptable, Http404) as exc:
        return type(exc)
    return type(renderer), media_type


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("query", ["", "format=json", "format=api", "page=2"])
@pytest.mark.parametrize("suffix", [None, "json", "api"])
def test_the_same_choice_as_drf(accept, query, suffix):
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().get("/api/v1/me" + (f"?{query}" if query else ""), **headers))
    for renderers in RENDERER_SETS:
        assert outcome(ContentNegotiation(), request, renderers, suffix) == \
            outcome(DefaultContentNegotiation(), request, renderers, suffix), (accept, query, suffix, renderers)


def test_the_usual_request_is_not_parsed(monkeypatch):
    monkeypatch.setattr(DefaultContentNegotiation, "select_renderer", lambda *a, **k: pytest.fail("parsed"))
    request = Request(APIRequestFactory().get("/api/v1/me"))
    renderer = JSONRenderer()
    assert ContentNegotiation().select_renderer(request, [renderer]) == (renderer, "application/json")


def test_the_api_uses_it(auth_client, user):
    response = auth_client(user).get("/api/v1/me")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert auth_client(user).get("/api/v1/me", HTTP_ACCEPT="text/csv").status_code == 406
