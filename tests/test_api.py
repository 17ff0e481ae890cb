from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from gateway.api import csv_cell
from gateway.app import create_app
from gateway.keys import STARTED_AT
from gateway.record import UsageRecord
from tests.seed import make_records, select, store, usd

RECORDS = make_records()
NOW = datetime(2030, 3, 1, 0, 0, 5, tzinfo=UTC)
JUST_BEFORE_MONTH_END = datetime(2030, 2, 28, 23, 59, 59, tzinfo=UTC)
STARTED = datetime(2030, 2, 20, 13, 30, tzinfo=UTC)
BUDGETS = {"daily_usd": "2.5", "monthly_usd": "40", "alert_thresholds": [0.5, 1.0]}


def day(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def seeded(db_pool: asyncpg.Pool) -> asyncpg.Pool:
    await store(db_pool, RECORDS)
    return db_pool


@pytest.fixture
def start_client(aiohttp_client: Any, make_settings: Any) -> Any:
    """Start a gateway whose clock reads *now* and that started at *started*."""

    async def start(
        now: datetime = NOW, started: datetime = STARTED, **sections: Any
    ) -> Any:
        sections.setdefault("budgets", BUDGETS)
        app = create_app(make_settings(**sections), clock=lambda: now)
        app[STARTED_AT] = started
        return await aiohttp_client(app)

    return start


def expected_budget(now: datetime) -> dict[str, Any]:
    today = datetime.combine(now.date(), datetime.min.time(), UTC)
    month = today.replace(day=1)
    spent_day = select(RECORDS, today, today + timedelta(days=1)).cost
    spent_month = select(RECORDS, month, today + timedelta(days=1)).cost

    def state(window: str, limit: Decimal, spent: Decimal) -> dict[str, Any]:
        ratio = float(spent / limit)
        level = "red" if ratio >= 1 else "yellow" if ratio >= 0.5 else "green"
        return {
            "window": window,
            "limit_usd": float(limit),
            "spent_usd": usd(spent),
            "ratio": round(ratio, 6),
            "level": level,
        }

    return {
        "daily": state("day", Decimal("2.5"), spent_day),
        "monthly": state("month", Decimal("40"), spent_month),
    }


PERIOD_CASES = {
    NOW: [
        ("today", day(2030, 3, 1), day(2030, 3, 2)),
        ("week", day(2030, 2, 23), day(2030, 3, 2)),
        ("month", day(2030, 3, 1), day(2030, 3, 2)),
        ("all", None, None),
        ("session", STARTED, None),
    ],
    JUST_BEFORE_MONTH_END: [
        ("today", day(2030, 2, 28), day(2030, 3, 1)),
        ("week", day(2030, 2, 22), day(2030, 3, 1)),
        ("month", day(2030, 2, 1), day(2030, 3, 1)),
    ],
}


@pytest.mark.parametrize("now", list(PERIOD_CASES))
async def test_token_usage_of_each_period_is_every_figure_of_its_rows(
    seeded: asyncpg.Pool, start_client: Any, now: datetime
) -> None:
    client = await start_client(now=now)
    for period, start, end in PERIOD_CASES[now]:
        resp = await client.get("/api/token-usage", params={"period": period})

        assert resp.status == 200
        expected = select(RECORDS, start, end)
        assert expected.calls > 0
        assert await resp.json() == {
            "period": period,
            "from": None if start is None else iso(start),
            "to": iso(now),
            **expected.token_usage(),
            "budget": expected_budget(now),
        }, period


async def test_token_usage_defaults_to_today(
    seeded: asyncpg.Pool, start_client: Any
) -> None:
    client = await start_client()

    body = await (await client.get("/api/token-usage")).json()

    assert body["period"] == "today"
    assert body["api_calls_count"] == select(RECORDS, day(2030, 3, 1)).calls


FILTER_CASES = [
    {"purpose": "trading_decision"},
    {"purpose": "untagged", "ticker": "AAPL"},
    {"model": "deepseek-chat", "cycle_id": "c-70"},
    {"ticker": "NVDA"},
]


@pytest.mark.parametrize("period", ["month", "session", "all"])
async def test_token_usage_filters_narrow_every_figure(
    seeded: asyncpg.Pool, start_client: Any, period: str
) -> None:
    client = await start_client(now=JUST_BEFORE_MONTH_END)
    bounds = {
        "month": (day(2030, 2, 1), day(2030, 3, 1)),
        "session": (STARTED, None),
        "all": (None, None),
    }[period]
    for filters in FILTER_CASES:
        resp = await client.get(
            "/api/token-usage", params={"period": period, **filters}
        )

        body = await resp.json()
        expected = select(RECORDS, *bounds, **filters).token_usage()
        assert {k: body[k] for k in expected} == expected, filters
        # The budget is the whole spend whatever the filters.
        assert body["budget"] == expected_budget(JUST_BEFORE_MONTH_END)


async def test_token_usage_without_calls_is_zeros(
    db_pool: asyncpg.Pool, start_client: Any
) -> None:
    client = await start_client(budgets={})

    body = await (await client.get("/api/token-usage?period=all")).json()

    assert body["api_calls_count"] == 0
    assert body["avg_tokens_per_call"] == 0
    assert body["avg_response_time_ms"] == 0
    assert body["total_cost_usd"] == 0
    assert body["breakdown_by_model"] == {}
    assert body["budget"]["daily"] == {
        "window": "day",
        "limit_usd": None,
        "spent_usd": 0,
        "ratio": None,
        "level": "green",
    }


async def test_session_after_a_restart_sees_only_later_calls(
    db_pool: asyncpg.Pool, start_client: Any
) -> None:
    earlier = [
        UsageRecord(f"e{n}", day(2030, 2, 28) + timedelta(hours=n), "m", total_tokens=3)
        for n in range(3)
    ]
    later = [
        UsageRecord(f"l{n}", day(2030, 2, 28) + timedelta(hours=12 + n), "m")
        for n in range(2)
    ]
    await store(db_pool, earlier + later)
    first = await start_client(now=JUST_BEFORE_MONTH_END, started=day(2030, 2, 27))
    second = await start_client(
        now=JUST_BEFORE_MONTH_END, started=day(2030, 2, 28) + timedelta(hours=11)
    )

    before = await (await first.get("/api/token-usage?period=session")).json()
    after = await (await second.get("/api/token-usage?period=session")).json()

    assert before["api_calls_count"] == 5
    assert after["api_calls_count"] == 2
    assert after["from"] == "2030-02-28T11:00:00Z"


async def test_history_is_one_entry_per_day_ending_today(
    seeded: asyncpg.Pool, start_client: Any
) -> None:
    client = await start_client(now=JUST_BEFORE_MONTH_END)
    for query, days in (("", 30), ("?days=1", 1), ("?days=366", 366)):
        body = await (await client.get(f"/api/token-usage/history{query}")).json()

        first = day(2030, 2, 28) - timedelta(days=days - 1)
        expected = []
        for n in range(days):
            start = first + timedelta(days=n)
            rows = select(RECORDS, start, start + timedelta(days=1))
            expected.append(
                {
                    "date": start.date().isoformat(),
                    "tokens": rows.total("total_tokens"),
                    "cost": usd(rows.cost),
                    "calls": rows.calls,
                }
            )
        assert body == {"days": days, "data": expected}


async def test_history_filters(seeded: asyncpg.Pool, start_client: Any) -> None:
    client = await start_client()

    body = await (
        await client.get(
            "/api/token-usage/history",
            params={"days": "10", "ticker": "MSFT", "purpose": "news_summary"},
        )
    ).json()

    for entry in body["data"]:
        start = datetime.fromisoformat(entry["date"]).replace(tzinfo=UTC)
        rows = select(
            RECORDS,
            start,
            start + timedelta(days=1),
            ticker="MSFT",
            purpose="news_summary",
        )
        assert (entry["calls"], entry["tokens"], entry["cost"]) == (
            rows.calls,
            rows.total("total_tokens"),
            usd(rows.cost),
        )
    assert sum(e["calls"] for e in body["data"]) > 0


async def test_cycles_are_latest_first(seeded: asyncpg.Pool, start_client: Any) -> None:
    client = await start_client()

    body = await (await client.get("/api/token-usage/cycles?limit=4")).json()

    by_cycle: dict[str, list[UsageRecord]] = {}
    for record in RECORDS:
        if record.cycle_id:
            by_cycle.setdefault(record.cycle_id, []).append(record)
    latest = sorted(
        by_cycle.items(), key=lambda kv: max(r.timestamp for r in kv[1]), reverse=True
    )[:4]
    assert body == {
        "cycles": [
            {
                "cycle_id": cycle_id,
                "calls": len(rs),
                "tokens": sum(r.total_tokens for r in rs),
                "cost": usd(
                    sum((r.total_cost_usd or Decimal(0) for r in rs), Decimal(0))
                ),
                "tickers": sorted({r.ticker for r in rs if r.ticker}),
                "purposes": sorted({r.purpose or "untagged" for r in rs}),
                "first_call": iso(min(r.timestamp for r in rs)),
                "last_call": iso(max(r.timestamp for r in rs)),
            }
            for cycle_id, rs in latest
        ]
    }


async def test_calls_are_newest_first_with_every_field(
    seeded: asyncpg.Pool, start_client: Any
) -> None:
    client = await start_client()

    body = await (await client.get("/api/token-usage/calls?limit=7")).json()

    ids = {
        row["request_id"]: row["id"]
        for row in await seeded.fetch("SELECT id, request_id FROM llm_usage")
    }
    newest = sorted(RECORDS, key=lambda r: r.timestamp, reverse=True)[:7]
    assert body == {
        "calls": [
            {
                "id": ids[r.request_id],
                "timestamp": iso(r.timestamp),
                "request_id": r.request_id,
                "model": r.model,
                "purpose": r.purpose,
                "ticker": r.ticker,
                "cycle_id": r.cycle_id,
                "tokens": r.total_tokens,
                "input_tokens": r.input_tokens,
                "cached_input_tokens": r.cached_input_tokens,
                "output_tokens": r.output_tokens,
                "reasoning_tokens": r.reasoning_tokens,
                "cost": None if r.total_cost_usd is None else usd(r.total_cost_usd),
                "fee_cost": None if r.fee_cost_usd is None else usd(r.fee_cost_usd),
                "web_search_calls": r.web_search_calls,
                "file_search_calls": r.file_search_calls,
                "service_tier": r.service_tier,
                "response_time_ms": r.response_time_ms,
                "status": r.status,
                "streamed": r.streamed,
                "upstream": r.upstream,
                "endpoint": r.endpoint,
                "error": r.error,
            }
            for r in newest
        ]
    }


async def test_calls_default_to_fifty_and_take_filters(
    seeded: asyncpg.Pool, start_client: Any
) -> None:
    client = await start_client()

    every = await (await client.get("/api/token-usage/calls")).json()
    untagged = await (
        await client.get("/api/token-usage/calls?purpose=untagged&limit=1000")
    ).json()

    assert len(every["calls"]) == 50
    assert len(untagged["calls"]) == select(RECORDS, purpose="untagged").calls
    assert {c["purpose"] for c in untagged["calls"]} == {None}


async def read_csv(resp: Any) -> list[dict[str, str]]:
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(await resp.text())))


