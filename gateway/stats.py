"""
Statistics over the recorded usage: totals, breakdowns, history, cycles, calls.

Where a figure is read from decides how fast it is:

- whole UTC days (``today``, ``week``, ``month``, ``all``, the history) read
  the daily rollups, ``llm_usage_daily`` and, for tickers,
  ``llm_usage_daily_ticker``: their cost does not grow with the stored calls;
- ``session`` (which starts mid-day) and any filter by cycle scan ``llm_usage``
  over an indexed range.

Everything returned is plain Python: ints, ``Decimal`` money, aware datetimes.
Rendering (rounding, ISO strings) belongs to the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from gateway.config import BudgetSettings
from gateway.limits import configured_limits, level, spent_ratio, window_bounds
from gateway.record import UNTAGGED

PeriodName = Literal["today", "session", "week", "month", "all"]
PERIODS: tuple[PeriodName, ...] = ("today", "session", "week", "month", "all")

# The cycles view walks the newest calls to find the latest cycles; this
# bounds the walk however the calls are spread over cycles.
MAX_CYCLE_SCAN_ROWS = 200_000
CYCLE_SCAN_PAGE_ROWS = 2_000

# The columns of one exported row, in order. No column holds a secret.
EXPORT_COLUMNS = (
    "id",
    "timestamp",
    "request_id",
    "upstream",
    "endpoint",
    "model",
    "status",
    "streamed",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "input_cost_usd",
    "output_cost_usd",
    "total_cost_usd",
    "fee_cost_usd",
    "web_search_calls",
    "file_search_calls",
    "price_source",
    "service_tier",
    "usage_complete",
    "usage_estimated",
    "purpose",
    "ticker",
    "cycle_id",
    "tags",
    "response_time_ms",
    "key_label",
    "error",
)

CALL_COLUMNS = (
    "id",
    "timestamp",
    "request_id",
    "model",
    "purpose",
    "ticker",
    "cycle_id",
    "total_tokens",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_cost_usd",
    "fee_cost_usd",
    "web_search_calls",
    "file_search_calls",
    "service_tier",
    "response_time_ms",
    "status",
    "streamed",
    "upstream",
    "endpoint",
    "error",
)

# The same named sums, from a rollup table and from raw rows.
ROLLUP_SUMS = """
    sum(calls) AS calls, sum(errors) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(total_tokens) AS total_tokens, sum(cost_usd) AS cost_usd,
    sum(latency_ms_sum) AS latency_ms_sum, sum(latency_count) AS latency_count
"""
ROW_SUMS = """
    count(*) AS calls,
    count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL) AS errors,
    sum(input_tokens) AS input_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(total_tokens) AS total_tokens,
    coalesce(sum(total_cost_usd), 0) AS cost_usd,
    coalesce(sum(response_time_ms), 0) AS latency_ms_sum,
    count(response_time_ms) AS latency_count
