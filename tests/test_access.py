from __future__ import annotations

import logging
from typing import Any

import asyncpg
import pytest

from gateway.app import create_app

TOKEN = "admin-5ecret-token-value"
DASHBOARD = "https://dash.example"
PROTECTED = [
    ("GET", "/api/token-usage"),
    ("GET", "/api/token-usage/history"),
    ("GET", "/api/token-usage/cycles"),
    ("GET", "/api/token-usage/calls"),
    ("GET", "/api/token-usage/export.csv"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/budget"),
    ("POST", "/api/usage"),
    ("GET", "/api/no-such-route"),
    ("GET", "/metrics"),
]
USAGE = {"model": "m", "input_tokens": 1, "output_tokens": 1}


@pytest.fixture
def start_client(aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool) -> Any:
    async def start(**server: Any) -> Any:
        return await aiohttp_client(create_app(make_settings(server=server)))

    return start


async def call(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    if method == "POST":
        kwargs.setdefault("json", USAGE)
    return await client.request(method, path, **kwargs)


async def test_without_an_admin_token_the_api_is_open(start_client: Any) -> None:
    client = await start_client()

    for method, path in PROTECTED:
        resp = await call(client, method, path)

        expected = 404 if "no-such" in path else 201 if method == "POST" else 200
        assert resp.status == expected, path


async def test_with_an_admin_token_the_api_and_metrics_need_it(
    start_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await start_client(admin_token=TOKEN)

    for method, path in PROTECTED:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"X-Admin-Token": TOKEN[:-1]},
        ):
            resp = await call(client, method, path, headers=headers)

            assert resp.status == 401, (path, headers)
            body = await resp.json()
            assert body["error"]["code"] == "invalid_api_key"
            assert body["error"]["type"] == "invalid_request_error"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in await resp.text()
    assert TOKEN not in caplog.text


async def test_the_right_token_in_either_header_lets_a_call_in(
    start_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await start_client(admin_token=TOKEN)

    for method, path in PROTECTED:
        for headers in (
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": f"bearer {TOKEN}"},
            {"X-Admin-Token": TOKEN},
        ):
            resp = await call(client, method, path, headers=headers)

            assert resp.status != 401, (path, headers)
            assert TOKEN not in await resp.text()
    assert TOKEN not in caplog.text


async def test_health_checks_and_the_dashboard_stay_open(start_client: Any) -> None:
    client = await start_client(admin_token=TOKEN)

    for path in ("/healthz", "/readyz", "/dashboard/", "/dashboard/assets/x.js"):
        resp = await client.get(path, allow_redirects=False)

        assert resp.status != 401, path


async def test_a_dotted_path_cannot_step_around_the_token(start_client: Any) -> None:
    client = await start_client(admin_token=TOKEN)

    for path in ("/healthz/../api/token-usage", "/x/%2E%2E/api/token-usage"):
        resp = await client.get(path)

        assert resp.status in {401, 404}, path


async def test_cors_is_off_unless_origins_are_named(start_client: Any) -> None:
    client = await start_client()

    simple = await client.get("/api/token-usage", headers={"Origin": DASHBOARD})
    preflight = await client.options(
        "/api/token-usage",
        headers={"Origin": DASHBOARD, "Access-Control-Request-Method": "GET"},
    )

    assert simple.status == 200
    assert "Access-Control-Allow-Origin" not in simple.headers
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert preflight.status >= 400


async def test_a_named_origin_gets_preflight_and_allow_origin(
    start_client: Any,
) -> None:
    client = await start_client(admin_token=TOKEN, cors_origins=[DASHBOARD])
    asking = {"Origin": DASHBOARD, "Access-Control-Request-Method": "GET"}

    preflight = await client.options("/api/token-usage", headers=asking)
    refused = await client.get("/api/token-usage", headers={"Origin": DASHBOARD})
    allowed = await client.get(
        "/api/token-usage",
        headers={"Origin": DASHBOARD, "Authorization": f"Bearer {TOKEN}"},
    )
    streamed = await client.get(
        "/api/token-usage/export.csv",
        headers={"Origin": DASHBOARD, "X-Admin-Token": TOKEN},
    )

    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    # The page must be able to read a 401 to know it should ask for the token.
    assert refused.status == 401
    assert refused.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert allowed.status == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "Origin" in allowed.headers["Vary"]
    assert streamed.status == 200
    assert streamed.headers["Access-Control-Allow-Origin"] == DASHBOARD


async def test_other_origins_and_other_paths_get_no_cors(start_client: Any) -> None:
    client = await start_client(cors_origins=[DASHBOARD])
    other = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}

    preflight = await client.options("/api/token-usage", headers=other)
    simple = await client.get("/api/token-usage", headers=other)
    health = await client.get("/healthz", headers={"Origin": DASHBOARD})
    metrics = await client.get("/metrics", headers={"Origin": DASHBOARD})

    for resp in (preflight, simple, health, metrics):
        assert "Access-Control-Allow-Origin" not in resp.headers