async def test_export_is_the_rows_of_the_range(
    seeded: asyncpg.Pool, start_client: Any
) -> None:
    client = await start_client()

    rows = await read_csv(
        await client.get(
            "/api/token-usage/export.csv",
            params={"from": "2030-02-01", "to": "2030-02-28T23:59:59.999999Z"},
        )
    )

    expected = select(
        RECORDS, day(2030, 2, 1), datetime(2030, 2, 28, 23, 59, 59, 999999, tzinfo=UTC)
    ).records
    assert [r["request_id"] for r in rows] == [r.request_id for r in expected]
    first, record = rows[0], expected[0]
    assert first["timestamp"] == iso(record.timestamp)
    assert first["model"] == record.model
    assert int(first["total_tokens"]) == record.total_tokens
    assert (Decimal(first["total_cost_usd"]) if first["total_cost_usd"] else None) == (
        record.total_cost_usd
    )
    assert first["streamed"] in {"true", "false"}


async def test_export_to_a_date_includes_that_whole_day(
    seeded: asyncpg.Pool, start_client: Any
) -> None:
    client = await start_client()

    rows = await read_csv(
        await client.get(
            "/api/token-usage/export.csv?from=2030-02-28&to=2030-02-28&model=gpt-4o"
        )
    )

    expected = select(RECORDS, day(2030, 2, 28), day(2030, 3, 1), model="gpt-4o")
    assert len(rows) == expected.calls > 0


