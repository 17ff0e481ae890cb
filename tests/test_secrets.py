"""
No secret leaves the gateway: not in a log line, a stored row, a metric or an
API answer.

Two gateways share the run's database: one guards its door with a gateway key
and sends the upstream's own key, the other passes the client's key through.
Both hold a database password, an admin token, a Telegram bot token (its Bot
API unreachable, so the bot's error paths run) and an alert webhook whose URL
carries a secret, with a budget tiny enough that an alert is raised and fails
to go out. Every log record at DEBUG, every row of every gateway table, the
spool, /metrics and every /api answer are then searched for each secret.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.conftest import TABLES
from tests.fake_upstream import FakeUpstream
from tests.harness import (
    BOTH_FRONT_DOORS,
    CHAT,
    chat_body,
    start_fake,
    stored_rows,
    upstreams_at,
)
from tests.test_recorder import wait_until

FRONT_DOORS = BOTH_FRONT_DOORS

CLIENT_KEY = "sk-client-SECRET-c1f3a9d0"
WRONG_KEY = "sk-wrong-SECRET-77aa01"
UPSTREAM_KEY = "sk-upstream-SECRET-9b2e44"
GATEWAY_KEY = "gk-gateway-SECRET-4d1c5e"
ADMIN_TOKEN = "admin-SECRET-e8f0b2c4"
WRONG_ADMIN_TOKEN = "admin-wrong-SECRET-0f0fq7q7"
BOT_TOKEN = "987654:bot-SECRET-aa11bb22"
WEBHOOK_SECRET = "hook-SECRET-5c5c6d6d"
DATABASE_PASSWORD = "pgpass-SECRET-3e3e7a7a"
SECRETS = [
    DATABASE_PASSWORD,
    CLIENT_KEY,
    WRONG_KEY,
    UPSTREAM_KEY,
    GATEWAY_KEY,
    ADMIN_TOKEN,
    WRONG_ADMIN_TOKEN,
    BOT_TOKEN,
    WEBHOOK_SECRET,
]
# Enough of each that a secret cut in two or partly masked is still caught.
FRAGMENTS = sorted({s.split("SECRET-")[1] for s in SECRETS} | {"987654:"})

API_PATHS = [
    "/api/token-usage",
    "/api/token-usage?period=month",
    "/api/token-usage/history?days=2",
    "/api/token-usage/cycles",
    "/api/token-usage/calls",
    "/api/token-usage/export.csv",
    "/api/budget",
    "/api/openapi.json",
    "/metrics",
    "/readyz",
    "/healthz",
]


async def url_with_password(url: str) -> str:
    """
    *url* with DATABASE_PASSWORD in it, when the server then still lets us in.

    A server that trusts loopback ignores the password, so the gateway holds
    one more secret to leak; one that checks passwords keeps its own URL.
    """
    scheme, _, rest = url.partition("://")
    user, at, host = rest.partition("@")
    if not at or ":" in user:
        return url
    candidate = f"{scheme}://{user}:{DATABASE_PASSWORD}@{host}"
    try:
        conn = await asyncpg.connect(candidate, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return url
    await conn.close()
    return candidate


def settings_for(
    make_settings: Any,
    fake: FakeUpstream,
    dead_port: int,
    data_dir: Path,
    *,
    keyed: bool,
    database_url: str,
) -> Any:
    dead = f"http://127.0.0.1:{dead_port}"
    server: dict[str, Any] = {"admin_token": ADMIN_TOKEN, "log_level": "DEBUG"}
    if keyed:
        server["gateway_keys"] = [{"key": GATEWAY_KEY, "label": "bot-one"}]
    upstreams = upstreams_at(fake.base_url, api_key=UPSTREAM_KEY)  # type: ignore[attr-defined]
    # An upstream that refuses connections, so the error paths log too.
    upstreams["deepseek"]["base_url"] = f"{dead}/v1"
    return make_settings(
        database={"data_dir": str(data_dir), "url": database_url},
        server=server,
        upstreams=upstreams,
        budgets={"daily_usd": "0.000001", "alert_thresholds": [0.5]},
        alerts={
            "webhook_url": f"{dead}/hooks/{WEBHOOK_SECRET}",
            "retry_initial_s": 0.05,
            "retry_max_s": 0.5,
        },
        telegram={"bot_token": BOT_TOKEN, "chat_id": "4242", "api_base": dead},
    )


async def run_traffic(client: TestClient, key: str) -> list[str]:
    """Calls good and bad with *key*; return every answer's headers and body."""
    seen: list[str] = []

    async def keep(resp: aiohttp.ClientResponse) -> None:
        seen.append(repr(dict(resp.headers)))
        seen.append((await resp.read()).decode("utf-8", "replace"))

    auth = {"Authorization": f"Bearer {key}"}
    await keep(await client.post(CHAT, json=chat_body(), headers=auth))
    await keep(await client.post(CHAT, json=chat_body(stream=True), headers=auth))
    await keep(
        await client.post(CHAT, json=chat_body(model="deepseek-chat"), headers=auth)
    )
    await keep(await client.get("/v1/models", headers=auth))
    await keep(
        await client.post(
            CHAT, json=chat_body(), headers={"Authorization": f"Bearer {WRONG_KEY}"}
        )
    )
    await keep(await client.post(CHAT, json=chat_body(), headers={"X-Api-Key": key}))
    for path in API_PATHS:
        for token in (ADMIN_TOKEN, WRONG_ADMIN_TOKEN):
            await keep(
                await client.get(path, headers={"Authorization": f"Bearer {token}"})
            )
        await keep(await client.get(path, headers={"X-Admin-Token": ADMIN_TOKEN}))
    return seen


