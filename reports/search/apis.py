"""GET /orgs/{id}/search?q= and GET /orgs/{id}/search/top."""
from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView

from config.api import Pagination
from config.errors import NotFound
from organizations.selectors import ApiKeyPrincipal, organization_get_for_user, role_in_organization
from reports.search import selectors, services, top
from reports.search.models import QUERY_MAX_LENGTH

SEARCH_PAGE_SIZE = 20


class SearchHitOutput(serializers.Serializer):
    type = serializers.ChoiceField(choices=["tracker", "time_entry", "comment"])
    id = serializers.IntegerField()
    tracker_id = serializers.IntegerField()
    tracker_name = serializers.CharField()
    time_entry_id = serializers.IntegerField(allow_null=True)
    rank = serializers.FloatField()
    snippet = serializers.CharField(help_text="HTML: the escaped text around the match, matches in <mark>.")
    url = serializers.CharField(help_text="The result's page in the web UI.")


class SearchTopOutput(serializers.Serializer):
    class Item(serializers.Serializer):
        rank = serializers.IntegerField()
        query = serializers.CharField()
        searches = serializers.IntegerField()

    window_start = serializers.DateTimeField(allow_null=True)
    window_end = serializers.DateTimeField(allow_null=True)
    results = Item(many=True)


def _positive_int(request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1 or (maximum is not None and int(raw) > maximum):
        bound = f" from 1 to {maximum}" if maximum else ""
        raise exceptions.ValidationError({name: [f"Must be an integer{bound}."]})
    return int(raw)


def _page_link(request, page: int) -> str:
    url = settings.HERALD_BASE_URL + request.get_full_path()
    return remove_query_param(url, "page") if page == 1 else replace_query_param(url, "page", page)


class SearchApi(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("q", {"type": "string", "minLength": 1, "maxLength": QUERY_MAX_LENGTH},
                                     required=True,
                                     description="Words, \"a phrase\", or, -excluded (web search syntax).")],
        responses=SearchHitOutput(many=True))
    def get(self, request, org_id: int):
        organization = organization_get_for_user(user=request.user, id=org_id)
        query = services.search_query_normalize(raw=request.query_params.get("q"))
        page = _positive_int(request, "page", 1)
        page_size = _positive_int(request, "page_size", SEARCH_PAGE_SIZE, Pagination.max_page_size)
        total, hits = selectors.search_page(organization_id=organization.id, query=query,
                                            offset=(page - 1) * page_size, limit=page_size)
        if total is None:
            raise NotFound("Invalid page.", code="not_found")
        services.search_log_record(organization_id=organization.id, principal=request.user, query=query)
        return Response({
            "count": total,
            "next": _page_link(request, page + 1) if page * page_size < total else None,
            "previous": _page_link(request, page - 1) if page > 1 else None,
            "results": SearchHitOutput(hits, many=True).data,
        })


class SearchTopApi(APIView):
    """Served from Redis: after authentication, one membership read and one MGET; the cached
    bytes are the body (reports.search.top)."""

    @extend_schema(responses=SearchTopOutput)
    def get(self, request, org_id: int):
        user = request.user
        member = (user.organization_id == org_id if isinstance(user, ApiKeyPrincipal)
                  else role_in_organization(user=user, organization_id=org_id) is not None)
        if not member:
            raise NotFound("Organization not found.", code="organization_not_found")
        return HttpResponse(top.search_top_body(organization_id=org_id), content_type="application/json")