"""
UTC_DAY = "(\"timestamp\" AT TIME ZONE 'UTC')::date"


@dataclass(frozen=True, slots=True)
class Filters:
    """What narrows every figure; None means no narrowing."""

    purpose: str | None = None
    model: str | None = None
    ticker: str | None = None
    cycle_id: str | None = None

    @property
    def needs_rows(self) -> bool:
        """True when no rollup holds the figures: only raw rows know cycles."""
        return self.cycle_id is not None


@dataclass(frozen=True, slots=True)
class Period:
    name: PeriodName
    # Inclusive start and exclusive end; None is unbounded.
    start: datetime | None
    end: datetime | None

    @property
    def is_whole_days(self) -> bool:
        return all(b is None or b == day_start(b) for b in (self.start, self.end))


def day_start(moment: datetime) -> datetime:
    return datetime.combine(moment.astimezone(UTC).date(), datetime.min.time(), UTC)


def midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


def resolve_period(name: PeriodName, now: datetime, started_at: datetime) -> Period:
    """
    Return the UTC range of the period *name* as of *now*.

    Day-based periods end at the next midnight rather than at *now*, so they
    are whole days (what the rollup holds) and a call stamped later today
    still counts today.
    """
    today = day_start(now)
    tomorrow = today + timedelta(days=1)
    if name == "today":
        return Period(name, today, tomorrow)
    if name == "week":
        return Period(name, today - timedelta(days=6), tomorrow)
    if name == "month":
        return Period(name, today.replace(day=1), tomorrow)
    if name == "all":
        return Period(name, None, None)
    if name == "session":
        return Period(name, started_at.astimezone(UTC), None)
    raise ValueError(f"unknown period {name!r}")


@dataclass(slots=True)
class Totals:
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    latency_ms_sum: float = 0.0
    latency_count: int = 0

    def absorb(self, other: Totals) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def add(self, row: Mapping[str, Any]) -> None:
        """Add one row of named sums (``ROLLUP_SUMS`` or ``ROW_SUMS``)."""
        self.calls += int(row["calls"] or 0)
        self.errors += int(row["errors"] or 0)
        self.input_tokens += int(row["input_tokens"] or 0)
        self.cached_input_tokens += int(row["cached_input_tokens"] or 0)
        self.output_tokens += int(row["output_tokens"] or 0)
        self.reasoning_tokens += int(row["reasoning_tokens"] or 0)
        self.total_tokens += int(row["total_tokens"] or 0)
        self.cost_usd += Decimal(row["cost_usd"] or 0)
        self.latency_ms_sum += float(row["latency_ms_sum"] or 0)
        self.latency_count += int(row["latency_count"] or 0)

    @property
    def avg_tokens_per_call(self) -> int:
        return round_half_up(self.total_tokens / self.calls) if self.calls else 0

    @property
    def avg_response_time_ms(self) -> int:
        if not self.latency_count:
            return 0
        return round_half_up(self.latency_ms_sum / self.latency_count)


def round_half_up(value: float) -> int:
    # round() rounds halves to even; people expect 2.5 ms to read as 3.
    return int(value + 0.5) if value >= 0 else -int(-value + 0.5)


@dataclass(slots=True)
class Summary:
    period: Period
    totals: Totals = field(default_factory=Totals)
    by_model: dict[str, Totals] = field(default_factory=dict)
    by_purpose: dict[str, Totals] = field(default_factory=dict)
    by_ticker: dict[str, Totals] = field(default_factory=dict)

    def absorb(self, other: Summary) -> None:
        """Add the figures of *other*, a summary of a disjoint range."""
        self.totals.absorb(other.totals)
        for mine, theirs in (
            (self.by_model, other.by_model),
            (self.by_purpose, other.by_purpose),
            (self.by_ticker, other.by_ticker),
        ):
            for key, totals in theirs.items():
                mine.setdefault(key, Totals()).absorb(totals)


@dataclass(frozen=True, slots=True)
class DayTotals:
    day: date
    calls: int
    total_tokens: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class CycleTotals:
    cycle_id: str
    calls: int
    total_tokens: int
    cost_usd: Decimal
    tickers: list[str]
    purposes: list[str]
    first_call: datetime
    last_call: datetime


@dataclass(frozen=True, slots=True)
class BudgetState:
    window: Literal["day", "month"]
    limit_usd: Decimal | None
    spent_usd: Decimal
    ratio: float | None
    level: Literal["green", "yellow", "red"]


class Where:
    """A conjunction of SQL conditions with their ``$n`` arguments."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, condition: str, *values: Any) -> None:
        """Add *condition*, whose ``{}`` placeholders take *values* in order."""
        slots = []
        for value in values:
            self.args.append(value)
            slots.append(f"${len(self.args)}")
        self.parts.append(condition.format(*slots))

    def sql(self) -> str:
        return " AND ".join(self.parts) if self.parts else "true"


def filter_rollup(where: Where, filters: Filters, *, by_ticker: bool) -> None:
    """Narrow a rollup query (``purpose`` is '' there for untagged calls)."""
    if filters.purpose == UNTAGGED:
        where.add(f"purpose IN ('', '{UNTAGGED}')")
    elif filters.purpose is not None:
        where.add("purpose = {}", filters.purpose)
    if filters.model is not None:
        where.add("model = {}", filters.model)
    if filters.ticker is not None and by_ticker:
        where.add("ticker = {}", filters.ticker)