async def stored_text(pool: asyncpg.Pool) -> list[str]:
    """Every row of every gateway table, each as PostgreSQL renders it."""
    texts = []
    for table in TABLES:
        texts += [r[0] for r in await pool.fetch(f"SELECT t::text FROM {table} t")]
    return texts


def spooled_text(data_dir: Path) -> list[str]:
    return [
        p.read_bytes().decode("utf-8", "replace")
        for p in data_dir.rglob("*")
        if p.is_file()
    ]


def log_text(records: list[logging.LogRecord]) -> list[str]:
    """Each record as a handler would write it, with its extra fields."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [formatter.format(r) + " " + repr(vars(r)) for r in records]


def assert_no_secret(texts: list[str], where: str) -> None:
    for text in texts:
        for secret in SECRETS + FRAGMENTS:
            assert secret not in text, f"{secret!r} found in {where}: {text[:400]!r}"


async def test_no_secret_appears_in_logs_rows_metrics_or_answers(
    aiohttp_client: Any,
    make_settings: Any,
    database_url: str,
    db_pool: asyncpg.Pool,
    aiohttp_server: Any,
    unused_tcp_port: int,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = await start_fake(aiohttp_server)
    url = await url_with_password(database_url)
    keyed = await aiohttp_client(
        create_app(
            settings_for(
                make_settings,
                fake,
                unused_tcp_port,
                tmp_path / "a",
                keyed=True,
                database_url=url,
            )
        )
    )
    passing = await aiohttp_client(
        create_app(
            settings_for(
                make_settings,
                fake,
                unused_tcp_port,
                tmp_path / "b",
                keyed=False,
                database_url=url,
            )
        )
    )

    answers = await run_traffic(keyed, GATEWAY_KEY)
    answers += await run_traffic(passing, CLIENT_KEY)
    for client in (keyed, passing):
        await stored_rows(client.server.app, db_pool)
    # The alert's deliveries and the bot have failed at least once each.
    await wait_until(
        lambda: (
            {"gateway.alerts", "gateway.telegram"}
            <= {r.name for r in caplog.records if r.levelno >= logging.WARNING}
        ),
        "failed deliveries",
    )
    answers += await run_traffic(keyed, GATEWAY_KEY)

    sent_keys = [r.headers.get("Authorization") for r in fake.received]
    assert f"Bearer {UPSTREAM_KEY}" in sent_keys
    assert f"Bearer {CLIENT_KEY}" in sent_keys
    rows = await stored_rows(keyed.server.app, db_pool)
    assert {r["key_label"] for r in rows} == {"bot-one", None}
    assert await db_pool.fetchval("SELECT count(*) FROM gateway_once") >= 1
    assert_no_secret(log_text(caplog.records), "a log record")
    assert_no_secret(await stored_text(db_pool), "a stored row")
    assert_no_secret(spooled_text(tmp_path), "the data directory")
    assert_no_secret(answers, "an answer")
