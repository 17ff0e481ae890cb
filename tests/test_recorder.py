from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson
import pytest

from gateway import recorder as recorder_module
from gateway.config import RecorderSettings
from gateway.record import UsageRecord, new_request_id
from gateway.recorder import (
    COPY_AT_ROWS,
    STALLED_WRITE_S,
    Recorder,
    Spool,
    write_batch,
)

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
        " sum(total_cost_usd) AS cost_usd, count(response_time_ms) AS latency_count,"
        " coalesce(sum(response_time_ms), 0) AS latency_ms_sum"
        " FROM llm_usage GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    rollup = await pool.fetch(
        "SELECT day, model, purpose, calls, errors, input_tokens, total_tokens,"
        " cost_usd, latency_count, latency_ms_sum FROM llm_usage_daily"
        " ORDER BY 1, 2, 3"
    )
    # Float sums depend on the order rows are added in: compare those apart.
    latency = [r["latency_ms_sum"] for r in rows]
    floats = {"latency_ms_sum"}
    assert [{k: v for k, v in r.items() if k not in floats} for r in rows] == [
        {k: v for k, v in r.items() if k not in floats} for r in rollup
    ]
    assert [r["latency_ms_sum"] for r in rollup] == pytest.approx(latency)


async def wait_until(
    condition: Callable[[], bool], what: str, limit_s: float = 20
) -> None:
    """Poll *condition* until it holds; fail naming *what* after *limit_s*."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


async def closed_pool(dsn: str) -> asyncpg.Pool:
    """A pool that fails every query the way a vanished server does."""
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=1)
    await pool.close()
    return pool


def fast_retries(**fields: object) -> RecorderSettings:
    values: dict[str, object] = {
        "flush_interval_ms": 20,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
    }
    values.update(fields)
    return RecorderSettings(**values)  # type: ignore[arg-type]


def segments(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("0*.jsonl"))


def spooled_ids(spool_dir: Path) -> set[str]:
    return {
        UsageRecord.from_json(line).request_id
        for path in segments(spool_dir)
        for line in path.read_bytes().splitlines()
    }


def tear_last_line(segment: Path) -> None:
    """Append half a line with no newline, as a crash mid-append leaves."""
    torn = make_record(99).to_json()
    with open(segment, "ab") as f:
        f.write(torn[: len(torn) // 2])


async def spool_records(dsn: str, spool_dir: Path, records: list[UsageRecord]) -> None:
    """Leave *records* in *spool_dir*, as a gateway whose database was away."""
    offline = Recorder(await closed_pool(dsn), fast_retries(), spool_dir)
    before = offline.spool_depth
    await offline.start()
    for record in records:
        offline.submit(record)
    await offline.close()
    assert offline.spool_depth == before + len(records)


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


# A batch smaller than COPY_AT_ROWS goes by JSON inserts (one, or several of
# statement_rows each), a larger one by COPY: each test of write_batch runs
# through all three.
BOTH_STATEMENTS = pytest.mark.parametrize(
    ("size", "rows"),
    [(50, None), (50, 16), (COPY_AT_ROWS, None)],
    ids=["json-insert", "json-inserts", "copy"],
)


@BOTH_STATEMENTS
async def test_a_batch_written_twice_is_stored_and_counted_once(
    db_pool: asyncpg.Pool, size: int, rows: int | None
) -> None:
    batch = [make_record(i) for i in range(size)]

    first = await write_batch(db_pool, batch, statement_rows=rows)
    second = await write_batch(db_pool, batch + batch[:3], statement_rows=rows)

    assert (first, second) == (size, 0)
    assert await db_pool.fetchval("SELECT sum(calls) FROM llm_usage_daily") == size
    await assert_rollup_matches_rows(db_pool)


@BOTH_STATEMENTS
async def test_a_batch_holding_some_stored_rows_stores_only_the_new_ones(
    db_pool: asyncpg.Pool, size: int, rows: int | None
) -> None:
    """COPY refuses the whole batch; the conflict-skipping insert takes it."""
    stored = [make_record(i) for i in range(size)]
    await write_batch(db_pool, stored, statement_rows=rows)
    fresh = [make_record(i) for i in range(size, 2 * size)]

    added = await write_batch(
        db_pool, [*fresh[:10], *stored[5:8], *fresh[10:]], statement_rows=rows
    )

    assert added == size
    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 2 * size
    await assert_rollup_matches_rows(db_pool)


@BOTH_STATEMENTS
async def test_a_conflicting_batch_inside_a_transaction_leaves_it_usable(
    db_pool: asyncpg.Pool, size: int, rows: int | None
) -> None:
    stored = [make_record(i) for i in range(size)]
    await write_batch(db_pool, stored, statement_rows=rows)

    async with db_pool.acquire() as conn, conn.transaction():
        added = await write_batch(
            conn, [*stored, make_record(size)], statement_rows=rows
        )
        in_transaction = await conn.fetchval("SELECT count(*) FROM llm_usage")

    assert (added, in_transaction) == (1, size + 1)
    assert await db_pool.fetchval("SELECT sum(calls) FROM llm_usage_daily") == size + 1


@pytest.mark.parametrize(
    "fields",
    [
        {"input_tokens": 2**40},  # past integer (COPY: refused by the client)
        {"status": 70_000},  # past smallint
        {"ticker": "NUL\x00"},  # encodable, refused by the server
        {"tags": {"note": "NUL\x00"}},  # the same inside jsonb
        {"input_cost_usd": Decimal("1e9")},  # past numeric(20, 12)
    ],
    ids=["int", "smallint", "nul", "jsonb-nul", "numeric"],
)
@BOTH_STATEMENTS
async def test_each_kind_of_unstorable_value_costs_only_its_own_record(
    db_pool: asyncpg.Pool,
    tmp_path: Path,
    fields: dict[str, object],
    size: int,
    rows: int | None,
) -> None:
    recorder = Recorder(
        db_pool, RecorderSettings(statement_rows=rows or 1000), tmp_path
    )
    await recorder.start()
    good = [make_record(i) for i in range(size)]
    bad = make_record(size, **fields)

    for record in [*good[:3], bad, *good[3:]]:
        recorder.submit(record)
    await recorder.close()

    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == size
    assert bad.request_id.encode() in (tmp_path / "rejected.jsonl").read_bytes()
    assert recorder.spool_depth == 0
    await assert_rollup_matches_rows(db_pool)


async def test_a_small_batch_is_stored_in_inserts_of_statement_rows_each(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    settings = RecorderSettings(flush_interval_ms=60_000, statement_rows=30)
    recorder = Recorder(db_pool, settings, tmp_path)
    await recorder.start()

    for i in range(100):
        recorder.submit(make_record(i))
    await recorder.flush()
    await recorder.close()

    # Each insert is a transaction of its own: its rows share their xmin.
    transactions = await db_pool.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM llm_usage"
    )
    assert transactions == 4
    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 100
    await assert_rollup_matches_rows(db_pool)


async def test_a_clean_close_writes_everything_still_waiting(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Nothing is flushed before close: the interval is far away."""
    settings = RecorderSettings(flush_interval_ms=60_000, batch_size=1000)
    recorder = Recorder(db_pool, settings, tmp_path)
    await recorder.start()

    for i in range(2500):
        recorder.submit(make_record(i))
    await recorder.close()

    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 2500
    assert recorder.queue_depth == 0
    await assert_rollup_matches_rows(db_pool)


