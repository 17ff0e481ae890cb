"""
Statistics at 10 thousand and at 10 million stored calls: the rollup keeps them flat.

Creates two fresh databases and loads ``--small`` rows into one and
``--rows`` into the other with COPY (spread over the last ``--days`` days,
every model, purpose and ticker combination on every day), which the table's
triggers roll up into ``llm_usage_daily`` and ``llm_usage_daily_ticker`` as
COPY goes (they fire for COPY as for an INSERT). Starts a tallygate on each
and times ``GET /api/token-usage?period=month`` and
``/api/token-usage/history?days=30`` on both, interleaved, as loaded and
again after a VACUUM of the rollups (see ``vacuum_rollups``). Prints the
medians and their ratios (target: under 1.5×, vacuumed) and how long the
loads took.

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
from dataclasses import dataclass
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


@dataclass
class Timing:
    median_ms: float
    fastest_ms: float


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


async def vacuum_rollups(url: str) -> str:
    """
    VACUUM the rollups; return their size before and after.

    A bulk load updates every rollup row once per COPY (50 times for 10 M
    rows) within minutes, leaving dead versions for the reads that follow
    to skip until autovacuum runs; a table that grew to the same size over
    weeks was vacuumed all along. So the target is judged on the vacuumed
    tables, and the figures as loaded are printed too (at 10 M rows the
    daily rollup measured 184 kB as loaded, 136 kB at 10 k).
    """
    conn = await asyncpg.connect(url)
    try:
        size = "pg_total_relation_size('llm_usage_daily')"
        before = await conn.fetchval(f"SELECT pg_size_pretty({size})")
        await conn.execute("VACUUM (ANALYZE) llm_usage_daily, llm_usage_daily_ticker")
        after = await conn.fetchval(f"SELECT pg_size_pretty({size})")
    finally:
        await conn.close()
    return f"llm_usage_daily {before} before VACUUM, {after} after"


def time_get(port: int, path: str) -> tuple[float, dict]:
    """Milliseconds one GET took, and its body."""
    began = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as reply:
        body = orjson.loads(reply.read())
    return (time.perf_counter() - began) * 1000, body


def measure(ports: dict[int, int], repeats: int) -> dict[tuple[int, str], Timing]:
    """
    Time every endpoint on every gateway, *repeats* rounds after three of
    warm-up, interleaved: in each round each size takes its turn, in an order
    that rotates, so the machine's drift falls on both sizes alike.
    """
    sizes = list(ports)
    timings: dict[tuple[int, str], list[float]] = {}
    bodies: dict[tuple[int, str], dict] = {}
    for number in range(repeats + 3):
        shift = number % len(sizes)
        for stored in sizes[shift:] + sizes[:shift]:
            for name, path in ENDPOINTS.items():
                ms, bodies[stored, name] = time_get(ports[stored], path)
                if number >= 3:
                    timings.setdefault((stored, name), []).append(ms)
    results = {}
    for (stored, name), values in timings.items():
        timing = Timing(statistics.median(values), min(values))
        results[stored, name] = timing
        print(
            f"  {stored:>12,} rows: {ENDPOINTS[name]:<36} median "
            f"{timing.median_ms:7.2f} ms, fastest {timing.fastest_ms:7.2f} ms "
            f"({describe_body(name, bodies[stored, name])})"
        )
    return results


def describe_body(name: str, body: dict) -> str:
    if name == "month":
        return f"api_calls_count {body.get('api_calls_count')}"
    calls = sum(day.get("calls", 0) for day in body.get("data", []))
    return f"{len(body.get('data', []))} days, {calls:,} calls"


def start_gateway(tmp: Path, url: str) -> procs.Child:
    port = procs.free_port()
    directory = tmp / str(port)
    directory.mkdir()
    # The upstream is never called here; any free port will do.
    config = write_gateway_config(directory, port, procs.free_port(), url, "WARNING")
    return procs.start_child(
        "tallygate",
        [procs.PYTHON, "-m", "gateway", "serve", "--config", str(config)],
        port, directory, procs.clean_environment(), 60,
    )  # fmt: skip


def report(
    label: str, results: dict[tuple[int, str], Timing], small: int, large: int
) -> bool:
    """Print each endpoint's ratio of the large size to the small; True if met."""
    met = True
    for name, path in ENDPOINTS.items():
        low, high = results[small, name], results[large, name]
        ratio = high.median_ms / low.median_ms
        met = met and ratio < TARGET_RATIO
        print(
            f"{path}, {label}: median {low.median_ms:.2f} ms at {small:,} rows, "
            f"{high.median_ms:.2f} ms at {large:,} rows = {ratio:.2f}× (fastest "
            f"{low.fastest_ms:.2f} / {high.fastest_ms:.2f} ms = "
            f"{high.fastest_ms / low.fastest_ms:.2f}×)"
        )
    return met


async def bench(args: argparse.Namespace) -> int:
    async with (
        benchdb.scratch_database(args.server) as small_url,
        benchdb.scratch_database(args.server) as large_url,
    ):
        print(f"loading {args.small:,} rows")
        small_s = await load_rows(small_url, 1, args.small, args.days)
        print(f"loading {args.rows:,} rows")
        large_s = await load_rows(large_url, 2, args.rows, args.days)
        urls = {args.small: small_url, args.rows: large_url}
        with tempfile.TemporaryDirectory(prefix="tallygate-stats-") as name:
            tmp = Path(name)
            gateways = {}
            try:
                for stored, url in urls.items():
                    gateways[stored] = await asyncio.to_thread(start_gateway, tmp, url)
                ports = {stored: child.port for stored, child in gateways.items()}
                print("as loaded:")
                loaded = await asyncio.to_thread(measure, ports, args.repeats)
                for stored, url in urls.items():
                    print(f"  {stored:,} rows: {await vacuum_rollups(url)}")
                print("vacuumed:")
                vacuumed = await asyncio.to_thread(measure, ports, args.repeats)
            finally:
                for child in gateways.values():
                    child.stop()
    print(
        f"load: {args.small:,} rows in {small_s:.1f} s, {args.rows:,} rows in "
        f"{large_s:.1f} s ({args.rows / large_s:,.0f} rows/s, COPY plus rollup)"
    )
    report("as loaded", loaded, args.small, args.rows)
    met = report("vacuumed", vacuumed, args.small, args.rows)
    print(f"target < {TARGET_RATIO}× (vacuumed, median): {'met' if met else 'not met'}")
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
