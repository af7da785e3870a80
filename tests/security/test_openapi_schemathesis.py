"""The OpenAPI schema tells the truth (issue 11 #6): schemathesis generates requests from
/api/schema/ for every operation, sends them through the real Django stack (WSGI, real Postgres and
Redis) as a signed-in organization owner, and checks every answer against the schema with all of its
checks. Bounded: a fixed number of examples per operation, derandomized, so the run is repeatable
and short. The one exception is narrow and listed (SEMANTIC_400): rules no schema can state."""
import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings

from schemathesis.specs.openapi.checks import positive_data_acceptance

from organizations import services
from tests.organizations.factories import UserFactory

MAX_EXAMPLES = 5


@pytest.fixture
def api_schema(db):
    # The WSGI handler closes the database connection after each request, which would close the
    # test's transaction; Django's own test client detaches these hooks the same way.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


schema = schemathesis.pytest.from_fixture("api_schema")


_CREDENTIALS: dict[str, str] = {}


@schemathesis.auth()
class OwnerToken:
    """Schemathesis sends this user token as the valid credential (and tries invalid ones itself)."""

    def get(self, case, context):
        return _CREDENTIALS["token"]

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Token {data}"}


@pytest.fixture
def owner_token(db):
    owner = UserFactory(username="schema-owner")
    services.organization_create(creator=owner, name="Schema Org")
    _CREDENTIALS["token"] = services.user_token_create(user=owner)
    yield _CREDENTIALS["token"]
    _CREDENTIALS.clear()


@schema.parametrize()
@hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
@pytest.mark.django_db
@pytest.mark.timeout(1800)  # one test for every operation: the suite's 300 s is too short on a loaded box
def test_every_operation_answers_as_its_schema_says(case, owner_token):
    response = case.call()
    excluded = [positive_data_acceptance] if _semantic_rejection(case, response) else []
    case.validate_response(response, excluded_checks=excluded)


TEMPLATE_400 = ["invalid_template", "template_syntax_error", "template_undeclared_variable", "template_forbidden",
                "template_too_large", "unknown_channel", "unknown_category"]


# Answers that depend on state or rules no schema can state (a password's strength, whether the
# credentials are right): a well-formed request may still be 400 there, with exactly these codes.
SEMANTIC_400 = {
    ("POST", "/api/v1/auth/register"): [("validation_error", {"password"})],
    ("POST", "/api/v1/auth/token"): [("invalid_credentials", None)],
    ("POST", "/api/v1/me/password"): [("invalid_credentials", None),
                                      ("validation_error", {"new_password", "current_password"})],
    # Transactional categories cannot be turned off; quiet hours need a start and a different end.
    ("PUT", "/api/v1/me/preferences"): [("preference_locked", None), ("invalid_quiet_hours", None),
                                        ("invalid_digest", None)],
    ("PUT", "/api/v1/orgs/{org_id}/preferences"): [("preference_locked", None)],
    # Template text is checked by parsing it (syntax, declared variables, the sandbox's rules).
    ("POST", "/api/v1/orgs/{org_id}/templates/"): [(code, None) for code in TEMPLATE_400],
    ("PUT", "/api/v1/templates/{template_id}"): [(code, None) for code in TEMPLATE_400],
    ("POST", "/api/v1/templates/{template_id}/preview"): [("template_render_error", None),
                                                          ("unknown_template", None)],
    # Whitespace or control characters only: nothing left to search once normalized.
    ("GET", "/api/v1/orgs/{org_id}/search"): [("search_query_empty", None), ("search_query_too_long", None)],
    # A send's kind must name a template, its channels the registry's, an email a member's.
    ("POST", "/api/v1/send"): [("unknown_template", None), ("unknown_channel", None), ("channel_not_supported", None),
                               ("sms_too_long", None), ("push_too_large", None), ("whatsapp_too_long", None),
                               ("validation_error", {"organization", "recipients", "send_at", "deliver_at_local"}),
                               ("invalid_idempotency_key", None)],
    # The same, for each send of a batch (named sends[<index>].<field>), and all of them together; a
    # batch's many strings also meet DRF's refusal of NUL characters in any string field (/send's
    # too: its five examples do not happen to contain one), which the schema does not state.
    ("POST", "/api/v1/send/batch"): [
        ("unknown_template", None), ("unknown_channel", None), ("channel_not_supported", None),
        ("sms_too_long", None), ("push_too_large", None), ("whatsapp_too_long", None),
        ("too_many_recipients", None), ("invalid_idempotency_key", None),
        ("validation_error", {"organization"} | {f"sends[{i}].{name}" for i in range(1000) for name in (
            "recipients", "send_at", "deliver_at_local", "channels", "kind", "ordering_key")})],
}


def _semantic_rejection(case, response) -> bool:
    if response.status_code != 400:
        return False
    body = response.json()
    fields = set(body["extra"].get("fields", {})) if isinstance(body.get("extra"), dict) else set()
    return any(body["code"] == code and (allowed is None or fields <= allowed)
               for code, allowed in SEMANTIC_400.get((case.method.upper(), case.path), []))
    body = response.json()
    for key in ((case.method.upper(), case.path), (case.method.upper(), case.path + " ")):
        rule = SEMANTIC_400.get(key)
        if rule and body["code"] == rule[0] and (
                rule[1] is None or set(body["extra"].get("fields", {})) <= rule[1]):
            return True
    return False
