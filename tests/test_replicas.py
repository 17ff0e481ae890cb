"""
Two gateways on one database, as two replicas behind a load balancer.

Traffic is split between them; the totals either one reports are the sum of
both, no row is doubled, and a budget alert both of them see is sent once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.budgets import BUDGETS
from tests.harness import CHAT, chat_body, start_fake, stored_rows, upstreams_at
from tests.test_recorder import assert_rollup_matches_rows

CALLS = {"a": 40, "b": 60}
THRESHOLDS = [0.5, 1.0]


async def start_webhook(aiohttp_server: Any) -> tuple[list[Any], str]:
    """A webhook receiver; return what it was sent and its URL."""
    posts: list[Any] = []

    async def receive(request: web.Request) -> web.Response:
        posts.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    server = await aiohttp_server(app)
    return posts, str(server.make_url("/hook"))


async def test_two_replicas_add_up_and_alert_once(
    aiohttp_client: Any,
    aiohttp_server: Any,
    make_settings: Any,
    db_pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    fake = await start_fake(aiohttp_server)
    posts, hook_url = await start_webhook(aiohttp_server)
    replicas: dict[str, TestClient] = {}
    for name in CALLS:
        settings = make_settings(
            database={"data_dir": str(tmp_path / name)},
            upstreams=upstreams_at(fake.base_url),  # type: ignore[attr-defined]
            # A limit the first call of either replica goes past.
            budgets={"daily_usd": "0.000001", "alert_thresholds": THRESHOLDS},
            alerts={"webhook_url": hook_url},
        )
        replicas[name] = await aiohttp_client(create_app(settings))

    async def call(name: str, number: int) -> int:
        headers = {"X-Request-Id": f"{name}-{number:03d}", "X-Purpose": name}
        body = chat_body(stream=number % 3 == 0)
        resp = await replicas[name].post(CHAT, json=body, headers=headers)
        await resp.read()
        return resp.status

    statuses = await asyncio.gather(
        *(call(name, n) for name, count in CALLS.items() for n in range(count))
    )
    for client in replicas.values():
        await stored_rows(client.server.app, db_pool)
    for client in replicas.values():
        await client.server.app[BUDGETS].wait_idle()
    summaries = [
        await (await client.get("/api/token-usage")).json()
        for client in replicas.values()
    ]

    total = sum(CALLS.values())
    assert statuses == [200] * total
    rows = await stored_rows(replicas["a"].server.app, db_pool)
    assert len({r["request_id"] for r in rows}) == len(rows) == total
    for summary in summaries:
        assert summary["api_calls_count"] == total
        assert summary["total_tokens"] == total * 26
        assert {k: v["calls"] for k, v in summary["breakdown_by_purpose"].items()} == (
            CALLS
        )
    assert summaries[0]["total_cost_usd"] == summaries[1]["total_cost_usd"]
    await assert_rollup_matches_rows(db_pool)
    claims = await db_pool.fetchval(
        "SELECT count(*) FROM gateway_once WHERE kind = 'budget_alert'"
    )
    assert claims == len(THRESHOLDS)
    assert len(posts) == len(THRESHOLDS)
