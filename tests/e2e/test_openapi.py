"""The OpenAPI document validates (OpenAPI 3.1) and describes exactly the app's routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from mission_ledger.config import Settings
from mission_ledger.http.app import OPENAPI, create_app
from mission_ledger.http.state import LEDGER

METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


@pytest.fixture(scope="module")
def app() -> Iterator[web.Application]:
    application = create_app(Settings(database_url="memory:"))
    yield application  # built, never started: the document exists from creation on
    application[LEDGER].close()


@pytest.fixture(scope="module")
def document(app: web.Application) -> dict[str, Any]:
    doc: dict[str, Any] = app[OPENAPI]
    return doc


def test_the_document_validates_as_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


def test_the_validator_would_catch_a_broken_document(document: dict[str, Any]) -> None:
    broken = {**document, "paths": {"/x": {"get": {"responses": "nope"}}}}
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_document_paths_equal_the_app_routes(
    app: web.Application, document: dict[str, Any]
) -> None:
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    assert routes == documented, {
        "undocumented": sorted(routes - documented),
        "not routed": sorted(documented - routes),
    }


def test_every_operation_is_named_and_answers_errors_as_problems(
    document: dict[str, Any],
) -> None:
    public = {
        ("get", "/healthz"),
        ("get", "/openapi.json"),
        ("get", "/agentpass/configuration"),
        ("get", "/jwks.json"),
        ("get", "/.well-known/ssf-configuration"),
    }
    operation_ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            assert operation["responses"], (method, path)
            if (method, path) in public:
                assert operation.get("security") == [], (method, path)
            else:
                assert "security" not in operation, (method, path)  # the global bearer scheme
    assert len(operation_ids) == len(set(operation_ids))
    assert document["security"] == [{"bearer": []}]
    suspend = document["paths"]["/missions/{id}/suspend"]["post"]
    names = {p["name"] for p in suspend["parameters"]}
    assert {"id", "If-Match", "Idempotency-Key"} <= names
    assert suspend["responses"]["409"]["content"]["application/problem+json"]


def test_request_schemas_forbid_unknown_members(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name in ("ProposalDocument", "SuspendBody", "ApproveBody", "DelegationBody"):
        assert schemas[name]["additionalProperties"] is False, name
    assert "predecessor" not in schemas["SuccessorDocument"]["properties"]
