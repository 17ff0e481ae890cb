from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from gateway import db, stats
from gateway.config import BudgetSettings
from gateway.record import UsageRecord
from tests.seed import make_records, select, store, usd

RECORDS = make_records()
NOW = datetime(2030, 3, 1, 0, 0, 5, tzinfo=UTC)
JUST_BEFORE_MONTH_END = datetime(2030, 2, 28, 23, 59, 59, tzinfo=UTC)
STARTED = datetime(2030, 2, 20, 13, 30, tzinfo=UTC)


def day(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)


@pytest.fixture
async def seeded(db_pool: asyncpg.Pool) -> asyncpg.Pool:
    await store(db_pool, RECORDS)
    return db_pool


def as_figures(summary: stats.Summary) -> dict[str, object]:
    """A summary in the terms tests/seed.py computes by hand."""

    def table(t: dict[str, stats.Totals]) -> dict[str, object]:
        return {
            k: {"tokens": v.total_tokens, "cost": usd(v.cost_usd), "calls": v.calls}
            for k, v in sorted(t.items())
        }

    totals = summary.totals
    return {
        "total_tokens": totals.total_tokens,
        "total_cost_usd": usd(totals.cost_usd),
        "input_tokens": totals.input_tokens,
        "cached_input_tokens": totals.cached_input_tokens,
        "output_tokens": totals.output_tokens,
        "reasoning_tokens": totals.reasoning_tokens,
        "errors_count": totals.errors,
        "breakdown_by_model": table(summary.by_model),
        "breakdown_by_purpose": table(summary.by_purpose),
        "breakdown_by_ticker": table(summary.by_ticker),
        "api_calls_count": totals.calls,
        "avg_tokens_per_call": totals.avg_tokens_per_call,
        "avg_response_time_ms": totals.avg_response_time_ms,
    }


@pytest.mark.parametrize(
    ("name", "now", "start", "end"),
    [
        ("today", NOW, day(2030, 3, 1), day(2030, 3, 2)),
        ("week", NOW, day(2030, 2, 23), day(2030, 3, 2)),
        ("month", NOW, day(2030, 3, 1), day(2030, 3, 2)),
        ("all", NOW, None, None),
        ("today", JUST_BEFORE_MONTH_END, day(2030, 2, 28), day(2030, 3, 1)),
        ("week", JUST_BEFORE_MONTH_END, day(2030, 2, 22), day(2030, 3, 1)),
        ("month", JUST_BEFORE_MONTH_END, day(2030, 2, 1), day(2030, 3, 1)),
        ("session", NOW, STARTED, None),
    ],
)
def test_periods_are_whole_utc_days_except_session(
    name: stats.PeriodName, now: datetime, start: datetime, end: datetime
) -> None:
    period = stats.resolve_period(name, now, STARTED)

    assert (period.start, period.end) == (start, end)
    assert period.is_whole_days == (name != "session")


def test_a_clock_in_another_zone_still_gives_utc_days() -> None:
    from zoneinfo import ZoneInfo

    # 23:30 in New York on Feb 28 is already March 1 in UTC.
    now = datetime(2030, 2, 28, 23, 30, tzinfo=ZoneInfo("America/New_York"))

    period = stats.resolve_period("today", now, STARTED)

    assert period.start == day(2030, 3, 1)


@pytest.mark.parametrize("now", [NOW, JUST_BEFORE_MONTH_END])
async def test_summary_of_each_period_matches_the_rows(
    seeded: asyncpg.Pool, now: datetime
) -> None:
    for name in stats.PERIODS:
        period = stats.resolve_period(name, now, STARTED)

        summary = await stats.summarize(seeded, period)

        expected = select(RECORDS, period.start, period.end)
        assert expected.calls > 0
        assert as_figures(summary) == expected.token_usage(), name


FILTER_CASES = [
    {"purpose": "trading_decision"},
    {"purpose": "untagged"},
    {"model": "gpt-4o-mini"},
    {"ticker": "AAPL"},
    {"cycle_id": "c-80"},
    {"purpose": "news_summary", "model": "deepseek-chat"},
    {"ticker": "MSFT", "purpose": "untagged", "model": "gpt-4o"},
    {"ticker": "NVDA", "cycle_id": "c-85"},
    {"model": "no-such-model"},
]


@pytest.mark.parametrize("name", ["week", "all", "session"])
async def test_filters_narrow_every_figure(
    seeded: asyncpg.Pool, name: stats.PeriodName
) -> None:
    period = stats.resolve_period(name, NOW, STARTED)
    for filters in FILTER_CASES:
        summary = await stats.summarize(seeded, period, stats.Filters(**filters))

        expected = select(RECORDS, period.start, period.end, **filters)
        assert as_figures(summary) == expected.token_usage(), filters