def filter_rows(where: Where, filters: Filters) -> None:
    """Narrow a query of ``llm_usage`` by every filter."""
    if filters.purpose == UNTAGGED:
        where.add(f"coalesce(purpose, '') IN ('', '{UNTAGGED}')")
    elif filters.purpose is not None:
        where.add("purpose = {}", filters.purpose)
    if filters.model is not None:
        where.add("model = {}", filters.model)
    if filters.ticker is not None:
        where.add("ticker = {}", filters.ticker)
    if filters.cycle_id is not None:
        where.add("cycle_id = {}", filters.cycle_id)


def limit_days(where: Where, start: datetime | None, end: datetime | None) -> None:
    if start is not None:
        where.add("day >= {}", start.date())
    if end is not None:
        where.add("day < {}", end.date())


def limit_time(where: Where, start: datetime | None, end: datetime | None) -> None:
    if start is not None:
        where.add('"timestamp" >= {}', start)
    if end is not None:
        where.add('"timestamp" < {}', end)


def purpose_name(purpose: str | None) -> str:
    return purpose or UNTAGGED


def add_to(table: dict[str, Totals], key: str, row: Mapping[str, Any]) -> None:
    totals = table.get(key)
    if totals is None:
        totals = table[key] = Totals()
    totals.add(row)


async def summarize(
    pool: asyncpg.Pool, period: Period, filters: Filters = Filters()
) -> Summary:
    """Return the totals and breakdowns of *period* narrowed by *filters*."""
    if filters.needs_rows:
        return await summarize_rows(pool, period, filters)
    if period.is_whole_days:
        return await summarize_rollup(pool, period, filters)

    # A period that starts mid-day (a session): the rows of its first day,
    # then whole days from the rollups, so a process that has run for months
    # scans at most one day of rows.
    if period.start is None:
        return await summarize_rows(pool, period, filters)
    midnight_after = day_start(period.start) + timedelta(days=1)
    if period.end is not None and period.end <= midnight_after:
        return await summarize_rows(pool, period, filters)
    head = Period(period.name, period.start, midnight_after)
    tail = Period(period.name, midnight_after, period.end)
    summary = await summarize_rows(pool, head, filters)
    summary.absorb(await summarize_rollup(pool, tail, filters))
    summary.period = period

    return summary


async def summarize_rollup(
    pool: asyncpg.Pool, period: Period, filters: Filters
) -> Summary:
    """The summary of whole days, read from the rollups alone."""
    summary = Summary(period)
    # A ticker filter means only calls with that ticker: the ticker rollup
    # holds exactly those, by model and purpose.
    table = "llm_usage_daily" if filters.ticker is None else "llm_usage_daily_ticker"
    where = Where()
    limit_days(where, period.start, period.end)
    filter_rollup(where, filters, by_ticker=True)
    rows = await pool.fetch(
        f"SELECT model, purpose, {ROLLUP_SUMS} FROM {table}"
        f" WHERE {where.sql()} GROUP BY model, purpose",
        *where.args,
    )
    for row in rows:
        summary.totals.add(row)
        add_to(summary.by_model, row["model"], row)
        add_to(summary.by_purpose, purpose_name(row["purpose"]), row)

    where = Where()
    limit_days(where, period.start, period.end)
    filter_rollup(where, filters, by_ticker=True)
    for row in await pool.fetch(
        f"SELECT ticker, {ROLLUP_SUMS} FROM llm_usage_daily_ticker"
        f" WHERE {where.sql()} GROUP BY ticker",
        *where.args,
    ):
        add_to(summary.by_ticker, row["ticker"], row)

    return summary


async def summarize_rows(
    pool: asyncpg.Pool, period: Period, filters: Filters
) -> Summary:
    """The summary of any range, from an indexed scan of ``llm_usage``."""
    summary = Summary(period)
    where = Where()
    limit_time(where, period.start, period.end)
    filter_rows(where, filters)
    rows = await pool.fetch(
        f"SELECT model, purpose, ticker, {ROW_SUMS} FROM llm_usage"
        f" WHERE {where.sql()} GROUP BY model, purpose, ticker",
        *where.args,
    )
    for row in rows:
        summary.totals.add(row)
        add_to(summary.by_model, row["model"], row)
        add_to(summary.by_purpose, purpose_name(row["purpose"]), row)
        if row["ticker"] is not None:
            add_to(summary.by_ticker, row["ticker"], row)

    return summary


