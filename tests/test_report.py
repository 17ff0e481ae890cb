from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from gateway import cli, db, report
from gateway.clock import utc_now
from gateway.config import Settings
from gateway.limits import Limit
from gateway.record import UsageRecord, new_request_id
from gateway.recorder import write_batch

NOW = datetime(2030, 6, 15, 14, 35, 10, tzinfo=UTC)


def call(
    at: datetime, model: str, tokens: int, cost: str, latency_ms: float
) -> UsageRecord:
    return UsageRecord(
        request_id=new_request_id(),
        timestamp=at,
        model=model,
        input_tokens=tokens - 100,
        output_tokens=100,
        total_tokens=tokens,
        total_cost_usd=Decimal(cost),
        response_time_ms=latency_ms,
    )


def seeded_calls(now: datetime) -> list[UsageRecord]:
    """Three calls today, a large one on the 1st, one last month."""
    today = now.replace(hour=9, minute=0)
    first = now.replace(day=1, hour=3)
    return [
        call(today, "gpt-4o", 50_000, "0.20", 800),
        call(today, "gpt-4o", 30_000, "0.15", 1000),
        call(today, "deepseek-chat", 45_430, "0.102", 750),
        call(first, "gpt-4o", 1_000_000, "4.0", 500),
        call(first - timedelta(hours=4), "gpt-4o", 999, "9", 1),
    ]


EXPECTED_EN = """\
📊 LLM token usage

📅 Today:
├ Tokens: 125,430
├ Cost: $0.4520
└ Calls: 3

📈 This month:
├ Tokens: 1,125,430
├ Cost: $4.4520
└ Avg per day: $0.2968

💰 By model (today):
├ gpt-4o: $0.3500 (77.4%)
└ deepseek-chat: $0.1020 (22.6%)

⏱ Avg response time: 850 ms

Updated: 14:35 UTC"""

EXPECTED_IT = """\
📊 Consumo Token LLM

📅 Oggi:
├ Token: 125,430
├ Costo: $0.4520
└ Chiamate: 3

📈 Questo mese:
├ Token: 1,125,430
├ Costo: $4.4520
└ Media al giorno: $0.2968

💰 Per modello (oggi):
├ gpt-4o: $0.3500 (77.4%)
└ deepseek-chat: $0.1020 (22.6%)

⏱ Tempo risposta medio: 850 ms

Aggiornato: 14:35 UTC"""


async def test_tokens_summary_reads_today_and_the_month(
    db_pool: asyncpg.Pool,
) -> None:
    await write_batch(db_pool, seeded_calls(NOW))

    summary = await report.read_tokens_summary(db_pool, NOW)

    assert report.render_tokens(summary, "en") == EXPECTED_EN
    assert report.render_tokens(summary, "it") == EXPECTED_IT


async def test_week_counts_today_and_the_six_days_before(
    db_pool: asyncpg.Pool,
) -> None:
    calls = seeded_calls(NOW)
    calls.append(call(NOW - timedelta(days=6), "o3", 10, "1", 100))
    calls.append(call(NOW - timedelta(days=7), "o3", 10, "1", 100))
    await write_batch(db_pool, calls)

    summary = await report.read_tokens_summary(db_pool, NOW, "week")

    assert summary.figures.calls == 4
    assert summary.figures.cost_usd == Decimal("1.452")
    text = report.render_tokens(summary, "en")
    assert "📅 Last 7 days:\n├ Tokens: 125,440\n├ Cost: $1.4520\n└ Calls: 4" in text
    assert "├ o3: $1.0000 (68.9%)" in text


async def test_month_period_shows_the_month_once(db_pool: asyncpg.Pool) -> None:
    await write_batch(db_pool, seeded_calls(NOW))

    text = report.render_tokens(await report.read_tokens_summary(db_pool, NOW, "month"))

    assert "📈 This month:\n├ Tokens: 1,125,430\n├ Cost: $4.4520\n└ Calls: 4" in text
    assert text.count("📈") == 1
    assert "💰 By model (this month):" in text


def test_a_day_without_calls_says_so() -> None:
    summary = report.TokensSummary(
        period="today",
        at=NOW,
        figures=report.Figures(),
        month=report.Figures(),
        month_days=15,
    )

    text = report.render_tokens(summary)

    assert "💰 By model (today):\nno calls" in text
    assert "⏱ Avg response time: unknown" in text


def test_html_mode_escapes_model_names_and_plain_mode_does_not() -> None:
    figures = report.Figures(calls=1, tokens=5, cost_usd=Decimal("0.01"))
    summary = report.TokensSummary(
        period="today",
        at=NOW,
        figures=figures,
        month=figures,
        month_days=1,
        by_model={"<b>evil</b>&co": figures},
    )

    as_html = report.render_tokens(summary, as_html=True)
    plain = report.render_tokens(summary)

    assert "└ &lt;b&gt;evil&lt;/b&gt;&amp;co: $0.0100 (100.0%)" in as_html
    assert "<b>" not in as_html
    assert "└ <b>evil</b>&co: $0.0100 (100.0%)" in plain