async def test_the_rollups_and_the_rows_agree(seeded: asyncpg.Pool) -> None:
    """The two sources of one whole-day period give the same figures."""
    period = stats.resolve_period("month", JUST_BEFORE_MONTH_END, STARTED)
    for filters in FILTER_CASES:
        narrowed = stats.Filters(
            **{k: v for k, v in filters.items() if k != "cycle_id"}
        )

        from_rollup = await stats.summarize_rollup(seeded, period, narrowed)
        from_rows = await stats.summarize_rows(seeded, period, narrowed)

        assert as_figures(from_rollup) == as_figures(from_rows), filters
        assert from_rollup.totals.calls > 0 or narrowed.model == "no-such-model"


async def test_a_call_tagged_untagged_counts_with_calls_without_a_purpose(
    db_pool: asyncpg.Pool,
) -> None:
    at = day(2030, 3, 1)
    records = [
        UsageRecord("a", at, "m", purpose=None, total_tokens=5),
        UsageRecord("b", at, "m", purpose="untagged", total_tokens=7),
        UsageRecord("c", at, "m", purpose="x", total_tokens=11),
    ]
    await store(db_pool, records)
    period = stats.resolve_period("today", NOW, STARTED)

    summary = await stats.summarize(db_pool, period)
    untagged = await stats.summarize(db_pool, period, stats.Filters(purpose="untagged"))

    assert summary.by_purpose["untagged"].total_tokens == 12
    assert untagged.totals.total_tokens == 12


async def test_session_of_a_later_process_sees_only_later_calls(
    seeded: asyncpg.Pool,
) -> None:
    first = stats.resolve_period("session", NOW, STARTED)
    second = stats.resolve_period("session", NOW, day(2030, 2, 27))

    before = await stats.summarize(seeded, first)
    after = await stats.summarize(seeded, second)

    assert after.totals.calls == select(RECORDS, day(2030, 2, 27)).calls
    assert 0 < after.totals.calls < before.totals.calls


async def test_history_has_one_entry_per_day_ending_today(
    seeded: asyncpg.Pool,
) -> None:
    today = NOW.date()
    for days in (1, 7, 120):
        history = await stats.daily_history(seeded, today, days)

        assert [h.day for h in history] == [
            today - timedelta(days=days - 1 - n) for n in range(days)
        ]
        for entry in history:
            start = datetime.combine(entry.day, datetime.min.time(), UTC)
            expected = select(RECORDS, start, start + timedelta(days=1))
            assert entry.calls == expected.calls
            assert entry.total_tokens == expected.total("total_tokens")
            assert entry.cost_usd == expected.cost


async def test_history_filters_match_the_rows(seeded: asyncpg.Pool) -> None:
    for filters in FILTER_CASES:
        history = await stats.daily_history(
            seeded, date(2030, 2, 28), 40, stats.Filters(**filters)
        )

        for entry in history:
            start = datetime.combine(entry.day, datetime.min.time(), UTC)
            expected = select(RECORDS, start, start + timedelta(days=1), **filters)
            assert (entry.calls, entry.total_tokens, entry.cost_usd) == (
                expected.calls,
                expected.total("total_tokens"),
                expected.cost,
            ), filters


async def test_history_of_days_without_calls_is_zeros(db_pool: asyncpg.Pool) -> None:
    history = await stats.daily_history(db_pool, date(2030, 3, 1), 3)

    assert [(h.calls, h.total_tokens, h.cost_usd) for h in history] == [
        (0, 0, Decimal(0))
    ] * 3


def expected_cycles(records: list[UsageRecord], **filters: str) -> list[dict]:
    chosen = [r for r in select(records, **filters).records if r.cycle_id]
    by_cycle: dict[str, list[UsageRecord]] = {}
    for r in chosen:
        by_cycle.setdefault(r.cycle_id or "", []).append(r)
    cycles = [
        {
            "cycle_id": cid,
            "calls": len(rs),
            "tokens": sum(r.total_tokens for r in rs),
            "cost": sum((r.total_cost_usd or Decimal(0) for r in rs), Decimal(0)),
            "tickers": sorted({r.ticker for r in rs if r.ticker}),
            "purposes": sorted({r.purpose or "untagged" for r in rs}),
            "first_call": min(r.timestamp for r in rs),
            "last_call": max(r.timestamp for r in rs),
        }
        for cid, rs in by_cycle.items()
    ]
    return sorted(cycles, key=lambda c: c["last_call"], reverse=True)


def as_dicts(cycles: list[stats.CycleTotals]) -> list[dict]:
    return [
        {
            "cycle_id": c.cycle_id,
            "calls": c.calls,
            "tokens": c.total_tokens,
            "cost": c.cost_usd,
            "tickers": c.tickers,
            "purposes": c.purposes,
            "first_call": c.first_call,
            "last_call": c.last_call,
        }
        for c in cycles
    ]