async def test_a_clean_close_spools_everything_when_the_database_is_away(
    database_url: str, tmp_path: Path
) -> None:
    recorder = Recorder(await closed_pool(database_url), fast_retries(), tmp_path)
    await recorder.start()
    records = [make_record(i) for i in range(700)]

    for record in records:
        recorder.submit(record)
    await recorder.close()

    assert recorder.spool_depth == 700
    assert spooled_ids(tmp_path) == {r.request_id for r in records}


async def test_records_wait_in_the_spool_until_the_schema_is_ready(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    ready = asyncio.Event()
    recorder = Recorder(db_pool, fast_retries(), tmp_path, schema_ready=ready)
    await recorder.start()
    records = [make_record(i) for i in range(300)]
    for record in records:
        recorder.submit(record)
    await recorder.flush()
    stored_before = await db_pool.fetchval("SELECT count(*) FROM llm_usage")
    spooled_before = recorder.spool_depth

    ready.set()
    recorder.wake()
    await wait_until(lambda: recorder.spool_depth == 0, "the spool to replay")
    await recorder.close()

    assert (stored_before, spooled_before) == (0, 300)
    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 300
    await assert_rollup_matches_rows(db_pool)


async def test_a_record_submitted_after_close_is_spooled_not_lost(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    recorder = Recorder(db_pool, RecorderSettings(), tmp_path)
    await recorder.start()
    await recorder.close()

    recorder.submit(make_record(1))

    assert Spool(tmp_path).depth == 1


async def test_a_restart_with_a_non_empty_spool_replays_it(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    records = [make_record(i) for i in range(300)]
    await spool_records(database_url, tmp_path, records)

    online = Recorder(db_pool, fast_retries(), tmp_path)
    await online.start()
    await wait_until(lambda: online.spool_depth == 0, "the spool to empty")
    await online.close()

    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 300
    assert online.metrics.rows_replayed == 300
    assert segments(tmp_path) == []
    await assert_rollup_matches_rows(db_pool)


async def test_a_torn_last_spool_line_is_skipped_and_the_rest_replayed(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    records = [make_record(i) for i in range(40)]
    await spool_records(database_url, tmp_path, records)
    (segment,) = segments(tmp_path)
    tear_last_line(segment)

    online = Recorder(db_pool, fast_retries(), tmp_path)
    assert online.spool_depth == 41
    await online.start()
    await wait_until(lambda: online.spool_depth == 0, "the spool to empty")
    await online.close()

    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 40
    assert online.spool_depth == 0
    await assert_rollup_matches_rows(db_pool)


async def test_spool_lines_edited_into_nonsense_cost_only_themselves(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """A cost that is not a number, a time past year 9999: skipped, not stuck."""
    records = [make_record(i) for i in range(30)]
    await spool_records(database_url, tmp_path, records)
    (segment,) = segments(tmp_path)
    lines = segment.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"input_cost_usd":"', b'"input_cost_usd":"abc', 1)
    stamp = orjson.loads(lines[2])["timestamp"].encode()
    lines[2] = lines[2].replace(stamp, b"9999-12-31T23:59:59-01:00")
    segment.write_bytes(b"".join(lines))
    newer = [make_record(i) for i in range(30, 40)]
    await spool_records(database_url, tmp_path, newer)

    online = Recorder(db_pool, fast_retries(), tmp_path)
    await online.start()
    await wait_until(lambda: online.spool_depth == 0, "the spool to empty")
    await online.close()

    stored = {
        r["request_id"] for r in await db_pool.fetch("SELECT request_id FROM llm_usage")
    }
    assert stored == {r.request_id for r in records + newer} - {
        records[1].request_id,
        records[2].request_id,
    }
    assert segments(tmp_path) == []


async def test_a_segment_gone_before_its_replay_is_passed_over(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """Removed by hand, or by another gateway given the same data directory."""
    first = [make_record(i) for i in range(20)]
    second = [make_record(i) for i in range(20, 35)]
    await spool_records(database_url, tmp_path, first)
    await spool_records(database_url, tmp_path, second)
    online = Recorder(db_pool, fast_retries(), tmp_path)
    assert online.spool_depth == 35
    segments(tmp_path)[0].unlink()

    await online.start()
    await wait_until(lambda: online.spool_depth == 0, "the spool to empty")
    await online.close()

    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 15
    assert segments(tmp_path) == []


async def test_a_crash_between_write_and_unlink_stores_the_segment_once(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """The segment was written, then the process died before removing it."""
    records = [make_record(i) for i in range(120)]
    await spool_records(database_url, tmp_path, records)
    await write_batch(db_pool, records)

    online = Recorder(db_pool, fast_retries(), tmp_path)
    await online.start()
    await wait_until(lambda: online.spool_depth == 0, "the spool to empty")
    await online.close()

    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 120
    assert await db_pool.fetchval("SELECT sum(calls) FROM llm_usage_daily") == 120
    await assert_rollup_matches_rows(db_pool)


async def test_new_records_are_written_while_an_old_spool_replays(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    old = [make_record(i) for i in range(3000)]
    await spool_records(database_url, tmp_path, old)
    online = Recorder(db_pool, fast_retries(batch_size=200), tmp_path)
    await online.start()

    new = [make_record(i) for i in range(3000, 4000)]
    for n, record in enumerate(new):
        online.submit(record)
        if n % 50 == 0:
            await asyncio.sleep(0)
    await wait_until(
        lambda: online.spool_depth == 0 and online.queue_depth == 0, "everything"
    )
    await online.close()

    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 4000
    await assert_rollup_matches_rows(db_pool)


async def test_while_the_database_is_away_retries_do_not_read_the_spool(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry connects first: a segment is read only to be written."""
    read = []
    real_read = recorder_module.read_segment

    def counting_read(path: Path) -> list[UsageRecord]:
        read.append(path)
        return real_read(path)

    monkeypatch.setattr(recorder_module, "read_segment", counting_read)
    recorder = Recorder(await closed_pool(database_url), fast_retries(), tmp_path)
    await recorder.start()
    for i in range(10):
        recorder.submit(make_record(i))
    await wait_until(lambda: recorder.metrics.write_errors >= 4, "three retries")
    await recorder.close()

    assert read == []
    assert recorder.spool_depth == 10


async def test_records_go_to_the_spool_once_a_write_has_hung_a_while(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """
    A hung write (a lock, a frozen server) must not leave the calls after it
    in memory until the statement timeout, where a SIGKILL would lose them.
    """
    recorder = Recorder(db_pool, fast_retries(batch_size=100), tmp_path)
    blocker = await asyncpg.connect(database_url)
    locked = blocker.transaction()
    await locked.start()
    await blocker.execute("LOCK TABLE llm_usage IN ACCESS EXCLUSIVE MODE")
    await recorder.start()
    sent = [make_record(i) for i in range(600)]

    for record in sent[:300]:
        recorder.submit(record)
    await asyncio.sleep(STALLED_WRITE_S + 0.3)
    for record in sent[300:]:
        recorder.submit(record)
    in_memory = recorder.queue_depth
    spooled = recorder.spool_depth
    await locked.rollback()
    await blocker.close()
    await wait_until(
        lambda: recorder.spool_depth == 0 and recorder.queue_depth == 0, "everything"
    )
    await recorder.close()

    # The batch being written stays in memory; everything else is on disk.
    assert in_memory <= 100
    assert spooled == 600 - in_memory
    stored = await db_pool.fetch("SELECT request_id FROM llm_usage")
    assert sorted(r["request_id"] for r in stored) == sorted(r.request_id for r in sent)
    await assert_rollup_matches_rows(db_pool)


async def test_past_max_queue_records_go_to_the_spool_while_a_write_stalls(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """
    Another session holds a lock on the table, so the write in flight waits;
    memory holds at most max_queue records plus that batch, the rest spool.
    """
    settings = fast_retries(max_queue=500, batch_size=100)
    recorder = Recorder(db_pool, settings, tmp_path)
    blocker = await asyncpg.connect(database_url)
    locked = blocker.transaction()
    await locked.start()
    await blocker.execute("LOCK TABLE llm_usage IN ACCESS EXCLUSIVE MODE")
    await recorder.start()

    deepest = 0
    for i in range(5000):
        recorder.submit(make_record(i))
        deepest = max(deepest, recorder.queue_depth)
        if i % 25 == 0:
            await asyncio.sleep(0)
    spooled_while_stalled = recorder.spool_depth
    await locked.rollback()
    await blocker.close()
    await wait_until(
        lambda: recorder.spool_depth == 0 and recorder.queue_depth == 0, "everything"
    )
    await recorder.close()

    assert deepest <= settings.max_queue + settings.batch_size
    assert spooled_while_stalled >= 5000 - settings.max_queue - settings.batch_size
    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 5000
    await assert_rollup_matches_rows(db_pool)


async def test_records_arriving_during_a_write_wait_for_the_next_pass(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """
    A pass writes what waited when it began; what arrives meanwhile is the
    next interval's batch, not a statement of its own right after the first
    (under load that chain wrote nine small batches where one was due).
    """
    recorder = Recorder(db_pool, fast_retries(), tmp_path)
    blocker = await asyncpg.connect(database_url)
    locked = blocker.transaction()
    await locked.start()
    await blocker.execute("LOCK TABLE llm_usage IN ACCESS EXCLUSIVE MODE")
    for i in range(10):
        recorder.submit(make_record(i))
    one_pass = asyncio.create_task(recorder._pass())
    await wait_until(lambda: recorder._in_flight != [], "the write to start")
    for i in range(10, 40):
        recorder.submit(make_record(i))
        await asyncio.sleep(0)
    await locked.rollback()
    await blocker.close()
    await one_pass

    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 10
    assert recorder.queue_depth == 30
    await recorder.close()
    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 40
    # Each statement is a transaction of its own: two passes, two statements.
    assert (
        await db_pool.fetchval("SELECT count(DISTINCT xmin::text) FROM llm_usage") == 2
    )
    await assert_rollup_matches_rows(db_pool)


async def test_a_write_cancelled_in_flight_is_spooled_and_stored_once(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    recorder = Recorder(db_pool, fast_retries(batch_size=50), tmp_path)
    blocker = await asyncpg.connect(database_url)
    locked = blocker.transaction()
    await locked.start()
    await blocker.execute("LOCK TABLE llm_usage IN ACCESS EXCLUSIVE MODE")
    await recorder.start()
    for i in range(50):
        recorder.submit(make_record(i))
    await wait_until(lambda: recorder._in_flight != [], "the write to start")

    assert recorder._task is not None
    recorder._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await recorder._task
    await locked.rollback()
    await blocker.close()

    assert recorder.spool_depth == 50
    again = Recorder(db_pool, fast_retries(), tmp_path)
    await again.start()
    await wait_until(lambda: again.spool_depth == 0, "the spool to empty")
    await again.close()
    assert await db_pool.fetchval("SELECT count(*) FROM llm_usage") == 50
    await assert_rollup_matches_rows(db_pool)


def test_the_spool_counts_what_an_earlier_process_left(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.append([make_record(i) for i in range(3)])
    first.rotate()
    first.append([make_record(i) for i in range(2)])
    first.rotate()

    second = Spool(tmp_path)

    assert second.depth == 5
    assert second.oldest_closed() == 1
    second.remove(1)
    assert second.depth == 2
    second.append([make_record(7)])
    assert second.current == 3


def test_a_segment_the_disk_took_nothing_into_is_removed(tmp_path: Path) -> None:
    """As on a full disk: the file opens, the write fails."""
    spool = Spool(tmp_path)
    spool.append([make_record(0)])
    spool.rotate()
    spool._open()
    opened = spool.path(spool.current)
    os.close(spool._fd)
    spool._fd = os.open(opened, os.O_RDONLY)

    with pytest.raises(OSError, match="Bad file descriptor"):
        spool.append([make_record(1)])

    assert not opened.exists()
    assert segments(tmp_path) == [spool.path(1)]
    assert (spool.depth, spool.oldest_closed()) == (1, 1)
    assert Spool(tmp_path).depth == 1


def test_a_segment_is_the_gateway_users_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path)

    spool.append([make_record(0)])

    assert spool.path(1).stat().st_mode & 0o777 == 0o600


def test_empty_segments_an_earlier_process_left_are_removed(tmp_path: Path) -> None:
    Spool(tmp_path).append([make_record(0)])
    (tmp_path / "000000000002.jsonl").write_bytes(b"")

    spool = Spool(tmp_path)

    assert segments(tmp_path) == [spool.path(1)]
    assert spool.counts == {1: 1}


async def test_records_the_disk_refuses_stay_in_memory_until_it_takes_them(
    database_url: str, tmp_path: Path
) -> None:
    """Database away and spool directory gone: nothing may be dropped."""
    spool_dir = tmp_path / "spool"
    recorder = Recorder(await closed_pool(database_url), fast_retries(), spool_dir)
    break_directory(spool_dir)

    for i in range(100):
        recorder.submit(make_record(i))
    await recorder.flush()
    held = recorder.queue_depth
    mend_directory(spool_dir)
    await recorder.flush()

    assert held == 100
    assert recorder.queue_depth == 0
    assert recorder.spool_depth == 100
    assert len(spooled_ids(spool_dir)) == 100


def break_directory(path: Path) -> None:
    """Put a plain file where the directory was, so every append fails."""
    path.rmdir()
    path.write_bytes(b"")


def mend_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
