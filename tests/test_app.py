from __future__ import annotations

from typing import Any

from gateway.app import create_app


async def test_health_and_readiness(aiohttp_client: Any, make_settings: Any) -> None:
    client = await aiohttp_client(create_app(make_settings()))

    health = await client.get("/healthz")
    ready = await client.get("/readyz")

    assert health.status == 200
    assert ready.status == 200
    body = await ready.json()
    assert body["database"] == "ok"
    assert body["recorder_queue_depth"] == 0
    assert body["spool_depth"] == 0


async def test_unknown_route_answers_in_the_openai_error_shape(
    aiohttp_client: Any, make_settings: Any
) -> None:
    client = await aiohttp_client(create_app(make_settings()))

    resp = await client.get("/nowhere")

    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_the_root_leads_to_the_dashboard(
    aiohttp_client: Any, make_settings: Any
) -> None:
    client = await aiohttp_client(create_app(make_settings()))

    resp = await client.get("/", allow_redirects=False)

    assert resp.status == 302
    assert resp.headers["Location"] == "/dashboard/"
