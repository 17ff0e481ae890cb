from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from gateway.app import create_app
from gateway.config import load_settings
from gateway.keys import PRICES, RECORDER
from gateway.usage import MAX_TOKENS, Usage
from tests.pg_server import ThrowawayServer
from tests.test_recorder import assert_rollup_matches_rows, wait_until

NOW = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
# USD per million tokens: 1 input, 0.25 cached input, 4 output.
PRICING = {"house-model": {"input": "1", "output": "4", "cached_input": "0.25"}}


@pytest.fixture
async def client(aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool) -> Any:
    app = create_app(make_settings(pricing=PRICING), clock=lambda: NOW)
    return await aiohttp_client(app)


async def stored(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch('SELECT * FROM llm_usage ORDER BY "timestamp", id')


async def test_a_posted_call_is_priced_stored_and_answered(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    body = {
        "model": "house-model",
        "input_tokens": 1_000_000,
        "cached_input_tokens": 400_000,
        "output_tokens": 250_000,
        "reasoning_tokens": 50_000,
        "purpose": "trading_decision",
        "ticker": "AAPL",
        "cycle_id": "c-1",
        "response_time_ms": 812.5,
        "timestamp": "2030-03-01T11:59:00+02:00",
        "request_id": "ext-1",
    }

    resp = await client.post("/api/usage", json=body)

    assert resp.status == 201
    answer = await resp.json()
    [row] = await stored(db_pool)
    # 600k uncached at 1 (0.6) + 400k cached at 0.25 (0.1); 250k output at 4.
    assert answer == {
        "id": row["id"],
        "request_id": "ext-1",
        "cost_usd": 1.7,
        "input_cost_usd": 0.7,
        "output_cost_usd": 1.0,
        "fee_cost_usd": 0.0,
        "price_source": "config",
        "duplicate": False,
    }
    assert row["timestamp"] == datetime(2030, 3, 1, 9, 59, tzinfo=UTC)
    assert (row["upstream"], row["endpoint"], row["status"]) == (
        "external",
        "ingest",
        200,
    )
    assert (row["input_tokens"], row["cached_input_tokens"]) == (1_000_000, 400_000)
    assert (row["output_tokens"], row["reasoning_tokens"]) == (250_000, 50_000)
    assert row["total_tokens"] == 1_250_000
    assert row["total_cost_usd"] == Decimal("1.7")
    assert (row["purpose"], row["ticker"], row["cycle_id"]) == (
        "trading_decision",
        "AAPL",
        "c-1",
    )
    assert row["response_time_ms"] == 812.5


async def test_a_catalog_model_is_priced_by_the_same_price_book(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    usage = Usage(input_tokens=1200, output_tokens=300, total_tokens=1500)
    expected = client.app[PRICES].cost("gpt-4o", usage, provider="openai", at=NOW)

    resp = await client.post(
        "/api/usage",
        json={
            "model": "gpt-4o",
            "input_tokens": 1200,
            "output_tokens": 300,
            "upstream": "openai",
        },
    )

    answer = await resp.json()
    [row] = await stored(db_pool)
    assert expected is not None
    assert row["total_cost_usd"] == expected.total_usd > 0
    assert row["price_source"] == answer["price_source"] == "genai-prices"
    assert row["upstream"] == "openai"
    assert row["timestamp"] == NOW


async def test_a_call_is_priced_at_the_tier_it_names(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    tiered = {"model": "o3", "input_tokens": 1000, "output_tokens": 500}

    for tier in ("flex", None, "scale"):
        body = {**tiered, "service_tier": tier} if tier else tiered
        resp = await client.post("/api/usage", json={**body, "provider": "openai"})
        assert resp.status == 201, await resp.text()

    flex, standard, scale = await stored(db_pool)
    # 1,000 x $1 + 500 x $4 per million at flex; twice that at the standard
    # rates, and for a tier the catalog has no price for.
    assert flex["service_tier"] == "flex"
    assert flex["total_cost_usd"] == Decimal("0.003")
    assert standard["service_tier"] is None
    assert standard["total_cost_usd"] == scale["total_cost_usd"] == Decimal("0.006")
    assert scale["service_tier"] == "scale"


async def test_posted_tool_calls_are_charged_per_call(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "provider": "openai",
        "input_tokens": 1000,
        "output_tokens": 500,
        "web_search_calls": 2,
        "file_search_calls": 1,
    }

    resp = await client.post("/api/usage", json=body)

    answer = await resp.json()
    [row] = await stored(db_pool)
    # 2 x $10 + 1 x $2.50 per thousand calls; the tokens at $0.15 and $0.60.
    assert answer["fee_cost_usd"] == 0.0225
    assert answer["cost_usd"] == 0.02295
    assert (row["web_search_calls"], row["file_search_calls"]) == (2, 1)
    assert row["fee_cost_usd"] == Decimal("0.0225")
    assert row["total_cost_usd"] == Decimal("0.02295")


async def test_the_largest_counts_taken_are_stored(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    """The token columns are integers: every count taken, and their sum, fit them."""
    body = {
        "model": "house-model",
        "input_tokens": MAX_TOKENS,
        "cached_input_tokens": MAX_TOKENS,
        "output_tokens": MAX_TOKENS,
        "reasoning_tokens": MAX_TOKENS,
    }

    resp = await client.post("/api/usage", json=body)

    assert resp.status == 201
    answer = await resp.json()
    [row] = await stored(db_pool)
    assert answer["id"] == row["id"]
    assert row["total_tokens"] == 2 * MAX_TOKENS
    assert row["total_cost_usd"] == Decimal(MAX_TOKENS) * Decimal("4.25") / 10**6


async def test_an_unknown_model_is_stored_without_a_cost(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    resp = await client.post(
        "/api/usage",
        json={"model": "made-up-9000", "input_tokens": 5, "output_tokens": 1},
    )

    answer = await resp.json()
    assert resp.status == 201
    assert answer["cost_usd"] is None
    assert answer["price_source"] is None
    [row] = await stored(db_pool)
    assert row["total_cost_usd"] is None
    assert row["request_id"] == answer["request_id"]


async def test_a_repeated_request_id_is_stored_once(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    body = {"model": "house-model", "input_tokens": 10, "output_tokens": 2}
    first = await client.post("/api/usage", json={**body, "request_id": "r-1"})

    again = await client.post(
        "/api/usage", json={**body, "request_id": "r-1", "input_tokens": 99}
    )

    assert (first.status, again.status) == (201, 200)
    one, two = await first.json(), await again.json()
    assert two == {**one, "duplicate": True}
    assert len(await stored(db_pool)) == 1


async def test_concurrent_repeats_of_a_request_id_are_stored_once(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    body = {"model": "house-model", "input_tokens": 7, "output_tokens": 3}

    answers = await asyncio.gather(
        *(
            client.post("/api/usage", json={**body, "request_id": "same"})
            for _ in range(8)
        )
    )

    assert sorted(a.status for a in answers) == [200] * 7 + [201]
    ids = {(await a.json())["id"] for a in answers}
    [row] = await stored(db_pool)
    assert ids == {row["id"]}


async def test_an_id_posted_to_two_replicas_at_once_is_stored_once(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool
) -> None:
    """Each replica stamps its own time, so the unique key alone cannot tell."""
    settings = make_settings(pricing=PRICING)
    one = await aiohttp_client(create_app(settings, clock=lambda: NOW))
    later = NOW + timedelta(microseconds=7)
    two = await aiohttp_client(create_app(settings, clock=lambda: later))
    body = {"model": "house-model", "input_tokens": 7, "output_tokens": 3}

    answers = await asyncio.gather(
        *(
            replica.post("/api/usage", json={**body, "request_id": f"twice-{n}"})
            for n in range(20)
            for replica in (one, two)
        )
    )

    assert sorted(a.status for a in answers) == [200] * 20 + [201] * 20
    rows = await stored(db_pool)
    assert sorted(r["request_id"] for r in rows) == sorted(
        f"twice-{n}" for n in range(20)
    )
    for n in range(20):
        first, second = answers[2 * n : 2 * n + 2]
        assert (await first.json())["id"] == (await second.json())["id"] is not None
    await assert_rollup_matches_rows(db_pool)


async def test_a_repeat_reaching_another_process_is_found_in_the_database(
    client: Any, aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool
) -> None:
    other = await aiohttp_client(create_app(make_settings(), clock=lambda: NOW))
    body = {"model": "m", "input_tokens": 1, "output_tokens": 1, "request_id": "x"}
    await client.post("/api/usage", json=body)

    resp = await other.post("/api/usage", json=body)

    assert resp.status == 200
    assert (await resp.json())["duplicate"] is True
    assert len(await stored(db_pool)) == 1


async def test_a_call_without_a_latency_counts_in_no_average(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    """Unknown is not 0 ms: the average is of the calls that gave one."""
    call = {"model": "house-model", "input_tokens": 10, "output_tokens": 5}
    await client.post("/api/usage", json={**call, "response_time_ms": 1000})
    await client.post("/api/usage", json={**call, "ticker": "AAPL"})

    today = await (await client.get("/api/token-usage?period=today")).json()
    by_ticker = await (await client.get("/api/token-usage?ticker=AAPL")).json()
    listed = await (await client.get("/api/token-usage/calls")).json()

    assert today["api_calls_count"] == 2
    assert today["avg_response_time_ms"] == 1000
    assert by_ticker["api_calls_count"] == 1
    assert by_ticker["avg_response_time_ms"] == 0
    assert sorted(c["response_time_ms"] is None for c in listed["calls"]) == [
        False,
        True,
    ]
    assert [r["response_time_ms"] for r in await stored(db_pool)].count(None) == 1
    await assert_rollup_matches_rows(db_pool)


async def test_an_ingested_call_shows_in_the_statistics(client: Any) -> None:
    await client.post(
        "/api/usage",
        json={
            "model": "house-model",
            "input_tokens": 3000,
            "output_tokens": 1000,
            "purpose": "news_summary",
            "ticker": "MSFT",
        },
    )

    body = await (await client.get("/api/token-usage?period=today")).json()

    assert body["api_calls_count"] == 1
    assert body["breakdown_by_purpose"] == {
        "news_summary": {"tokens": 4000, "cost": 0.007, "calls": 1}
    }
    assert body["breakdown_by_ticker"]["MSFT"]["calls"] == 1


GOOD = {"model": "house-model", "input_tokens": 10, "output_tokens": 5}
BAD_BODIES = [
    ({"input_tokens": 1, "output_tokens": 1}, "model"),
    ({**GOOD, "model": ""}, "model"),
    ({**GOOD, "model": 7}, "model"),
    ({**GOOD, "model": "a\nb"}, "model"),
    ({"model": "m", "output_tokens": 1}, "input_tokens"),
    ({**GOOD, "input_tokens": -1}, "input_tokens"),
    ({**GOOD, "input_tokens": 1.5}, "input_tokens"),
    ({**GOOD, "input_tokens": True}, "input_tokens"),
    ({**GOOD, "input_tokens": "10"}, "input_tokens"),
    ({**GOOD, "output_tokens": 10**13}, "output_tokens"),
    ({**GOOD, "input_tokens": 3_000_000_000}, "input_tokens"),
    ({**GOOD, "cached_input_tokens": 11}, "cached_input_tokens"),
    ({**GOOD, "reasoning_tokens": 6}, "reasoning_tokens"),
    ({**GOOD, "purpose": "x" * 129}, "purpose"),
    ({**GOOD, "purpose": "trailing newline\n"}, "purpose"),
    ({**GOOD, "ticker": 5}, "ticker"),
    ({**GOOD, "cycle_id": ""}, "cycle_id"),
    ({**GOOD, "response_time_ms": -3}, "response_time_ms"),
    ({**GOOD, "response_time_ms": "fast"}, "response_time_ms"),
    ({**GOOD, "response_time_ms": 1e12}, "response_time_ms"),
    ({**GOOD, "timestamp": "yesterday"}, "timestamp"),
    ({**GOOD, "timestamp": "2030-03-02T00:00:00Z"}, "timestamp"),
    ({**GOOD, "timestamp": "1999-12-31T00:00:00Z"}, "timestamp"),
    ({**GOOD, "timestamp": 1234}, "timestamp"),
    ({**GOOD, "timestamp": "0001-01-01T00:00:00+01:00"}, "timestamp"),
    ({**GOOD, "request_id": "has space"}, "request_id"),
    ({**GOOD, "request_id": "r" * 129}, "request_id"),
    ({**GOOD, "upstream": ""}, "upstream"),
    ({**GOOD, "provider": ["openai"]}, "provider"),
    ({**GOOD, "service_tier": "Flex"}, "service_tier"),
    ({**GOOD, "service_tier": 2}, "service_tier"),
    ({**GOOD, "service_tier": ""}, "service_tier"),
    ({**GOOD, "web_search_calls": -1}, "web_search_calls"),
    ({**GOOD, "web_search_calls": "2"}, "web_search_calls"),
    ({**GOOD, "file_search_calls": 1.5}, "file_search_calls"),
    ({**GOOD, "input_token": 3}, "input_token"),
]


async def test_a_bad_field_is_a_400_naming_it(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    for body, param in BAD_BODIES:
        resp = await client.post("/api/usage", json=body)

        assert resp.status == 400, body
        error = (await resp.json())["error"]
        assert error["param"] == param, body
        assert error["type"] == "invalid_request_error"
    assert await stored(db_pool) == []


async def test_a_body_over_the_limit_is_a_413_logged_once(
    aiohttp_client: Any, make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp refuses it before the handler: in the OpenAI shape, and logged."""
    settings = make_settings(pricing=PRICING, server={"max_body_bytes": 1024})
    client = await aiohttp_client(create_app(settings, clock=lambda: NOW))
    caplog.set_level(logging.INFO, logger="gateway")

    resp = await client.post("/api/usage", data=b"{" + b" " * 2048 + b"}")

    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "request_too_large"
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("POST /api/usage refused: ")


async def test_a_body_that_is_not_an_object_is_a_400(client: Any) -> None:
    for raw in (b"not json", b"[1, 2]", b'"text"', b""):
        resp = await client.post(
            "/api/usage", data=raw, headers={"Content-Type": "application/json"}
        )

        assert resp.status == 400, raw
        assert (await resp.json())["error"]["code"] == "invalid_request"


async def test_a_timestamp_without_an_offset_is_utc(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    await client.post("/api/usage", json={**GOOD, "timestamp": "2030-03-01T08:30:00"})

    [row] = await stored(db_pool)
    assert row["timestamp"] == datetime(2030, 3, 1, 8, 30, tzinfo=UTC)


async def test_a_timestamp_slightly_ahead_is_taken(
    client: Any, db_pool: asyncpg.Pool
) -> None:
    ahead = NOW + timedelta(minutes=4)

    resp = await client.post(
        "/api/usage", json={**GOOD, "timestamp": ahead.isoformat()}
    )

    assert resp.status == 201
    [row] = await stored(db_pool)
    assert row["timestamp"] == ahead


async def test_a_post_during_an_outage_is_kept_and_stored_once(
    aiohttp_client: Any, tmp_path: Any
) -> None:
    """Taken (id null) while the database is away, stored once when it is back."""
    server = ThrowawayServer()
    try:
        await asyncio.to_thread(server.start)
        settings = load_settings(
            environ={},
            database={
                "url": server.dsn,
                "data_dir": str(tmp_path / "data"),
                "connect_timeout_s": 1,
            },
            recorder={"flush_interval_ms": 50, "retry_initial_s": 0.1},
            pricing=PRICING,
        )
        client = await aiohttp_client(create_app(settings, clock=lambda: NOW))
        body = {**GOOD, "request_id": "during-outage"}
        before = await client.post("/api/usage", json={**GOOD, "request_id": "before"})
        await asyncio.to_thread(server.stop, "fast")

        taken = await client.post("/api/usage", json=body)
        repeated = await client.post("/api/usage", json=body)
        unavailable = await client.get("/api/token-usage")
        await asyncio.to_thread(server.start)
        recorder = client.app[RECORDER]
        await wait_until(lambda: recorder.spool_depth == 0, "the spool to replay")
        usage = await (await client.get("/api/token-usage")).json()

        assert before.status == 201
        assert (taken.status, repeated.status) == (201, 200)
        assert (await taken.json())["id"] is None
        assert (await taken.json())["cost_usd"] == 0.00003
        assert unavailable.status == 503
        assert (await unavailable.json())["error"]["code"] == "database_unavailable"
        assert usage["api_calls_count"] == 2
        conn = await asyncpg.connect(server.dsn)
        try:
            stored_ids = await conn.fetch("SELECT request_id FROM llm_usage")
        finally:
            await conn.close()
        assert sorted(r["request_id"] for r in stored_ids) == [
            "before",
            "during-outage",
        ]
    finally:
        await asyncio.to_thread(server.close)