async def test_latest_cycles_come_latest_first(seeded: asyncpg.Pool) -> None:
    for limit in (1, 5, 500):
        cycles = await stats.latest_cycles(seeded, limit)

        assert as_dicts(cycles) == expected_cycles(RECORDS)[:limit]


async def test_latest_cycles_walk_past_one_page(
    db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls sharing a timestamp across a page edge are neither lost nor doubled."""
    monkeypatch.setattr(stats, "CYCLE_SCAN_PAGE_ROWS", 3)
    at = day(2030, 3, 1)
    records = [
        UsageRecord(f"r{n}", at, "m", cycle_id=f"c{n % 4}", total_tokens=1)
        for n in range(10)
    ]
    await store(db_pool, records)

    cycles = await stats.latest_cycles(db_pool, 10)

    assert sorted(c.cycle_id for c in cycles) == ["c0", "c1", "c2", "c3"]
    assert sum(c.calls for c in cycles) == 10


async def test_latest_cycles_filtered_by_ticker(seeded: asyncpg.Pool) -> None:
    cycles = await stats.latest_cycles(seeded, 20, stats.Filters(ticker="AAPL"))

    assert as_dicts(cycles) == expected_cycles(RECORDS, ticker="AAPL")[:20]


async def test_latest_calls_come_newest_first(seeded: asyncpg.Pool) -> None:
    rows = await stats.latest_calls(seeded, 25, stats.Filters(model="gpt-4o"))

    expected = sorted(
        select(RECORDS, model="gpt-4o").records,
        key=lambda r: r.timestamp,
        reverse=True,
    )[:25]
    assert [r["request_id"] for r in rows] == [r.request_id for r in expected]


async def test_rows_of_a_range_come_oldest_first_in_chunks(
    seeded: asyncpg.Pool,
) -> None:
    start, end = day(2030, 2, 1), day(2030, 3, 1)

    chunks = [
        chunk async for chunk in stats.iterate_rows(seeded, start, end, chunk_rows=50)
    ]

    expected = select(RECORDS, start, end).records
    assert all(len(c) == 50 for c in chunks[:-1])
    assert [r["request_id"] for c in chunks for r in c] == [
        r.request_id for r in expected
    ]


async def test_budget_state_of_today_and_the_month(seeded: asyncpg.Pool) -> None:
    budgets = BudgetSettings(
        daily_usd=Decimal("0.5"), monthly_usd=None, alert_thresholds=[0.8]
    )

    states = await stats.budget_states(seeded, budgets, JUST_BEFORE_MONTH_END)

    spent_today = select(RECORDS, day(2030, 2, 28), day(2030, 3, 1)).cost
    spent_month = select(RECORDS, day(2030, 2, 1), day(2030, 3, 1)).cost
    assert states["daily"].spent_usd == spent_today
    assert states["daily"].limit_usd == Decimal("0.5")
    assert states["daily"].ratio == float(spent_today / Decimal("0.5"))
    assert states["monthly"] == stats.BudgetState(
        window="month",
        limit_usd=None,
        spent_usd=spent_month,
        ratio=None,
        level="green",
    )


def test_averages_round_halves_up() -> None:
    totals = stats.Totals(calls=2, total_tokens=5, latency_ms_sum=3.0, latency_count=2)

    assert (totals.avg_tokens_per_call, totals.avg_response_time_ms) == (3, 2)
    assert stats.Totals().avg_tokens_per_call == 0


async def test_a_session_reads_rows_of_its_first_day_and_rollups_after(
    seeded: asyncpg.Pool,
) -> None:
    for started in (
        datetime(2030, 2, 28, 23, 0, tzinfo=UTC),
        datetime(2030, 3, 1, 0, 0, 1, tzinfo=UTC),
        datetime(2030, 1, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        period = stats.resolve_period("session", NOW, started)

        summary = await stats.summarize(seeded, period)
        from_rows = await stats.summarize_rows(seeded, period, stats.Filters())

        assert as_figures(summary) == as_figures(from_rows), started
        assert summary.totals.calls == select(RECORDS, started).calls > 0


async def test_retention_trims_the_ticker_rollup_with_the_daily_one(
    seeded: asyncpg.Pool,
) -> None:
    async with seeded.acquire() as conn:
        await db.apply_retention(conn, NOW, months=1)

    period = stats.resolve_period("all", NOW, STARTED)
    summary = await stats.summarize(seeded, period)
    by_ticker = await stats.summarize(seeded, period, stats.Filters(ticker="AAPL"))

    kept = select(RECORDS, day(2030, 3, 1))
    assert as_figures(summary) == kept.token_usage()
    assert (
        by_ticker.totals.calls == select(RECORDS, day(2030, 3, 1), ticker="AAPL").calls
    )