async def daily_history(
    pool: asyncpg.Pool, today: date, days: int, filters: Filters = Filters()
) -> list[DayTotals]:
    """One entry per UTC day, oldest first, ending with *today*; gaps as zeros."""
    first = today - timedelta(days=days - 1)
    start, end = midnight(first), midnight(today + timedelta(days=1))
    where = Where()
    if filters.needs_rows:
        limit_time(where, start, end)
        filter_rows(where, filters)
        query = (
            f"SELECT {UTC_DAY} AS day, count(*) AS calls,"
            " sum(total_tokens) AS tokens, coalesce(sum(total_cost_usd), 0) AS cost"
            f" FROM llm_usage WHERE {where.sql()} GROUP BY 1"
        )
    else:
        table = (
            "llm_usage_daily" if filters.ticker is None else "llm_usage_daily_ticker"
        )
        limit_days(where, start, end)
        filter_rollup(where, filters, by_ticker=True)
        query = (
            "SELECT day, sum(calls) AS calls, sum(total_tokens) AS tokens,"
            f" sum(cost_usd) AS cost FROM {table} WHERE {where.sql()} GROUP BY day"
        )
    found = {row["day"]: row for row in await pool.fetch(query, *where.args)}

    history = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = found.get(day)
        if row is None:
            history.append(DayTotals(day, 0, 0, Decimal(0)))
        else:
            history.append(
                DayTotals(day, int(row["calls"]), int(row["tokens"]), row["cost"])
            )
    return history


async def latest_cycles(
    pool: asyncpg.Pool, limit: int, filters: Filters = Filters()
) -> list[CycleTotals]:
    """The *limit* cycles with the latest last call, latest first."""
    order = await find_latest_cycle_ids(pool, limit, filters)
    if not order:
        return []
    where = Where()
    where.add("cycle_id = ANY({})", order)
    filter_rows(where, filters)
    rows = await pool.fetch(
        "SELECT cycle_id, count(*) AS calls, sum(total_tokens) AS tokens,"
        " coalesce(sum(total_cost_usd), 0) AS cost,"
        " array_agg(DISTINCT ticker) FILTER (WHERE ticker IS NOT NULL) AS tickers,"
        f" array_agg(DISTINCT coalesce(nullif(purpose, ''), '{UNTAGGED}'))"
        ' AS purposes, min("timestamp") AS first_call, max("timestamp") AS last_call'
        f" FROM llm_usage WHERE {where.sql()} GROUP BY cycle_id",
        *where.args,
    )
    by_id = {row["cycle_id"]: row for row in rows}

    return [
        CycleTotals(
            cycle_id=cycle_id,
            calls=int(row["calls"]),
            total_tokens=int(row["tokens"]),
            cost_usd=row["cost"],
            tickers=sorted(row["tickers"] or []),
            purposes=sorted(row["purposes"] or []),
            first_call=row["first_call"],
            last_call=row["last_call"],
        )
        for cycle_id in order
        if (row := by_id.get(cycle_id)) is not None
    ]


async def find_latest_cycle_ids(
    pool: asyncpg.Pool, limit: int, filters: Filters
) -> list[str]:
    """
    Walk the calls newest first and return the first *limit* distinct cycles.

    The first call met of a cycle is its last one, so the walk's order is
    the cycles' order by last call. Pages are keyed on (timestamp, id) so
    that calls sharing a timestamp are neither skipped nor met twice.
    """
    seen: dict[str, None] = {}
    cursor: tuple[datetime, int] | None = None
    scanned = 0
    while len(seen) < limit and scanned < MAX_CYCLE_SCAN_ROWS:
        where = Where()
        where.add("cycle_id IS NOT NULL")
        filter_rows(where, filters)
        if cursor is not None:
            where.add(
                '"timestamp" <= {} AND ("timestamp" < {} OR id < {})',
                cursor[0],
                cursor[0],
                cursor[1],
            )
        rows = await pool.fetch(
            f'SELECT cycle_id, "timestamp", id FROM llm_usage WHERE {where.sql()}'
            f' ORDER BY "timestamp" DESC, id DESC LIMIT {CYCLE_SCAN_PAGE_ROWS}',
            *where.args,
        )
        for row in rows:
            seen.setdefault(row["cycle_id"], None)
            if len(seen) == limit:
                break
        scanned += len(rows)
        if len(rows) < CYCLE_SCAN_PAGE_ROWS:
            break
        cursor = (rows[-1]["timestamp"], rows[-1]["id"])
    return list(seen)


