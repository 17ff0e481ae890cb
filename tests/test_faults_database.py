"""
The database goes away for real: a server these tests start and stop.

Each test asserts on the rows stored once the server is back, not on what
the recorder says about itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway import db
from gateway.app import create_app
from gateway.config import DatabaseSettings, RecorderSettings, load_settings
from gateway.keys import RECORDER
from gateway.record import UsageRecord
from gateway.recorder import Recorder
from tests.fake_upstream import FakeUpstream
from tests.harness import serve_once
from tests.pg_server import ThrowawayServer
from tests.test_recorder import assert_rollup_matches_rows, make_record, wait_until

OUTAGE_RECORDER = RecorderSettings(
    flush_interval_ms=50, batch_size=200, retry_initial_s=0.1, retry_max_s=0.4
)


@pytest.fixture(scope="module")
def pg() -> Iterator[ThrowawayServer]:
    server = ThrowawayServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


async def empty_schema(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


@pytest.fixture
async def pg_pool(pg: ThrowawayServer) -> AsyncIterator[asyncpg.Pool]:
    """A migrated, empty schema on the throwaway server, which is running."""
    if not pg.running:
        pg.start()
    await empty_schema(pg.dsn)
    settings = DatabaseSettings(url=pg.dsn, connect_timeout_s=1)
    pool = await db.create_pool(pg.dsn, settings)
    async with pool.acquire() as conn:
        await db.apply_migrations(conn)
    try:
        yield pool
    finally:
        await pool.close()


async def assert_stored_exactly(pool: asyncpg.Pool, sent: list[UsageRecord]) -> None:
    count, tokens, cost = await pool.fetchrow(
        "SELECT count(*), sum(total_tokens), sum(total_cost_usd) FROM llm_usage"
    )
    assert count == len(sent)
    assert tokens == sum(r.total_tokens for r in sent)
    assert cost == sum((r.total_cost_usd or Decimal(0) for r in sent), Decimal(0))
    assert await pool.fetchval("SELECT sum(calls) FROM llm_usage_daily") == len(sent)
    await assert_rollup_matches_rows(pool)


async def test_an_outage_under_steady_submits_loses_no_row(
    pg: ThrowawayServer, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """About 2000 records a second for 3 s; the server is down for the middle 1.2 s."""
    recorder = Recorder(pg_pool, OUTAGE_RECORDER, tmp_path / "spool")
    await recorder.start()
    loop = asyncio.get_running_loop()
    sent: list[UsageRecord] = []

    async def submit_steadily(duration_s: float) -> None:
        end = loop.time() + duration_s
        while loop.time() < end:
            for _ in range(10):
                record = make_record(len(sent))
                sent.append(record)
                recorder.submit(record)
            await asyncio.sleep(0.005)

    async def take_the_server_away() -> None:
        await asyncio.sleep(0.8)
        await asyncio.to_thread(pg.stop, "immediate")
        await asyncio.sleep(1.2)
        await asyncio.to_thread(pg.start)

    await asyncio.gather(submit_steadily(3.0), take_the_server_away())
    await wait_until(
        lambda: recorder.spool_depth == 0 and recorder.queue_depth == 0,
        "the spool to be replayed",
    )
    await recorder.close()

    assert recorder.metrics.rows_spooled > 0, "the outage never reached the recorder"
    assert recorder.metrics.rows_replayed == recorder.metrics.rows_spooled
    await assert_stored_exactly(pg_pool, sent)
    assert list((tmp_path / "spool").glob("0*.jsonl")) == []


async def test_the_gateway_starts_and_spools_while_the_database_is_away(
    pg: ThrowawayServer, aiohttp_client: Any, tmp_path: Path
) -> None:
    """Started with the server down: served, spooled, then migrated and replayed."""
    if not pg.running:
        pg.start()
    await empty_schema(pg.dsn)
    await asyncio.to_thread(pg.stop, "fast")
    settings = load_settings(
        environ={},
        database={
            "url": pg.dsn,
            "data_dir": str(tmp_path / "data"),
            "connect_timeout_s": 1,
        },
        recorder=OUTAGE_RECORDER.model_dump(),
    )
    client = await aiohttp_client(create_app(settings))
    recorder = client.app[RECORDER]
    sent = [make_record(i) for i in range(500)]

    for record in sent:
        recorder.submit(record)
    await wait_until(lambda: recorder.spool_depth == 500, "the records to spool")
    degraded = await client.get("/readyz")
    await asyncio.to_thread(pg.start)
    await wait_until(lambda: recorder.spool_depth == 0, "the spool to be replayed")
    # The schema is finished just after the first rows land; ready follows.
    for _ in range(100):
        ready = await client.get("/readyz")
        if ready.status == 200:
            break
        await asyncio.sleep(0.1)

    assert degraded.status == 503
    assert (await degraded.json())["database"] == "unreachable"
    assert ready.status == 200
    pool = await db.create_pool(pg.dsn, DatabaseSettings(url=pg.dsn))
    try:
        await assert_stored_exactly(pool, sent)
    finally:
        await pool.close()


def test_serve_stops_with_one_line_when_the_database_refuses(
    database_url: str, tmp_path: Path
) -> None:
    """A server that answers but has no such database: a mistake, not an outage."""
    missing = database_url.rpartition("/")[0] + "/tallygate_no_such_database"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "{missing}"\ndata_dir = "{tmp_path / "data"}"\n'
        "[server]\nport = 0\n"
    )

    done = serve_once(config)

    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(errors) == 1, done.stderr
    assert "tallygate_no_such_database" in errors[0]
    assert "does not exist" in errors[0]


async def test_an_unreachable_server_is_told_apart_from_a_refusal(
    database_url: str,
) -> None:
    refused = DatabaseSettings(url=database_url.rpartition("/")[0] + "/nowhere_db")
    away = DatabaseSettings(url="postgresql://postgres@127.0.0.1:1/x")

    with pytest.raises(db.DatabaseRefused, match="nowhere_db"):
        await db.open_database(refused, tolerate_outage=True)
    database = await db.open_database(away, tolerate_outage=True)
    try:
        assert not database.ready.is_set()
    finally:
        await database.close()
    with pytest.raises(db.DatabaseRefused, match=r"127\.0\.0\.1:1"):
        await db.open_database(away)


async def test_calls_through_the_proxy_are_answered_and_kept_across_an_outage(
    pg: ThrowawayServer, pg_pool: asyncpg.Pool, aiohttp_client: Any, tmp_path: Path
) -> None:
    """Steady proxied calls for 3 s; the server is down for the middle 1.2 s."""
    fake = FakeUpstream()
    upstream = await aiohttp_client(fake.app)
    settings = load_settings(
        environ={},
        database={
            "url": pg.dsn,
            "data_dir": str(tmp_path / "data"),
            "connect_timeout_s": 1,
        },
        recorder=OUTAGE_RECORDER.model_dump(),
        upstreams={
            "openai": {"base_url": str(upstream.make_url("/v1")), "default": True}
        },
    )
    client = await aiohttp_client(create_app(settings))
    recorder = client.app[RECORDER]
    loop = asyncio.get_running_loop()
    statuses: list[int] = []
    tokens_answered = 0

    async def call_steadily(worker: int, duration_s: float) -> None:
        nonlocal tokens_answered
        end = loop.time() + duration_s
        for i in range(100_000):
            if loop.time() >= end:
                return
            resp = await client.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": []},
                headers={"X-Request-Id": f"outage-{worker}-{i}"},
            )
            statuses.append(resp.status)
            if resp.status == 200:
                tokens_answered += (await resp.json())["usage"]["total_tokens"]

    async def take_the_server_away() -> None:
        await asyncio.sleep(0.8)
        await asyncio.to_thread(pg.stop, "immediate")
        await asyncio.sleep(1.2)
        await asyncio.to_thread(pg.start)

    await asyncio.gather(
        *(call_steadily(n, 3.0) for n in range(8)), take_the_server_away()
    )
    await wait_until(
        lambda: recorder.spool_depth == 0 and recorder.queue_depth == 0,
        "the spool to be replayed",
    )
    await recorder.flush()

    assert set(statuses) == {200}
    assert recorder.metrics.rows_spooled > 0, "the outage never reached the recorder"
    count, tokens = await pg_pool.fetchrow(
        "SELECT count(*), sum(total_tokens) FROM llm_usage"
    )
    assert count == len(statuses)
    assert tokens == tokens_answered
    await assert_rollup_matches_rows(pg_pool)
