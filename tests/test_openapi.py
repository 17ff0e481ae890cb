"""
The OpenAPI document against the answers the gateway really gives.

The validator below covers the part of JSON Schema the document uses (type,
properties, required, additionalProperties, items, enum, bounds, lengths,
pattern, date formats, $ref); a keyword it does not know fails the test, so
the document cannot drift past what is checked.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest

from gateway import openapi
from gateway.app import create_app
from tests.seed import make_records, store

NOW = datetime(2030, 3, 1, 0, 0, 5, tzinfo=UTC)
KNOWN = {
    "type", "properties", "required", "additionalProperties", "items", "enum",
    "minimum", "maximum", "minLength", "maxLength", "pattern", "format",
    "description", "default", "$ref",
}  # fmt: skip
TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def resolve(document: dict[str, Any], pointer: str) -> dict[str, Any]:
    assert pointer.startswith("#/"), pointer
    node: Any = document
    for part in pointer[2:].split("/"):
        node = node[part]
    return node


def has_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return type(value) is int
    if kind == "number":
        return type(value) in (int, float)
    return isinstance(value, TYPES[kind]) and not (
        kind != "boolean" and isinstance(value, bool)
    )


def validate(value: Any, schema: dict[str, Any], document: dict, at: str = "$") -> None:
    """Raise AssertionError naming the first place *value* breaks *schema*."""
    unknown = set(schema) - KNOWN
    assert not unknown, f"{at}: the validator does not know {unknown}"
    if "$ref" in schema:
        validate(value, resolve(document, schema["$ref"]), document, at)
        return
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        assert any(has_type(value, k) for k in kinds), f"{at}: {value!r} not {kinds}"
    if value is None:
        return
    if "enum" in schema:
        assert value in schema["enum"], f"{at}: {value!r} not in {schema['enum']}"
    if "minimum" in schema:
        assert value >= schema["minimum"], f"{at}: {value} < minimum"
    if "maximum" in schema:
        assert value <= schema["maximum"], f"{at}: {value} > maximum"
    if isinstance(value, str):
        assert len(value) >= schema.get("minLength", 0), f"{at}: too short"
        assert len(value) <= schema.get("maxLength", len(value)), f"{at}: too long"
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{at}: pattern"
        if schema.get("format") == "date-time":
            assert datetime.fromisoformat(value).tzinfo is not None, f"{at}: {value}"
        if schema.get("format") == "date":
            date.fromisoformat(value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in value, f"{at}: {name} is missing"
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                validate(item, properties[name], document, f"{at}.{name}")
            elif extra is False:
                raise AssertionError(f"{at}: {name} is not in the document")
            elif isinstance(extra, dict):
                validate(item, extra, document, f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        for n, item in enumerate(value):
            validate(item, schema["items"], document, f"{at}[{n}]")


def response_schema(
    document: dict, path: str, method: str, status: int
) -> dict[str, Any] | None:
    """The JSON schema of one documented answer; None when it is not JSON."""
    operation = document["paths"][path][method]
    assert str(status) in operation["responses"], f"{method} {path} {status}"
    content = operation["responses"][str(status)]["content"]
    if "application/json" not in content:
        return None
    return content["application/json"]["schema"]


@pytest.fixture
async def client(aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool) -> Any:
    await store(db_pool, make_records(count=150))
    settings = make_settings(budgets={"daily_usd": "1", "monthly_usd": "20"})
    return await aiohttp_client(create_app(settings, clock=lambda: NOW))


def test_every_reference_resolves_and_the_validator_knows_every_keyword() -> None:
    document = openapi.document()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                resolve(document, node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    for name, schema in document["components"]["schemas"].items():
        assert set(schema) <= KNOWN, name
    assert document["openapi"].startswith("3.1")


def test_the_validator_rejects_what_breaks_a_schema() -> None:
    document = openapi.document()
    good = {"tokens": 1, "cost": 0.5, "calls": 1}

    validate(good, openapi.ref("Breakdown"), document)
    for bad in (
        {**good, "tokens": -1},
        {**good, "cost": "0.5"},
        {"tokens": 1, "cost": 0.5},
        {**good, "extra": 1},
        {**good, "calls": True},
    ):
        with pytest.raises(AssertionError):
            validate(bad, openapi.ref("Breakdown"), document)


async def test_every_api_route_is_documented(client: Any) -> None:
    document = await (await client.get("/api/openapi.json")).json()

    routes = {
        (route.resource.canonical, route.method.lower())
        for route in client.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api")
        and route.method != "HEAD"
    }
    documented = {
        (path, method)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert routes == documented


GETS = [
    "/api/token-usage",
    "/api/token-usage?period=session",
    "/api/token-usage?period=all&ticker=AAPL",
    "/api/token-usage?period=week&purpose=untagged&cycle_id=c-3",
    "/api/token-usage?period=moon",
    "/api/token-usage/history",
    "/api/token-usage/history?days=3&model=gpt-4o",
    "/api/token-usage/history?days=0",
    "/api/token-usage/cycles",
    "/api/token-usage/cycles?limit=2&ticker=MSFT",
    "/api/token-usage/cycles?limit=x",
    "/api/token-usage/calls",
    "/api/token-usage/calls?limit=3&purpose=news_summary",
    "/api/token-usage/calls?limit=-1",
    "/api/token-usage/export.csv?from=2030-02-01",
    "/api/token-usage/export.csv?from=nope",
    "/api/budget",
    "/api/openapi.json",
]


async def test_every_answer_matches_its_schema(client: Any) -> None:
    document = openapi.document()
    seen_statuses = set()
    for url in GETS:
        path = url.split("?")[0]

        resp = await client.get(url)

        schema = response_schema(document, path, "get", resp.status)
        seen_statuses.add(resp.status)
        if schema is None:
            assert resp.headers["Content-Type"].startswith("text/csv")
            continue
        body = await resp.json()
        validate(body, schema, document, url)
        if resp.status == 200 and path != "/api/openapi.json":
            # Non-empty answers, so the item schemas were exercised too.
            assert body != {}, url
            assert all(v != [] for v in body.values()), url
    assert seen_statuses == {200, 400}


async def test_posted_usage_and_its_answers_match_their_schemas(client: Any) -> None:
    document = openapi.document()
    operation = document["paths"]["/api/usage"]["post"]
    request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    body = {
        "model": "gpt-4o",
        "input_tokens": 100,
        "output_tokens": 20,
        "cached_input_tokens": 10,
        "reasoning_tokens": 5,
        "purpose": "p",
        "ticker": "T",
        "cycle_id": "c",
        "response_time_ms": 12.5,
        "timestamp": "2030-03-01T00:00:00Z",
        "request_id": "doc-1",
        "upstream": "openai",
        "provider": "openai",
    }
    validate(body, request_schema, document)

    for expected_status in (201, 200):
        resp = await client.post("/api/usage", json=body)

        assert resp.status == expected_status
        schema = response_schema(document, "/api/usage", "post", resp.status)
        validate(await resp.json(), schema, document)

    resp = await client.post("/api/usage", json={"model": "m"})
    validate(
        await resp.json(),
        response_schema(document, "/api/usage", "post", resp.status),
        document,
    )
