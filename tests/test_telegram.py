from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway import db
from gateway.app import create_app
from gateway.config import DatabaseSettings
from gateway.keys import INSTANCE
from gateway.record import UsageRecord, new_request_id
from gateway.recorder import write_batch
from gateway.telegram import (
    POLLER_LEASE,
    TELEGRAM,
    BotApi,
    BotApiError,
    DeliveryError,
    TelegramBot,
    parse_command,
    summary_day_due,
)
from tests.fake_telegram import TOKEN, FakeBotApi, start_fake_bot_api

NOW = datetime(2030, 6, 15, 14, 35, tzinfo=UTC)
CHAT_ID = 4242


def call(at: datetime, model: str, tokens: int, cost: str, latency_ms: float) -> Any:
    return UsageRecord(
        request_id=new_request_id(),
        timestamp=at,
        model=model,
        input_tokens=tokens - 10,
        output_tokens=10,
        total_tokens=tokens,
        total_cost_usd=Decimal(cost),
        response_time_ms=latency_ms,
    )


@pytest.fixture
async def bot_api(aiohttp_server: Any) -> FakeBotApi:
    return await start_fake_bot_api(aiohttp_server)


@pytest.fixture
def start_gateway(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool, bot_api: FakeBotApi
) -> Any:
    async def start(
        now: datetime = NOW, language: str = "en", **telegram: Any
    ) -> TestClient:
        settings = make_settings(
            telegram={
                "bot_token": TOKEN,
                "chat_id": CHAT_ID,
                "api_base": bot_api.base_url,
                "language": language,
                "poll_timeout_s": 1,
                "daily_summary": False,
                **telegram,
            }
        )
        return await aiohttp_client(create_app(settings, clock=lambda: now))

    return start


def bot_of(client: TestClient) -> TelegramBot:
    return client.server.app[TELEGRAM]


async def test_tokens_answers_the_chat_with_the_figures_of_the_day(
    start_gateway: Any, db_pool: asyncpg.Pool, bot_api: FakeBotApi
) -> None:
    today = NOW.replace(hour=10)
    await write_batch(
        db_pool,
        [
            call(today, "gpt-4o", 100_000, "0.35", 900),
            call(today, "deepseek-chat", 25_430, "0.102", 800),
            call(NOW.replace(day=2), "gpt-4o", 74_570, "1.0", 100),
        ],
    )
    await start_gateway()

    bot_api.add_message(999, "/tokens")
    bot_api.add_message(CHAT_ID, "/tokens")
    await bot_api.wait_sent(1)

    [sent] = bot_api.sent
    assert sent["chat_id"] == str(CHAT_ID)
    assert sent["parse_mode"] == "HTML"
    assert sent["text"] == (
        "📊 LLM token usage\n\n"
        "📅 Today:\n├ Tokens: 125,430\n├ Cost: $0.4520\n└ Calls: 2\n\n"
        "📈 This month:\n├ Tokens: 200,000\n├ Cost: $1.4520\n"
        "└ Avg per day: $0.0968\n\n"
        "💰 By model (today):\n├ gpt-4o: $0.3500 (77.4%)\n"
        "└ deepseek-chat: $0.1020 (22.6%)\n\n"
        "⏱ Avg response time: 850 ms\n\n"
        "Updated: 14:35 UTC"
    )


async def test_italian_tokens_reads_as_the_existing_bot(
    start_gateway: Any, db_pool: asyncpg.Pool, bot_api: FakeBotApi
) -> None:
    await write_batch(db_pool, [call(NOW, "gpt-4o", 1000, "0.01", 700)])
    await start_gateway(language="it")

    bot_api.add_message(CHAT_ID, "/tokens@tally_bot")
    await bot_api.wait_sent(1)

    text = bot_api.sent[0]["text"]
    assert text.startswith("📊 Consumo Token LLM\n\n📅 Oggi:\n├ Token: 1,000\n")
    assert "📈 Questo mese:" in text
    assert "💰 Per modello (oggi):" in text
    assert "⏱ Tempo risposta medio: 700 ms" in text
    assert text.endswith("Aggiornato: 14:35 UTC")