async def latest_calls(
    pool: asyncpg.Pool, limit: int, filters: Filters = Filters()
) -> list[asyncpg.Record]:
    """The *limit* newest calls, newest first, with ``CALL_COLUMNS``."""
    where = Where()
    filter_rows(where, filters)
    columns = ", ".join(f'"{name}"' for name in CALL_COLUMNS)
    return await pool.fetch(
        f"SELECT {columns} FROM llm_usage WHERE {where.sql()}"
        f' ORDER BY "timestamp" DESC, id DESC LIMIT {int(limit)}',
        *where.args,
    )


async def iterate_rows(
    pool: asyncpg.Pool,
    start: datetime | None,
    end: datetime | None,
    filters: Filters = Filters(),
    chunk_rows: int = 1000,
) -> AsyncIterator[list[asyncpg.Record]]:
    """
    Yield the stored rows of [*start*, *end*) oldest first, *chunk_rows* at a time.

    A server-side cursor holds the place, so memory stays at one chunk however
    long the range; the connection is held until the iteration ends.
    """
    where = Where()
    limit_time(where, start, end)
    filter_rows(where, filters)
    columns = ", ".join(f'"{name}"' for name in EXPORT_COLUMNS)
    query = (
        f'SELECT {columns} FROM llm_usage WHERE {where.sql()} ORDER BY "timestamp", id'
    )
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(query, *where.args)
        while True:
            chunk = await cursor.fetch(chunk_rows)
            if not chunk:
                return
            yield chunk


async def find_call(
    pool: asyncpg.Pool | asyncpg.Connection,
    request_id: str,
    timestamp: datetime | None = None,
) -> asyncpg.Record | None:
    """The stored call with *request_id* (and *timestamp*, when given), if any."""
    where = Where()
    where.add("request_id = {}", request_id)
    if timestamp is not None:
        where.add('"timestamp" = {}', timestamp)
    return await pool.fetchrow(
        'SELECT id, "timestamp", request_id, input_cost_usd, output_cost_usd,'
        " total_cost_usd, fee_cost_usd, price_source FROM llm_usage"
        f' WHERE {where.sql()} ORDER BY "timestamp" LIMIT 1',
        *where.args,
    )


async def window_spent_usd(
    pool: asyncpg.Pool, start: datetime, end: datetime
) -> Decimal:
    """Total cost of the whole days in [*start*, *end*), from the rollup."""
    spent = await pool.fetchval(
        "SELECT sum(cost_usd) FROM llm_usage_daily WHERE day >= $1 AND day < $2",
        start.date(),
        end.date(),
    )
    return Decimal(spent or 0)


async def budget_states(
    pool: asyncpg.Pool, budgets: BudgetSettings, now: datetime
) -> dict[str, BudgetState]:
    """The global daily and monthly budget: limit, spent, ratio and level."""
    limits = {
        limit.window: limit.limit_usd
        for limit in configured_limits(budgets)
        if limit.scope == "global"
    }
    states = {}
    for key, window in (("daily", "day"), ("monthly", "month")):
        start, end = window_bounds(window, now)
        spent = await window_spent_usd(pool, start, end)
        limit_usd = limits.get(window)
        ratio = spent_ratio(spent, limit_usd)
        states[key] = BudgetState(
            window=window,
            limit_usd=limit_usd,
            spent_usd=spent,
            ratio=ratio,
            level=level(ratio, budgets.alert_thresholds),
        )
    return states
