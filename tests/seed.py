"""
Usage rows spread over days, months, models, purposes, tickers and cycles,
and the figures they should give, computed here in plain Python.

The rows are written with the recorder's own ``write_batch`` so that the
rollups are built the way production builds them; the expected figures are
computed from the records alone, never from the database.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import asyncpg

from gateway.record import UsageRecord
from gateway.recorder import write_batch

MODELS = ("gpt-4o", "gpt-4o-mini", "deepseek-chat")
PURPOSES = (None, "trading_decision", "news_summary")
TICKERS = (None, "AAPL", "MSFT", "NVDA")
# Moments on both sides of day and month boundaries, so a period that is
# one second off shows.
EDGES = (
    datetime(2030, 1, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2030, 2, 1, 0, 0, tzinfo=UTC),
    datetime(2030, 2, 22, 23, 59, 59, tzinfo=UTC),
    datetime(2030, 2, 23, 0, 0, tzinfo=UTC),
    datetime(2030, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2030, 3, 1, 0, 0, tzinfo=UTC),
    datetime(2030, 3, 1, 0, 0, 4, tzinfo=UTC),
)
FIRST = datetime(2029, 11, 20, tzinfo=UTC)
LAST = datetime(2030, 3, 1, 0, 0, 5, tzinfo=UTC)
USD_PLACES = Decimal("0.000001")


def make_records(count: int = 600, seed: int = 7) -> list[UsageRecord]:
    """Deterministic records between FIRST and LAST, EDGES included."""
    rng = random.Random(seed)
    span_s = (LAST - FIRST).total_seconds()
    moments = [FIRST + timedelta(seconds=rng.uniform(0, span_s)) for _ in range(count)]
    moments += EDGES
    records = []
    for n, moment in enumerate(sorted(moments)):
        model = rng.choice(MODELS)
        input_tokens = rng.randint(0, 9000)
        output_tokens = rng.randint(0, 3000)
        priced = rng.random() > 0.1
        input_cost = Decimal(input_tokens) * Decimal("0.000002500001")
        output_cost = Decimal(output_tokens) * Decimal("0.000010000003")
        failed = rng.random() < 0.08
        # Without a draw of rng either: a Responses call of every eleventh
        # OpenAI row ran two web searches, at $10 a thousand.
        searches = 2 if n % 11 == 0 and not model.startswith("deepseek") else 0
        fee = Decimal(searches) * Decimal("0.01")
        records.append(
            UsageRecord(
                request_id=f"seed-{n}",
                timestamp=moment,
                model=model,
                upstream="deepseek" if model.startswith("deepseek") else "openai",
                endpoint="/v1/chat/completions",
                status=rng.choice((500, 502, 429)) if failed else 200,
                streamed=rng.random() < 0.5,
                input_tokens=input_tokens,
                cached_input_tokens=rng.randint(0, input_tokens),
                output_tokens=output_tokens,
                reasoning_tokens=rng.randint(0, output_tokens),
                total_tokens=input_tokens + output_tokens,
                input_cost_usd=input_cost if priced else None,
                output_cost_usd=output_cost if priced else None,
                total_cost_usd=input_cost + output_cost + fee if priced else None,
                fee_cost_usd=fee if priced else None,
                web_search_calls=searches,
                price_source="config" if priced else None,
                # Without a draw of rng, so every other field stays as it was.
                service_tier=(
                    None
                    if model.startswith("deepseek")
                    else ("flex" if n % 5 == 0 else "default")
                ),
                purpose=rng.choice(PURPOSES),
                ticker=rng.choice(TICKERS),
                cycle_id=f"c-{n // 7}" if rng.random() < 0.7 else None,
                response_time_ms=round(rng.uniform(50, 4000), 3),
                error="client_disconnected" if rng.random() < 0.03 else None,
            )
        )
    return records


async def store(pool: asyncpg.Pool, records: list[UsageRecord]) -> None:
    """Write in several batches, as the recorder would, so rollups add up."""
    for start in range(0, len(records), 97):
        await write_batch(pool, records[start : start + 97])


def usd(value: Decimal) -> float:
    return float(value.quantize(USD_PLACES, rounding=ROUND_HALF_EVEN))


def whole(value: float) -> int:
    return int(value + 0.5)


@dataclass
class Expected:
    """The figures of some records, summed by hand."""

    records: list[UsageRecord] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.records)

    @property
    def cost(self) -> Decimal:
        return sum((r.total_cost_usd or Decimal(0) for r in self.records), Decimal(0))

    def total(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.records)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if r.status >= 400 or r.error is not None)

    def breakdown(self, key: Callable[[UsageRecord], str | None]) -> dict[str, Any]:
        groups: dict[str, list[UsageRecord]] = {}
        for record in self.records:
            name = key(record)
            if name is not None:
                groups.setdefault(name, []).append(record)
        return {
            name: {
                "tokens": Expected(rs).total("total_tokens"),
                "cost": usd(Expected(rs).cost),
                "calls": len(rs),
            }
            for name, rs in sorted(groups.items())
        }

    def token_usage(self) -> dict[str, Any]:
        """The figures of the token-usage answer, as the API must render them."""
        calls = self.calls
        latency = sum(r.response_time_ms for r in self.records)
        return {
            "total_tokens": self.total("total_tokens"),
            "total_cost_usd": usd(self.cost),
            "input_tokens": self.total("input_tokens"),
            "cached_input_tokens": self.total("cached_input_tokens"),
            "output_tokens": self.total("output_tokens"),
            "reasoning_tokens": self.total("reasoning_tokens"),
            "errors_count": self.errors,
            "breakdown_by_model": self.breakdown(lambda r: r.model),
            "breakdown_by_purpose": self.breakdown(lambda r: r.purpose or "untagged"),
            "breakdown_by_ticker": self.breakdown(lambda r: r.ticker),
            "api_calls_count": calls,
            "avg_tokens_per_call": whole(self.total("total_tokens") / calls)
            if calls
            else 0,
            "avg_response_time_ms": whole(latency / calls) if calls else 0,
        }


def select(
    records: Iterable[UsageRecord],
    start: datetime | None = None,
    end: datetime | None = None,
    **filters: str,
) -> Expected:
    """The records in [start, end) that match every filter."""
    chosen = []
    for r in records:
        if start is not None and r.timestamp < start:
            continue
        if end is not None and r.timestamp >= end:
            continue
        if "purpose" in filters:
            wanted = filters["purpose"]
            actual = r.purpose or "untagged"
            if actual != wanted:
                continue
        if any(
            getattr(r, name) != value
            for name, value in filters.items()
            if name != "purpose"
        ):
            continue
        chosen.append(r)
    return Expected(chosen)