async def test_status_tells_the_gateway_state_and_the_cost_today(
    start_gateway: Any, db_pool: asyncpg.Pool, bot_api: FakeBotApi
) -> None:
    await write_batch(db_pool, [call(NOW, "gpt-4o", 1000, "0.452", 700)])
    await start_gateway()

    bot_api.add_message(CHAT_ID, "/status")
    await bot_api.wait_sent(1)

    lines = bot_api.sent[0]["text"].splitlines()
    assert lines[0] == "🟢 Gateway status"
    assert "🔀 Upstreams: openai, deepseek" in lines
    assert "🗄 Database: ok" in lines
    assert "📥 Recorder queue: 0" in lines
    assert "💾 Spool: 0" in lines
    assert lines[-1] == "💰 LLM cost today: $0.4520"


async def test_help_and_commands_for_other_bots(
    start_gateway: Any, bot_api: FakeBotApi
) -> None:
    await start_gateway()

    bot_api.add_message(CHAT_ID, "/tokens@some_other_bot")
    bot_api.add_message(CHAT_ID, "hello there")
    bot_api.add_message(CHAT_ID, "/help")
    await bot_api.wait_sent(1)

    assert len(bot_api.sent) == 1
    assert bot_api.sent[0]["text"].startswith("🤖 Commands")


async def test_offset_survives_a_restart_so_nothing_is_answered_twice(
    start_gateway: Any, db_pool: asyncpg.Pool, bot_api: FakeBotApi
) -> None:
    first = await start_gateway()
    bot_api.add_message(CHAT_ID, "/help")
    answered = list(bot_api.updates)
    await bot_api.wait_sent(1)
    await first.close()
    # As if the first process died before confirming: Telegram offers it again.
    bot_api.updates[:0] = answered

    await start_gateway()
    bot_api.add_message(CHAT_ID, "/status")
    await bot_api.wait_sent(2)

    assert len(bot_api.sent) == 2
    assert bot_api.sent[1]["text"].startswith("🟢 Gateway status")
    stored = await db_pool.fetchval(
        "SELECT value FROM gateway_state WHERE name = $1", "telegram_offset:123456"
    )
    assert stored == {"offset": 3}


async def test_a_429_waits_as_long_as_retry_after_says(
    start_gateway: Any, bot_api: FakeBotApi
) -> None:
    await start_gateway()
    bot_api.fail_next("sendMessage", 429, retry_after=1)

    bot_api.add_message(CHAT_ID, "/help")
    await bot_api.wait_sent(1)

    attempts = bot_api.calls("sendMessage")
    assert len(attempts) == 2
    assert attempts[1].at - attempts[0].at >= 0.95
    assert len(bot_api.sent) == 1


async def test_only_one_gateway_polls_and_the_other_takes_over(
    start_gateway: Any, db_pool: asyncpg.Pool, bot_api: FakeBotApi
) -> None:
    first = await start_gateway()
    second = await start_gateway()
    bot_api.add_message(CHAT_ID, "/help")
    await bot_api.wait_sent(1)
    holder = await db_pool.fetchval(
        "SELECT holder FROM gateway_state WHERE name = $1", POLLER_LEASE
    )
    polling, standing_by = (
        (first, second) if holder == first.server.app[INSTANCE] else (second, first)
    )

    refused = await bot_of(standing_by).lease.take(db_pool)
    await polling.close()
    taken = await bot_of(standing_by).lease.take(db_pool)

    assert len(bot_api.sent) == 1
    assert holder in {first.server.app[INSTANCE], second.server.app[INSTANCE]}
    assert refused is False
    assert taken is True


async def test_two_gateways_send_the_daily_summary_once(
    start_gateway: Any, db_pool: asyncpg.Pool, bot_api: FakeBotApi
) -> None:
    just_after_midnight = datetime(2030, 6, 16, 0, 0, 30, tzinfo=UTC)
    yesterday = datetime(2030, 6, 15, 18, tzinfo=UTC)
    await write_batch(
        db_pool,
        [
            call(yesterday, "gpt-4o", 3000, "0.30", 1000),
            call(yesterday, "gpt-4o", 1000, "0.152", 500),
            call(just_after_midnight, "gpt-4o", 99, "9", 1),
        ],
    )

    first = await start_gateway(just_after_midnight, daily_summary=True)
    second = await start_gateway(just_after_midnight, daily_summary=True)
    await bot_api.wait_sent(1)
    again = [
        await bot_of(first).send_daily_summary_if_due(),
        await bot_of(second).send_daily_summary_if_due(),
    ]

    assert again == [False, False]
    assert len(bot_api.sent) == 1
    assert bot_api.sent[0]["text"] == (
        "🌙 Daily summary: 2030-06-15\n\n"
        "├ Cost: $0.4520\n├ Tokens: 4,000\n├ Calls: 2\n"
        "├ Avg tokens per call: 2,000\n└ Avg response time: 750 ms"
    )
    done = await db_pool.fetchval(
        "SELECT done_at FROM gateway_once WHERE kind = 'daily_summary'"
        " AND scope = '2030-06-15'"
    )
    assert done is not None