def test_many_models_are_cut_to_the_most_expensive() -> None:
    by_model = {
        f"m{i:02d}": report.Figures(calls=1, cost_usd=Decimal(i)) for i in range(1, 13)
    }
    total = report.total_of(by_model)
    summary = report.TokensSummary("today", NOW, total, total, 15, by_model)

    text = report.render_tokens(summary)

    assert "├ m12: $12.0000 (15.4%)" in text
    assert "m02" not in text
    assert "└ 2 more: $3.0000 (3.8%)" in text


def test_status_lists_the_gateway_state() -> None:
    state = report.GatewayState(
        uptime_s=2 * 86400 + 3 * 3600 + 4 * 60 + 5,
        upstreams=["openai", "deepseek"],
        database_ok=True,
        queue_depth=1234,
        spool_depth=0,
        cost_today_usd=Decimal("0.452"),
    )

    text = report.render_status(state)

    assert text.splitlines() == [
        "🟢 Gateway status",
        "",
        "⏱ Uptime: 2d 3h 4m",
        "🔀 Upstreams: openai, deepseek",
        "🗄 Database: ok",
        "📥 Recorder queue: 1,234",
        "💾 Spool: 0",
        "",
        "💰 LLM cost today: $0.4520",
    ]


def test_status_with_the_database_down_says_unreachable() -> None:
    state = report.GatewayState(60, ["openai"], False, 0, 17, None)

    text = report.render_status(state, "it")

    assert "🗄 Database: non raggiungibile" in text
    assert "💾 Spool: 17" in text
    assert "💰 Costo LLM oggi: sconosciuto" in text


def test_daily_summary_has_averages() -> None:
    figures = report.Figures(
        calls=45, tokens=125_430, cost_usd=Decimal("0.452"),
        latency_ms_sum=45 * 850.4, latency_count=45,
    )  # fmt: skip

    text = report.render_daily_summary(date(2030, 6, 14), figures)

    assert text == (
        "🌙 Daily summary: 2030-06-14\n\n"
        "├ Cost: $0.4520\n"
        "├ Tokens: 125,430\n"
        "├ Calls: 45\n"
        "├ Avg tokens per call: 2,787\n"
        "└ Avg response time: 850 ms"
    )


def test_help_lists_every_command() -> None:
    for language in ("en", "it"):
        text = report.render_help(language)
        assert all(c in text for c in ("/tokens", "/status", "/help"))


def test_report_command_parses_its_period() -> None:
    args = cli.build_parser().parse_args(["report", "--period", "week"])

    assert args.period == "week"
    assert args.run is report.run_report
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["report", "--period", "year"])


def test_report_command_prints_the_summary(
    make_settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings: Settings = make_settings()
    now = utc_now()

    async def seed() -> None:
        conn = await asyncpg.connect(settings.database.url.get_secret_value())
        await db.init_connection(conn)
        try:
            await conn.execute("TRUNCATE llm_usage, llm_usage_daily")
            await write_batch(conn, [call(now, "gpt-4o", 1234, "0.5", 300)])
        finally:
            await conn.close()

    asyncio.run(seed())
    args = cli.build_parser().parse_args(["report"])

    status = report.run_report(args, settings)

    out = capsys.readouterr().out
    assert status == 0
    assert "📅 Today:\n├ Tokens: 1,234\n├ Cost: $0.5000\n└ Calls: 1" in out
    assert "└ gpt-4o: $0.5000 (100.0%)" in out


def test_report_command_says_in_one_line_when_the_database_is_away(
    make_settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    settings: Settings = make_settings(
        database={"url": "postgresql://postgres@127.0.0.1:1/none"}
    )
    args = cli.build_parser().parse_args(["report"])

    status = report.run_report(args, settings)

    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert captured.err.startswith("tallygate: cannot read the usage: ")
    assert captured.err.count("\n") == 1


@pytest.mark.parametrize(
    ("language", "threshold", "expected"),
    [
        (
            "en",
            0.8,
            "⚠️ Budget alert\n\ndaily:news budget (day from 2030-06-15) reached "
            "80%: spent $4.1000 of $5.0000.",
        ),
        (
            "en",
            1.0,
            "🚨 Budget exceeded\n\ndaily:news budget (day from 2030-06-15) reached "
            "100%: spent $4.1000 of $5.0000.\n"
            "New calls in its scope are refused until the window ends.",
        ),
        (
            "it",
            0.8,
            "⚠️ Avviso budget\n\nBudget daily:news (giorno iniziato il 2030-06-15): "
            "soglia 80% raggiunta, spesi $4.1000 su $5.0000.",
        ),
    ],
)
def test_alert_text(language: str, threshold: float, expected: str) -> None:
    limit = Limit("purpose:news", "day", Decimal(5))

    text = report.render_alert(
        limit,
        threshold,
        Decimal("4.1"),
        NOW,
        True,
        language,  # type: ignore[arg-type]
    )

    assert text == expected
