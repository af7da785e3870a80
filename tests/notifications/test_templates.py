"""Notification templates: the API (`/orgs/{id}/templates/`, `/templates/{id}`, preview), validation
on save with channel, field and line, locale resolution, another organization's template, admin."""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from config.errors import ApplicationError
from notifications.models import NotificationTemplate
from notifications.templating import locale_candidates, template_render, template_resolve, template_resolve_locales
from organizations.models import ApiKeyScope, Organization
from tests.conftest import assert_error
from tests.organizations.factories import ApiKeyFactory, UserFactory

pytestmark = pytest.mark.django_db

WELCOME = {
    "kind": "welcome",
    "locale": "en",
    "category": "transactional",
    "variables": ["name", "items"],
    "parts": {
        "email": {"subject": "Welcome {{ name }}",
                  "text": "Hi {{ name }},\n{% for i in items %}- {{ i }}\n{% endfor %}",
                  "html": "<p>Hi {{ name }}</p>"},
        "sms": {"text": "Hi {{ name }}"},
        "inapp": {"title": "Welcome", "body": "{{ items|length }} things"},
        "push": {"title": "Hi", "body": "{{ name }}", "data": {"screen": "home", "who": "{{ name }}"}},
        "slack": {"text": "*{{ name }}* joined"},
        "webhook": {"json": {"event": "welcome", "name": "{{ name }}"}},
        "whatsapp": {"text": "Hi {{ name }}"},
    },
}


def _list_url(org_id):
    return f"/api/v1/orgs/{org_id}/templates/"