@pytest.mark.parametrize(
    ("now", "at", "due"),
    [
        (datetime(2030, 6, 16, 0, 0, tzinfo=UTC), time(0, 0), date(2030, 6, 15)),
        (datetime(2030, 6, 16, 23, 59, tzinfo=UTC), time(0, 0), date(2030, 6, 15)),
        (datetime(2030, 6, 16, 7, 59, tzinfo=UTC), time(8, 0), date(2030, 6, 14)),
        (datetime(2030, 6, 16, 8, 0, tzinfo=UTC), time(8, 0), date(2030, 6, 15)),
    ],
)
def test_the_summary_due_is_of_the_day_before_the_last_send_time(
    now: datetime, at: time, due: date
) -> None:
    assert summary_day_due(now, at) == due


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("/tokens", "tokens"),
        ("/tokens@tally_bot", "tokens"),
        ("/Status extra words", "status"),
        ("/tokens@other_bot", None),
        ("tokens", None),
        ("/tokensplease@", None),
    ],
)
def test_parse_command(text: str, command: str | None) -> None:
    assert parse_command(text, "tally_bot") == command


async def test_bot_api_errors_never_show_the_token(
    bot_api: FakeBotApi, caplog: pytest.LogCaptureFixture
) -> None:
    secret = TOKEN.split(":")[1]
    wrong = BotApi(bot_api.base_url, "123456:" + secret + "-wrong")
    # A port nothing listens on: every attempt is a connection error.
    unreachable = BotApi("http://127.0.0.1:9", TOKEN, max_attempts=2)

    with caplog.at_level(logging.DEBUG):
        async with aiohttp.ClientSession() as session:
            wrong.session = session
            unreachable.session = session
            with pytest.raises(BotApiError) as refused:
                await wrong.send_message("1", "hi")
            with pytest.raises(DeliveryError) as failed:
                await unreachable.send_message("1", "hi")

    assert refused.value.code == 401
    assert secret not in str(refused.value)
    assert secret not in str(failed.value)
    # The fake server's own access log is not the gateway's to keep clean.
    ours = [r.getMessage() for r in caplog.records if r.name != "aiohttp.access"]
    assert any("retrying" in line for line in ours)
    assert not any(secret in line for line in ours)


async def test_network_errors_and_500s_are_retried(bot_api: FakeBotApi) -> None:
    api = BotApi(bot_api.base_url, TOKEN)
    bot_api.fail_next("sendMessage", 500, retry_after=None)

    async with aiohttp.ClientSession() as session:
        api.session = session
        await api.send_message("1", "<b>hi</b>")

    assert len(bot_api.calls("sendMessage")) == 2
    assert bot_api.sent == [
        {
            "chat_id": "1",
            "text": "<b>hi</b>",
            "parse_mode": "HTML",
            "disable_web_page_preview": True,
        }
    ]


async def test_tokens_says_when_the_database_does_not_answer(
    start_gateway: Any, database_url: str
) -> None:
    bot = bot_of(await start_gateway())
    away = await db.create_pool(database_url, DatabaseSettings(url=database_url))
    await away.close()
    kept, bot.pool = bot.pool, away

    text = await bot.tokens_text()
    bot.pool = kept

    assert text == "⚠️ The figures cannot be read now: the database does not answer."


async def test_a_429_on_get_updates_holds_the_poller_back(
    start_gateway: Any, bot_api: FakeBotApi
) -> None:
    bot_api.fail_next("getUpdates", 429, retry_after=1)
    await start_gateway()

    bot_api.add_message(CHAT_ID, "/help")
    await bot_api.wait_sent(1)

    polls = bot_api.calls("getUpdates")
    assert len(polls) >= 2
    assert polls[1].at - polls[0].at >= 0.95
