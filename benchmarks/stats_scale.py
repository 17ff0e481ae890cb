"""
Statistics at 10 thousand and at 10 million stored calls: the rollup keeps them flat.

Creates a fresh database, loads ``--small`` rows into ``llm_usage`` with COPY
(spread over the last ``--days`` days, every model, purpose and ticker
combination on every day), which the table's triggers roll up into
``llm_usage_daily`` and ``llm_usage_daily_ticker`` as COPY goes (they fire
for COPY as for an INSERT), starts tallygate on it and times
``GET /api/token-usage?period=month`` and ``/api/token-usage/history?days=30``;
then tops the table up to ``--rows`` rows the same way and times them again.
Prints both medians and their ratio (target: under 1.5×) and how long the
load took.

    python -m benchmarks.stats_scale                 # 10 k, then 10 M rows
    python -m benchmarks.stats_scale --rows 1000000  # a smaller second size
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson

from benchmarks import benchdb, procs
from benchmarks.run import write_gateway_config
from gateway import db

MODELS = ("gpt-4o-mini", "gpt-4o", "deepseek-chat", "deepseek-reasoner")
PURPOSES = ("decision", "research", "summary", "risk", None)
TICKERS = (*(f"T{n:02d}" for n in range(20)), None)
COPY_BATCH_ROWS = 200_000
TARGET_RATIO = 1.5
COLUMNS = (
    "request_id", "timestamp", "model", "upstream", "endpoint", "status",
    "streamed", "input_tokens", "cached_input_tokens", "output_tokens",
    "reasoning_tokens", "total_tokens", "input_cost_usd", "output_cost_usd",
    "total_cost_usd", "price_source", "purpose", "ticker", "cycle_id",
    "response_time_ms",
)  # fmt: skip
ENDPOINTS = {
    "month": "/api/token-usage?period=month",
    "history": "/api/token-usage/history?days=30",
}


def generate_rows(
    phase: int, first: int, count: int, start: datetime, step: timedelta
) -> Iterator[tuple[object, ...]]:
    """*count* rows, evenly spaced in time from *start*, ids ordered."""
    input_cost = Decimal("0.000180")
    output_cost = Decimal("0.000240")
    total_cost = input_cost + output_cost
    for i in range(first, first + count):
        yield (
            f"tg-bench-{phase}-{i:010d}",
            start + step * i,
            MODELS[i % len(MODELS)],
            "openai",
            "/v1/chat/completions",
            200,
            i % 3 == 0,
            1200,
            100,
            400,
            0,
            1600,
            input_cost,
            output_cost,
            total_cost,
            "config",
            PURPOSES[i % len(PURPOSES)],
            TICKERS[i % len(TICKERS)],
            f"cycle-{i // 50}",
            650.0 + i % 400,
        )


async def load_rows(url: str, phase: int, count: int, days: int) -> float:
    """COPY *count* rows spread over the last *days* days; return seconds taken."""
    now = datetime.now(UTC)
    start = now - timedelta(days=days)
    step = (now - timedelta(minutes=1) - start) / max(count, 1)
    began = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        # Partitions for every month the rows fall in, before any row lands.
        await db.ensure_partitions(conn, start, months_ahead=days // 28 + 3)
        for first in range(0, count, COPY_BATCH_ROWS):
            size = min(COPY_BATCH_ROWS, count - first)
            # The table's triggers roll each COPY up as they would an INSERT.
            await conn.copy_records_to_table(
                "llm_usage",
                records=generate_rows(phase, first, size, start, step),
                columns=COLUMNS,
            )
            if count > COPY_BATCH_ROWS:
                done = first + size
                rate = done / (time.perf_counter() - began)
                print(
                    f"  loaded {done:,} of {count:,} ({rate:,.0f} rows/s)", flush=True
                )
        await conn.execute("ANALYZE llm_usage")
        await conn.execute("ANALYZE llm_usage_daily")
        await conn.execute("ANALYZE llm_usage_daily_ticker")
    finally:
        await conn.close()
    return time.perf_counter() - began


def time_endpoint(port: int, path: str, repeats: int) -> tuple[float, float, dict]:
    """Median and fastest ms of *repeats* GETs after three warm-ups, and the body."""
    url = f"http://127.0.0.1:{port}{path}"
    timings = []
    body: dict = {}
    for attempt in range(repeats + 3):
        began = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as reply:
            body = orjson.loads(reply.read())
        if attempt >= 3:
            timings.append((time.perf_counter() - began) * 1000)
    return statistics.median(timings), min(timings), body


def measure(port: int, repeats: int, stored: int) -> dict[str, tuple[float, float]]:
    """Endpoint name -> (median ms, fastest ms)."""
    times = {}
    for name, path in ENDPOINTS.items():
        median, fastest, body = time_endpoint(port, path, repeats)
        times[name] = (median, fastest)
        if name == "month":
            detail = f"api_calls_count {body.get('api_calls_count')}"
        else:
            calls = sum(day.get("calls", 0) for day in body.get("data", []))
            detail = f"{len(body.get('data', []))} days, {calls:,} calls"
        print(
            f"  {stored:>12,} rows: {path:<36} median {median:7.2f} ms, "
            f"fastest {fastest:7.2f} ms ({detail})"
        )
    return times


async def bench(args: argparse.Namespace) -> int:
    async with benchdb.scratch_database(args.server) as url:
        with tempfile.TemporaryDirectory(prefix="tallygate-stats-") as name:
            tmp = Path(name)
            print(f"loading {args.small:,} rows")
            small_s = await load_rows(url, 1, args.small, args.days)
            port = procs.free_port()
            # The upstream is never called here; any free port will do.
            config = write_gateway_config(tmp, port, procs.free_port(), url, "WARNING")
            gateway = await asyncio.to_thread(
                procs.start_child,
                "tallygate",
                [procs.PYTHON, "-m", "gateway", "serve", "--config", str(config)],
                port, tmp, procs.clean_environment(), 60,
            )  # fmt: skip
            try:
                small = await asyncio.to_thread(measure, port, args.repeats, args.small)
                extra = args.rows - args.small
                print(f"loading {extra:,} more rows")
                large_s = await load_rows(url, 2, extra, args.days)
                large = await asyncio.to_thread(measure, port, args.repeats, args.rows)
            finally:
                gateway.stop()
    print(
        f"load: {args.small:,} rows in {small_s:.1f} s, {extra:,} rows in "
        f"{large_s:.1f} s ({extra / large_s:,.0f} rows/s, COPY plus rollup)"
    )
    met = True
    for name, path in ENDPOINTS.items():
        (small_median, small_fastest), (large_median, large_fastest) = (
            small[name],
            large[name],
        )
        ratio = large_median / small_median
        ok = ratio < TARGET_RATIO
        met = met and ok
        print(
            f"{path}: median {small_median:.2f} ms at {args.small:,} rows, "
            f"{large_median:.2f} ms at {args.rows:,} rows = {ratio:.2f}× "
            f"(fastest {small_fastest:.2f} / {large_fastest:.2f} ms = "
            f"{large_fastest / small_fastest:.2f}×; target < {TARGET_RATIO}×: "
            f"{'met' if ok else 'not met'})"
        )
    return 0 if met else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=10_000_000, help="second size")
    # 4 models x 5 purposes x 21 tickers = 420 combinations, cycled row by row:
    # with at least 420 rows a day, both sizes fill every rollup key of every
    # day, so the two reads differ only in how many calls the keys count.
    parser.add_argument("--days", type=int, default=20, help="days the rows span")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--server", default=benchdb.LOCAL_SERVER)
    args = parser.parse_args(argv)
    if args.rows <= args.small:
        parser.error("--rows must be larger than --small")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