async def test_export_streams_more_rows_than_one_chunk(
    seeded: asyncpg.Pool, start_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import api

    monkeypatch.setattr(api, "EXPORT_CHUNK_ROWS", 64)
    client = await start_client()

    resp = await client.get("/api/token-usage/export.csv")

    assert resp.headers.get("Transfer-Encoding") == "chunked"
    assert len(await read_csv(resp)) == len(RECORDS)


async def test_export_defuses_cells_a_spreadsheet_would_run(
    db_pool: asyncpg.Pool, start_client: Any
) -> None:
    await store(
        db_pool,
        [UsageRecord("x", day(2030, 3, 1), "m", purpose='=HYPERLINK("http://e")')],
    )
    client = await start_client()

    rows = await read_csv(await client.get("/api/token-usage/export.csv"))

    assert rows[0]["purpose"] == '\'=HYPERLINK("http://e")'


@pytest.mark.parametrize(
    "text",
    [
        "=1+1",
        "+1",
        "-1",
        "@SUM(A1)",
        "\tx",
        "\rx",
        " =1+1",
        "\u3000=1+1",
        "\n@x",
        "\uff1d1+1",
        "\uff0b1",
        "\uff0d1",
        "\uff20x",
    ],
)
def test_a_cell_a_spreadsheet_would_run_is_defused(text: str) -> None:
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["trade", "a=b", " x", "", "1-2", "\u00e9t\u00e9"])
def test_other_cells_are_left_as_they_are(text: str) -> None:
    assert csv_cell(text) == text


