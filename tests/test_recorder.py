from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg

from gateway.config import RecorderSettings
from gateway.record import UsageRecord, new_request_id
from gateway.recorder import Recorder, write_batch

T0 = datetime(2030, 3, 1, 12, tzinfo=UTC)


def make_record(i: int, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": new_request_id(),
        "timestamp": T0 + timedelta(hours=i % 48),
        "model": ("gpt-4o-mini", "deepseek-chat")[i % 2],
        "purpose": ("trading_decision", None, "news")[i % 3],
        "input_tokens": 100 + i,
        "cached_input_tokens": i % 7,
        "output_tokens": 10 + i % 13,
        "reasoning_tokens": i % 5,
        "total_tokens": 110 + i + i % 13,
        "input_cost_usd": Decimal("0.000015") * (i + 1),
        "output_cost_usd": Decimal("0.000006"),
        "total_cost_usd": Decimal("0.000015") * (i + 1) + Decimal("0.000006"),
        "price_source": "genai-prices",
        "response_time_ms": 12.5,
        "status": 500 if i % 17 == 0 else 200,
    }
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]


async def assert_rollup_matches_rows(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT (\"timestamp\" AT TIME ZONE 'UTC')::date AS day, model,"
        " coalesce(purpose, '') AS purpose, count(*) AS calls,"
        " count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors,"
        " sum(input_tokens) AS input_tokens, sum(total_tokens) AS total_tokens,"
        " sum(total_cost_usd) AS cost_usd, sum(response_time_ms) AS latency_ms_sum"
        " FROM llm_usage GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    rollup = await pool.fetch(
        "SELECT day, model, purpose, calls, errors, input_tokens, total_tokens,"
        " cost_usd, latency_ms_sum FROM llm_usage_daily ORDER BY 1, 2, 3"
    )
    assert [dict(r) for r in rows] == [dict(r) for r in rollup]


async def test_rows_and_rollup_agree_after_thousands_of_records(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    recorder = Recorder(db_pool, RecorderSettings(batch_size=500), tmp_path)
    await recorder.start()

    for i in range(5000):
        recorder.submit(make_record(i))
    await recorder.close()

    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 5000
    assert recorder.metrics.rows_written == 5000
    await assert_rollup_matches_rows(db_pool)


async def test_a_batch_written_twice_is_stored_and_counted_once(
    db_pool: asyncpg.Pool,
) -> None:
    batch = [make_record(i) for i in range(50)]

    first = await write_batch(db_pool, batch)
    second = await write_batch(db_pool, batch + batch[:3])

    assert (first, second) == (50, 0)
    assert await db_pool.fetchval("SELECT sum(calls) FROM llm_usage_daily") == 50
    await assert_rollup_matches_rows(db_pool)


async def test_a_record_the_database_refuses_is_set_aside_and_the_rest_stored(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    recorder = Recorder(db_pool, RecorderSettings(), tmp_path)
    await recorder.start()
    good = [make_record(i) for i in range(9)]
    bad = make_record(9, input_tokens=2**40)

    for record in [*good[:4], bad, *good[4:]]:
        recorder.submit(record)
    await recorder.close()

    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 9
    assert bad.request_id.encode() in (tmp_path / "rejected.jsonl").read_bytes()
    assert recorder.spool_depth == 0


async def test_records_spooled_while_the_database_is_away_are_replayed_on_start(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    dead = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    await dead.close()
    offline = Recorder(dead, RecorderSettings(), tmp_path)  # type: ignore[arg-type]
    await offline.start()
    records = [make_record(i) for i in range(300)]
    for record in records:
        offline.submit(record)
    await offline.close()
    assert offline.spool_depth == 300

    online = Recorder(db_pool, RecorderSettings(), tmp_path)
    await online.start()
    for _ in range(50):
        await online.flush()
        if online.spool_depth == 0:
            break
        await online._replay()
    await online.close()

    assert online.spool_depth == 0
    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 300
    await assert_rollup_matches_rows(db_pool)