def _create(client, org, **overrides):
    response = client.post(_list_url(org.id), {**WELCOME, **overrides}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def _make(org, **overrides) -> NotificationTemplate:
    fields = {**WELCOME, **overrides}
    return NotificationTemplate.objects.create(organization=org, **fields)


# --- API ---------------------------------------------------------------------------------------

def test_create_get_update_delete(auth_client, org_with_members):
    client = auth_client(org_with_members.admin)
    created = _create(client, org_with_members.org)
    assert created["kind"] == "welcome" and created["version"] == 1
    assert set(created) == {"id", "organization_id", "kind", "locale", "category", "description", "variables",
                            "parts", "version", "created_at", "updated_at"}

    got = client.get(f"/api/v1/templates/{created['id']}").json()
    assert got["parts"] == WELCOME["parts"]

    changed = {**WELCOME, "parts": {"sms": {"text": "Yo {{ name }}"}}}
    response = client.put(f"/api/v1/templates/{created['id']}", changed, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["version"] == 2 and response.json()["parts"] == {"sms": {"text": "Yo {{ name }}"}}

    assert client.delete(f"/api/v1/templates/{created['id']}").status_code == 204
    assert_error(client.get(f"/api/v1/templates/{created['id']}"), 404, "template_not_found")


def test_list_is_paginated_filtered_and_a_fixed_number_of_queries(auth_client, org_with_members):
    org = org_with_members.org
    for locale in ("en", "fr", "de", "pt-BR"):
        _make(org, locale=locale)
    _make(org, kind="reset", locale="en")
    client = auth_client(org_with_members.member)  # members read
    client.get(_list_url(org.id))  # the token's first use records it: not part of the count
    with CaptureQueriesContext(connection) as few:
        body = client.get(_list_url(org.id)).json()
    assert body["count"] == 5
    assert [(r["kind"], r["locale"]) for r in body["results"]] == [
        ("reset", "en"), ("welcome", "de"), ("welcome", "en"), ("welcome", "fr"), ("welcome", "pt-BR")]
    for i in range(10):
        _make(org, kind=f"k{i}")
    with CaptureQueriesContext(connection) as many:
        body = client.get(_list_url(org.id)).json()
    assert body["count"] == 15
    assert len(many) == len(few) <= 6
    assert client.get(_list_url(org.id), {"kind": "welcome"}).json()["count"] == 4
    assert client.get(_list_url(org.id), {"locale": "pt_br"}).json()["count"] == 1


def test_another_organizations_templates_are_404(auth_client, org_with_members, other_org):
    template = _make(other_org.org)
    client = auth_client(org_with_members.owner)
    assert_error(client.get(f"/api/v1/templates/{template.id}"), 404, "template_not_found")
    assert_error(client.put(f"/api/v1/templates/{template.id}", WELCOME, format="json"), 404, "template_not_found")
    assert_error(client.delete(f"/api/v1/templates/{template.id}"), 404, "template_not_found")
    assert_error(client.post(f"/api/v1/templates/{template.id}/preview", {"data": {}}, format="json"), 404,
                 "template_not_found")
    assert_error(client.get(_list_url(other_org.org.id)), 404, "organization_not_found")
    assert_error(client.post(_list_url(other_org.org.id), WELCOME, format="json"), 404, "organization_not_found")
    assert NotificationTemplate.objects.get(pk=template.pk).version == 1


def test_members_read_but_only_admins_write(auth_client, org_with_members):
    template = _make(org_with_members.org)
    member = auth_client(org_with_members.member)
    assert member.get(f"/api/v1/templates/{template.id}").status_code == 200
    assert_error(member.post(_list_url(org_with_members.org.id), {**WELCOME, "kind": "x"}, format="json"), 403,
                 "admin_required")
    assert_error(member.put(f"/api/v1/templates/{template.id}", WELCOME, format="json"), 403, "admin_required")
    assert_error(member.delete(f"/api/v1/templates/{template.id}"), 403, "admin_required")


def test_api_keys_need_the_templates_scope_to_write(api_key_client, org_with_members):
    org = org_with_members.org
    plain = api_key_client(ApiKeyFactory(organization=org).plaintext)
    assert plain.get(_list_url(org.id)).status_code == 200
    assert_error(plain.post(_list_url(org.id), WELCOME, format="json"), 403, "scope_required")
    writer = api_key_client(ApiKeyFactory(organization=org, scopes=[ApiKeyScope.ORGS_READ,
                                                                    ApiKeyScope.TEMPLATES_WRITE]).plaintext)
    assert writer.post(_list_url(org.id), WELCOME, format="json").status_code == 201


def test_a_second_template_for_the_same_kind_and_locale_is_409(auth_client, org_with_members, other_org):
    client = auth_client(org_with_members.admin)
    first = _create(client, org_with_members.org)
    assert_error(client.post(_list_url(org_with_members.org.id), WELCOME, format="json"), 409, "template_exists")
    second = _create(client, org_with_members.org, locale="fr")
    assert_error(client.put(f"/api/v1/templates/{second['id']}", WELCOME, format="json"), 409, "template_exists")
    _create(auth_client(other_org.admin), other_org.org)  # another organization may use the same kind
    assert first["id"] != second["id"]


# --- validation on save ------------------------------------------------------------------------

@pytest.mark.parametrize(("parts", "code", "where"), [
    ({"sms": {"text": "Hi\n{{ name"}}, "template_syntax_error", {"channel": "sms", "field": "text", "line": 2}),
    ({"email": {"subject": "ok", "text": "a\nb\n{% for x in items %}"}}, "template_syntax_error",
     {"channel": "email", "field": "text", "line": 3}),
    ({"inapp": {"title": "T", "body": "x\n\n\n{{ nobody }}"}}, "template_undeclared_variable",
     {"channel": "inapp", "field": "body", "line": 4, "variable": "nobody"}),
    ({"sms": {"text": "{{ cycler.__init__.__globals__ }}"}}, "template_forbidden",
     {"channel": "sms", "field": "text", "line": 1}),
    ({"sms": {"text": "\n{{ ''.__class__.__mro__ }}"}}, "template_forbidden",
     {"channel": "sms", "field": "text", "line": 2}),
    ({"sms": {"text": "{{ name['__class__'] }}"}}, "template_forbidden", {"channel": "sms", "line": 1}),
    ({"sms": {"text": "{% include 'x' %}"}}, "template_forbidden", {"channel": "sms", "line": 1}),
    ({"sms": {"text": "{% extends 'x' %}"}}, "template_forbidden", {"channel": "sms", "line": 1}),
    ({"sms": {"text": "{% import 'os' as os %}"}}, "template_forbidden", {"channel": "sms", "line": 1}),
    ({"sms": {"text": "{{ name|nosuchfilter }}"}}, "template_syntax_error", {"channel": "sms", "line": 1}),
    ({"webhook": {"json": {"a": {"b": "{{ nobody }}"}}}}, "template_undeclared_variable",
     {"channel": "webhook", "field": "json", "path": "a.b", "line": 1}),
    ({"fax": {"text": "x"}}, "unknown_channel", {"channel": "fax"}),
    ({"sms": {"body": "x"}}, "invalid_template", {"channel": "sms", "field": "body"}),
    ({"email": {"text": "x"}}, "invalid_template", {"channel": "email", "field": "subject"}),
    ({"push": {"title": "x", "data": {"n": 1}}}, "invalid_template", {"channel": "push", "field": "data"}),
])
def test_invalid_templates_are_400_with_channel_field_and_line(auth_client, org_with_members, parts, code, where):
    client = auth_client(org_with_members.admin)
    body = assert_error(client.post(_list_url(org_with_members.org.id), {**WELCOME, "parts": parts}, format="json"),
                        400, code)
    assert where.items() <= body["extra"].items(), body
    assert not NotificationTemplate.objects.exists()


def test_loop_variables_and_set_names_are_not_undeclared(auth_client, org_with_members):
    client = auth_client(org_with_members.admin)
    source = "{% set total = items|length %}{% for i in items %}{{ loop.index }}{{ i }}{% endfor %}{{ total }}"
    _create(client, org_with_members.org, parts={"sms": {"text": source}})


def test_bad_fields_are_400(auth_client, org_with_members):
    client = auth_client(org_with_members.admin)
    url = _list_url(org_with_members.org.id)
    assert_error(client.post(url, {**WELCOME, "kind": "Not A Slug"}, format="json"), 400, "invalid_template")
    assert_error(client.post(url, {**WELCOME, "locale": "english!"}, format="json"), 400, "invalid_template")
    assert_error(client.post(url, {**WELCOME, "category": "spam"}, format="json"), 400, "validation_error")
    assert_error(client.post(url, {**WELCOME, "variables": ["ok", "not ok"]}, format="json"), 400,
                 "invalid_template")
    assert_error(client.post(url, {**WELCOME, "parts": {}}, format="json"), 400, "validation_error")
    assert_error(client.post(url, {**WELCOME, "extra": 1}, format="json"), 400, "validation_error")
    assert_error(client.post(url, {**WELCOME, "parts": {"sms": {"text": "x" * 20_001}}}, format="json"), 400,
                 "template_too_large")


def test_locale_is_normalized(auth_client, org_with_members):
    created = _create(auth_client(org_with_members.admin), org_with_members.org, locale="pt_br")
    assert created["locale"] == "pt-BR"


# --- preview -----------------------------------------------------------------------------------

def test_preview_renders_every_part(auth_client, org_with_members):
    template = _make(org_with_members.org)
    response = auth_client(org_with_members.member).post(
        f"/api/v1/templates/{template.id}/preview", {"data": {"name": "<Ann>", "items": ["a", "b"]}}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["template_id"] == template.id and body["locale"] == "en"
    parts = body["parts"]
    assert set(parts) == set(WELCOME["parts"])
    assert parts["email"] == {"subject": "Welcome <Ann>", "text": "Hi <Ann>,\n- a\n- b\n",
                              "html": "<p>Hi &lt;Ann&gt;</p>"}
    assert parts["inapp"] == {"title": "Welcome", "body": "2 things"}
    assert parts["push"]["data"] == {"screen": "home", "who": "<Ann>"}
    assert parts["webhook"] == {"json": {"event": "welcome", "name": "<Ann>"}}


def test_preview_resolves_the_locale(auth_client, org_with_members):
    en = _make(org_with_members.org)
    fr = _make(org_with_members.org, locale="fr", parts={"sms": {"text": "Salut {{ name }}"}})
    client = auth_client(org_with_members.member)
    body = client.post(f"/api/v1/templates/{en.id}/preview", {"locale": "fr-CA", "data": {"name": "Ann", "items": []}},
                       format="json").json()
    assert body["template_id"] == fr.id and body["parts"] == {"sms": {"text": "Salut Ann"}}


def test_preview_errors_name_the_line(auth_client, org_with_members):
    template = _make(org_with_members.org, parts={"sms": {"text": "Hi\n{{ name }} {{ items[5] }}"}})
    body = assert_error(auth_client(org_with_members.member).post(
        f"/api/v1/templates/{template.id}/preview", {"data": {"name": "Ann"}}, format="json"), 400,
        "template_render_error")
    assert body["extra"]["channel"] == "sms" and body["extra"]["line"] == 2 and body["extra"]["reason"] == "undefined"


def test_preview_of_a_template_that_loops_for_seconds_is_400(auth_client, org_with_members, settings):
    settings.TEMPLATE_RENDER_TIMEOUT_SECONDS = 0.3
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    template = _make(org_with_members.org, parts={"sms": {"text": source}})
    body = assert_error(auth_client(org_with_members.member).post(
        f"/api/v1/templates/{template.id}/preview", {"data": {}}, format="json"), 400, "template_render_error")
    assert body["extra"]["reason"] == "timeout"


# --- resolution --------------------------------------------------------------------------------

def test_locale_candidates():
    assert locale_candidates(locale="pt-BR", organization_locale="de") == ["pt-BR", "pt", "de", "en"]
    assert locale_candidates(locale=None, organization_locale="fr-CA") == ["fr-CA", "fr", "en"]
    assert locale_candidates(locale="en", organization_locale="en") == ["en"]


def test_resolve_falls_back_from_recipient_to_organization_default_to_en(org_with_members):
    org = org_with_members.org
    org.locale = "de"
    org.save(update_fields=["locale"])
    en = _make(org, locale="en")
    assert template_resolve(organization_id=org.id, kind="welcome", locale="fr") == en
    de = _make(org, locale="de")
    assert template_resolve(organization_id=org.id, kind="welcome", locale="fr") == de
    assert template_resolve(organization_id=org.id, kind="welcome", locale=None) == de
    fr = _make(org, locale="fr")
    assert template_resolve(organization_id=org.id, kind="welcome", locale="fr-CA") == fr
    fr_ca = _make(org, locale="fr-CA")
    assert template_resolve(organization_id=org.id, kind="welcome", locale="fr_ca") == fr_ca


def test_resolve_many_locales_is_one_query(org_with_members, django_assert_num_queries):
    """The organization's default locale and the kind's templates come in one written-out
    statement (every send resolves its template); the instances are the ORM's."""
    org = org_with_members.org
    en, fr = _make(org, locale="en"), _make(org, locale="fr")
    with django_assert_num_queries(1):
        resolved = template_resolve_locales(organization_id=org.id, kind="welcome",
                                            locales=["fr", "fr-BE", "es", None, "en"])
    assert resolved == {"fr": fr, "fr-BE": fr, "es": en, None: en, "en": en}
    fields = [f.attname for f in NotificationTemplate._meta.concrete_fields]
    loaded = NotificationTemplate.objects.get(pk=fr.pk)
    assert [getattr(resolved["fr"], f) for f in fields] == [getattr(loaded, f) for f in fields]


def test_resolve_follows_the_organizations_default_locale(org_with_members):
    org = org_with_members.org
    Organization.objects.filter(pk=org.pk).update(locale="de")
    en, de = _make(org, locale="en"), _make(org, locale="de")
    resolved = template_resolve_locales(organization_id=org.id, kind="welcome", locales=[None, "fr", "en"])
    assert resolved == {None: de, "fr": de, "en": en}


def test_resolve_for_an_organization_that_does_not_exist(org_with_members):
    with pytest.raises(ApplicationError) as caught:
        template_resolve_locales(organization_id=10**12, kind="welcome", locales=[None])
    assert caught.value.code == "unknown_template"


def test_resolve_unknown_template_or_another_organizations(org_with_members, other_org):
    _make(other_org.org)
    with pytest.raises(ApplicationError) as caught:
        template_resolve(organization_id=org_with_members.org.id, kind="welcome", locale="en")
    assert caught.value.code == "unknown_template" and caught.value.status_code == 400


def test_render_with_the_resolved_template(org_with_members):
    template = _make(org_with_members.org)
    parts = template_render(template=template, data={"name": "Ann", "items": [], "other": "ignored"},
                            channels=["sms", "slack"])
    assert parts == {"sms": {"text": "Hi Ann"}, "slack": {"text": "*Ann* joined"}}


# --- admin -------------------------------------------------------------------------------------

def test_admin_lists_and_validates_templates(client, org_with_members):
    staff = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(staff)
    template = _make(org_with_members.org)
    assert client.get("/admin/notifications/notificationtemplate/").status_code == 200
    url = f"/admin/notifications/notificationtemplate/{template.id}/change/"
    assert client.get(url).status_code == 200
    response = client.post(url, {"organization": org_with_members.org.id, "kind": "welcome", "locale": "en",
                                 "category": "transactional", "description": "", "variables": '["name"]',
                                 "parts": '{"sms": {"text": "{{ nobody }}"}}'})
    assert response.status_code == 200 and b"template_undeclared_variable" in response.content
    response = client.post(url, {"organization": org_with_members.org.id, "kind": "welcome", "locale": "en",
                                 "category": "transactional", "description": "", "variables": '["name"]',
                                 "parts": '{"sms": {"text": "Yo {{ name }}"}}'})
    assert response.status_code == 302
    template.refresh_from_db()
    assert template.parts == {"sms": {"text": "Yo {{ name }}"}} and template.version == 2