BAD_PARAMETERS = [
    ("/api/token-usage?period=year", "period"),
    ("/api/token-usage?period=", "period"),
    ("/api/token-usage?purpose=" + "p" * 300, "purpose"),
    ("/api/token-usage?model=a&model=b", "model"),
    ("/api/token-usage?ticker=%00", "ticker"),
    ("/api/token-usage?ticker=AAPL%0A", "ticker"),
    ("/api/token-usage/history?days=0", "days"),
    ("/api/token-usage/history?days=367", "days"),
    ("/api/token-usage/history?days=abc", "days"),
    ("/api/token-usage/history?days=-5", "days"),
    ("/api/token-usage/history?days=99999999999999999999", "days"),
    ("/api/token-usage/history?cycle_id=" + "c" * 257, "cycle_id"),
    ("/api/token-usage/cycles?limit=0", "limit"),
    ("/api/token-usage/cycles?limit=501", "limit"),
    ("/api/token-usage/calls?limit=1001", "limit"),
    ("/api/token-usage/calls?limit=1.5", "limit"),
    ("/api/token-usage/export.csv?from=yesterday", "from"),
    ("/api/token-usage/export.csv?to=2030-13-01", "to"),
    ("/api/token-usage/export.csv?to=9999-12-31", "to"),
    ("/api/token-usage/export.csv?from=0001-01-01T00:00:00%2B01:00", "from"),
    ("/api/token-usage/export.csv?from=2030-03-02&to=2030-03-01", "to"),
]


async def test_a_bad_parameter_is_a_400_naming_it(
    db_pool: asyncpg.Pool, start_client: Any
) -> None:
    client = await start_client()
    for path, param in BAD_PARAMETERS:
        resp = await client.get(path)

        assert resp.status == 400, path
        error = (await resp.json())["error"]
        assert error["param"] == param, path
        assert error["code"] == "invalid_parameter"
        assert param in error["message"]
