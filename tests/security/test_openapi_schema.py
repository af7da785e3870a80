"""The OpenAPI schema says what the API does (issue 11 #6): paginated envelopes, the error shape on
every error status with its codes, constraints, strict request bodies; and the API agrees."""
import pytest
import yaml
from django.test import Client

from tests.conftest import assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema(django_db_blocker):
    with django_db_blocker.unblock():
        return yaml.safe_load(Client().get("/api/schema/").content)


def op(schema, path, method):
    return schema["paths"][path][method]


def resolve(schema, ref):
    return schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


@pytest.mark.parametrize("path", ["/api/v1/orgs/", "/api/v1/orgs/{org_id}/members/", "/api/v1/orgs/{org_id}/api-keys/",
                                  "/api/v1/notifications/", "/api/v1/auth/tokens",
                                  "/api/v1/orgs/{org_id}/invitations/"])
def test_lists_are_documented_as_the_paginated_envelope(schema, path):
    body = resolve(schema, op(schema, path, "get")["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(body["properties"]) == {"count", "next", "previous", "results"}
    assert body["properties"]["results"]["type"] == "array"
    names = {p["name"] for p in op(schema, path, "get").get("parameters", [])}
    assert {"page", "page_size"} <= names


def test_every_operation_documents_its_errors_with_the_error_shape(schema):
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert set(error["required"]) == {"message", "code", "extra"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"400", "503"} <= statuses, (method, path)
            if operation.get("security") and {} not in operation["security"]:
                assert {"401", "403"} <= statuses, (method, path)
            if "{" in path:
                assert "404" in statuses, (method, path)
            for status, response in operation["responses"].items():
                if status >= "400":
                    assert response["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
                    assert response["x-error-codes"], (method, path, status)


def test_throttled_endpoints_document_429_with_retry_after(schema):
    for path in ("/api/v1/auth/token", "/api/v1/auth/register"):
        response = op(schema, path, "post")["responses"]["429"]
        assert "Retry-After" in response["headers"]
        assert "account_locked" in response["x-error-codes"] or path.endswith("register")


def test_request_bodies_reject_unknown_fields_in_the_schema_too(schema):
    body = op(schema, "/api/v1/auth/register", "post")["requestBody"]["content"]["application/json"]["schema"]
    assert resolve(schema, body)["additionalProperties"] is False


def test_event_log_parameters_carry_their_bounds(schema):
    params = {p["name"]: p["schema"] for p in op(schema, "/api/v1/orgs/{org_id}/events/", "get")["parameters"]}
    assert params["after_seq"]["minimum"] == 0
    assert params["limit"]["minimum"] == 1 and params["limit"]["maximum"] >= 1


@pytest.mark.parametrize("query", ["unread=", "unread=maybe"])
def test_unread_must_be_a_real_boolean(auth_client, user, query):
    assert_error(auth_client(user).get(f"/api/v1/notifications/?{query}"), 400, "validation_error")


def test_unread_absent_lists_everything(auth_client, user):
    assert auth_client(user).get("/api/v1/notifications/").status_code == 200
