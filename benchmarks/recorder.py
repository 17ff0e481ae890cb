"""
The recorder alone: how many usage rows per second reach PostgreSQL.

Builds the records first, then submits them straight to
``gateway.recorder.Recorder`` on a fresh database for a bounded time, as fast
as the recorder drains them (the producer waits while more than a few batches
are queued, so nothing overflows to the spool), then flushes, and counts what
arrived in ``llm_usage`` and in the rollup.

    python -m benchmarks.recorder --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from benchmarks import benchdb
from gateway import db
from gateway.config import DatabaseSettings, RecorderSettings
from gateway.metrics import Metrics
from gateway.record import UsageRecord
from gateway.recorder import Recorder

TARGET_ROWS_PER_S = 20_000
# Records are built up front for this many per second of the run.
RECORDS_PER_S_AT_MOST = 60_000
PURPOSES = ("decision", "research", "summary", None)
MODELS = ("gpt-4o-mini", "deepseek-chat")


def template_records() -> list[UsageRecord]:
    """A handful of realistic records, copied with a new id for every submit."""
    now = datetime.now(UTC)
    return [
        UsageRecord(
            request_id="",
            timestamp=now,
            model=model,
            upstream="openai",
            endpoint="/v1/chat/completions",
            streamed=purpose is None,
            input_tokens=1200,
            cached_input_tokens=200,
            output_tokens=350,
            total_tokens=1550,
            input_cost_usd=Decimal("0.000165"),
            output_cost_usd=Decimal("0.00021"),
            total_cost_usd=Decimal("0.000375"),
            price_source="config",
            purpose=purpose,
            ticker="AAPL",
            cycle_id="cycle-42",
            tags={"strategy": "momentum"},
            response_time_ms=812.5,
        )
        for model in MODELS
        for purpose in PURPOSES
    ]


def build_records(count: int) -> list[UsageRecord]:
    """*count* distinct records, built before the clock starts: building a
    record is the proxy's work, not the recorder's."""
    templates = template_records()
    now = datetime.now(UTC)
    return [
        dataclasses.replace(
            templates[i % len(templates)],
            request_id=f"tg-{uuid.uuid4().hex}",
            timestamp=now + timedelta(microseconds=i),
        )
        for i in range(count)
    ]


async def produce(
    recorder: Recorder, records: list[UsageRecord], seconds: float, batch_size: int
) -> int:
    """Submit for *seconds* (or until *records* run out); return how many."""
    high_water = batch_size * 4
    submitted = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and submitted < len(records):
        if recorder.queue_depth >= high_water:
            await asyncio.sleep(0.001)
            continue
        for record in records[submitted : submitted + batch_size]:
            recorder.submit(record)
        submitted = min(len(records), submitted + batch_size)
        # Let the flusher run between bursts, as a busy gateway would.
        await asyncio.sleep(0)
    return submitted


async def bench(args: argparse.Namespace) -> int:
    async with benchdb.scratch_database(args.server) as url:
        pool = await db.create_pool(url, DatabaseSettings(url=url))
        settings = RecorderSettings(batch_size=args.batch_size)
        records = build_records(int(args.seconds * RECORDS_PER_S_AT_MOST))
        with tempfile.TemporaryDirectory(prefix="tallygate-recorder-") as tmp:
            recorder = Recorder(pool, settings, Path(tmp) / "spool", Metrics())
            await recorder.start()
            started = time.perf_counter()
            submitted = await produce(recorder, records, args.seconds, args.batch_size)
            await recorder.flush()
            elapsed = time.perf_counter() - started
            await recorder.close()
            spooled = recorder.spool_depth
        rows = await pool.fetchval("SELECT count(*) FROM llm_usage")
        calls = await pool.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM llm_usage_daily"
        )
        await pool.close()
    rate = rows / elapsed
    print(
        f"recorder: {submitted:,} submitted, {rows:,} rows and {int(calls):,} "
        f"rollup calls stored in {elapsed:.2f} s = {rate:,.0f} rows/s "
        f"(batch {args.batch_size}, "
        f"target >= {TARGET_ROWS_PER_S:,}/s: "
        f"{'met' if rate >= TARGET_ROWS_PER_S else 'not met'}); spooled {spooled}"
    )
    if rows != submitted or calls != submitted:
        print("FAILED: rows lost", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--server", default=benchdb.LOCAL_SERVER)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(bench(args))
    return uvloop.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
