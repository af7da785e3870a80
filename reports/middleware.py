"""Records every successful API write (POST/PUT/PATCH/DELETE under /api/, status < 400) in the
activity log: organization, actor (user or API key), action (the URL name), object, status, IP.

Cheap by construction: no query for the common shapes (the organization comes from the URL's
org_id or the API key); a URL naming another object (tracker_id, report_id, ... listed in
settings.ACTIVITY_OBJECT_MODELS) costs one primary-key lookup of its organization_id; then one
INSERT into today's partition. A view that knows the organization says so
(config.api.activity_organization: tracker start/stop) and spares that lookup."""
from django.apps import apps
from django.conf import settings

from organizations.selectors import ApiKeyPrincipal
from reports.activity import ActivityRecord, activity_record

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ActivityLogMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.prefix = settings.ACTIVITY_PATH_PREFIX
        self.object_models = {kwarg: apps.get_model(label) for kwarg, label in settings.ACTIVITY_OBJECT_MODELS.items()}

    def __call__(self, request):
        response = self.get_response(request)
        if request.method in WRITE_METHODS and response.status_code < 400 and request.path.startswith(self.prefix):
            activity_record(record=self._record(request, response))
        return response

    def _record(self, request, response) -> ActivityRecord:
        match = request.resolver_match
        kwargs = dict(match.kwargs) if match else {}
        user = getattr(request, "user", None)  # DRF sets the authenticated principal on the Django request
        api_key_id = user_id = None
        actor_name = ""
        organization_id = kwargs.get("org_id") or getattr(request, "herald_organization_id", None)
        if isinstance(user, ApiKeyPrincipal):
            api_key_id, actor_name = user.api_key.pk, str(user)
            organization_id = organization_id or user.organization_id
        elif user is not None and getattr(user, "is_authenticated", False):
            user_id, actor_name = user.pk, user.get_username()
        object_type, object_id = "", ""
        for kwarg, value in reversed(list(kwargs.items())):  # the innermost object named by the URL
            object_type, object_id = kwarg.removesuffix("_id"), str(value)
            break
        data = getattr(response, "data", None)
        if request.method == "POST" and response.status_code in (201, 202) and isinstance(data, dict) \
                and "id" in data:
            object_type, object_id = (match.url_name if match else "") or object_type, str(data["id"])
        if organization_id is None:
            for kwarg, model in self.object_models.items():
                if kwarg in kwargs:
                    organization_id = (model.objects.filter(pk=kwargs[kwarg])
                                       .values_list("organization_id", flat=True).first())
                    break
        return ActivityRecord(
            organization_id=organization_id, actor_user_id=user_id, actor_api_key_id=api_key_id,
            actor_name=actor_name, method=request.method, action=(match.url_name if match else "") or "",
            object_type=object_type, object_id=object_id, path=request.path, status=response.status_code,
            ip=request.META.get("REMOTE_ADDR") or None)
