from __future__ import annotations

from typing import Any

import asyncpg

from gateway.app import create_app
from gateway.keys import RECORDER
from tests.test_recorder import make_record, wait_until

# What a full disk makes PostgreSQL answer every write with, while reads work.
REFUSE_WRITES = """
CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full';
END $$;
CREATE TRIGGER refuse_writes BEFORE INSERT ON llm_usage
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_writes();
"""


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


async def test_not_ready_while_the_database_answers_but_refuses_writes(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool
) -> None:
    settings = make_settings(
        recorder={"flush_interval_ms": 20, "retry_initial_s": 0.05, "retry_max_s": 0.1}
    )
    client = await aiohttp_client(create_app(settings))
    recorder = client.server.app[RECORDER]
    await db_pool.execute(REFUSE_WRITES)

    recorder.submit(make_record(0))
    await wait_until(lambda: recorder.spool_depth == 1, "the record to be spooled")
    refusing = await client.get("/readyz")
    await db_pool.execute("DROP TRIGGER refuse_writes ON llm_usage")
    await wait_until(lambda: recorder.spool_depth == 0, "the spool to be replayed")
    ready = await client.get("/readyz")

    assert refusing.status == 503
    assert (await refusing.json())["database"] == "not writable"
    assert ready.status == 200


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
