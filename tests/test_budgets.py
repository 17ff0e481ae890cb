from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import db
from gateway.alerts import Alerts
from gateway.app import create_app
from gateway.budgets import BUDGETS, BudgetWatcher
from gateway.config import AlertSettings, BudgetSettings, DatabaseSettings
from gateway.errors import BudgetExceeded
from gateway.keys import ADMISSION, METRICS, RECORDER
from gateway.limits import Limit
from gateway.metrics import Metrics
from gateway.record import UsageRecord, new_request_id
from gateway.recorder import write_batch
from tests.fake_telegram import TOKEN, FakeBotApi, start_fake_bot_api
from tests.fake_upstream import FakeUpstream

NOW = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
CHAT_ID = "4242"
DAILY = Limit("global", "day", Decimal(1))


class MovableClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def spend(cost: str, purpose: str | None = None, at: datetime = NOW) -> UsageRecord:
    return UsageRecord(
        request_id=new_request_id(),
        timestamp=at,
        model="gpt-4o",
        input_tokens=1000,
        output_tokens=100,
        total_tokens=1100,
        total_cost_usd=Decimal(cost),
        purpose=purpose,
        response_time_ms=500,
    )


@pytest.fixture
async def bot_api(aiohttp_server: Any) -> FakeBotApi:
    return await start_fake_bot_api(aiohttp_server)


@pytest.fixture
def start_gateway(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool
) -> Any:
    """Start a gateway with these budget settings (and others) on the run's DB."""

    async def start(
        clock: MovableClock | None = None,
        budgets: dict[str, Any] | None = None,
        **more: Any,
    ) -> TestClient:
        settings = make_settings(
            # One read at startup; the tests refresh by hand after that.
            budgets={"daily_usd": "1", "refresh_interval_s": 3600, **(budgets or {})},
            **more,
        )
        app = create_app(settings, clock=clock or MovableClock(NOW))
        return await aiohttp_client(app)

    return start


def watcher_of(client: TestClient) -> BudgetWatcher:
    return client.server.app[BUDGETS]


def admit(app: web.Application, purpose: str | None = None) -> None:
    for check in app[ADMISSION]:
        check({"purpose": purpose, "ticker": None, "cycle_id": None})


async def test_own_calls_count_at_once_and_once_after_they_are_stored(
    start_gateway: Any,
) -> None:
    client = await start_gateway()
    watcher = watcher_of(client)
    recorder = client.server.app[RECORDER]

    recorder.submit(spend("0.30"))
    before_write = watcher.state(DAILY, NOW).spent_usd
    await recorder.flush()
    await watcher.refresh()
    after_refresh = watcher.state(DAILY, NOW).spent_usd

    assert before_write == Decimal("0.30")
    assert after_refresh == Decimal("0.30")
    assert client.server.app[METRICS].budget_ratio[("daily", "day")] == 0.3


async def test_a_call_not_yet_stored_still_counts_after_a_refresh(
    start_gateway: Any, db_pool: asyncpg.Pool
) -> None:
    client = await start_gateway()
    watcher = watcher_of(client)
    other_replica = spend("0.25")
    await write_batch(db_pool, [other_replica])
    # Submitted but not flushed: the refresh must keep it, not drop it.
    watcher.observe(spend("0.10"))

    await watcher.refresh()

    assert watcher.state(DAILY, NOW).spent_usd == Decimal("0.35")


async def test_other_replicas_spend_shows_after_a_refresh(
    start_gateway: Any, db_pool: asyncpg.Pool
) -> None:
    client = await start_gateway()
    watcher = watcher_of(client)

    await write_batch(db_pool, [spend("0.5"), spend("0.1", at=NOW - timedelta(days=1))])
    before = watcher.state(DAILY, NOW).spent_usd
    await watcher.refresh()

    assert before == 0
    assert watcher.state(DAILY, NOW).spent_usd == Decimal("0.5")


async def test_enforced_limit_refuses_until_the_next_day(
    start_gateway: Any, db_pool: asyncpg.Pool
) -> None:
    clock = MovableClock(NOW)
    client = await start_gateway(clock, {"enforce": True})
    app = client.server.app
    await write_batch(db_pool, [spend("0.7"), spend("0.5")])
    await watcher_of(client).refresh()

    with pytest.raises(BudgetExceeded) as refused:
        admit(app, "trading_decision")
    clock.now = NOW + timedelta(days=1)
    admit(app, "trading_decision")

    error = refused.value
    assert error.status == 429
    assert error.body()["error"]["type"] == "budget_exceeded"
    assert "daily" in error.message
    assert "$1.2000" in error.message
    assert "$1.0000" in error.message


async def test_own_spend_crossing_the_limit_refuses_the_next_call(
    start_gateway: Any,
) -> None:
    client = await start_gateway(budgets={"enforce": True})
    app = client.server.app

    admit(app)
    app[RECORDER].submit(spend("0.6"))
    admit(app)
    app[RECORDER].submit(spend("0.4"))

    with pytest.raises(BudgetExceeded):
        admit(app)


async def test_a_purpose_limit_refuses_only_its_purpose(
    start_gateway: Any, db_pool: asyncpg.Pool
) -> None:
    client = await start_gateway(
        budgets={
            "daily_usd": "100",
            "enforce": True,
            "purposes": {"news": {"daily_usd": "0.5"}},
        }
    )
    app = client.server.app
    await write_batch(db_pool, [spend("0.6", "news"), spend("0.1", "other")])
    await watcher_of(client).refresh()

    with pytest.raises(BudgetExceeded, match="daily:news"):
        admit(app, "news")
    admit(app, "other")
    admit(app, None)


async def test_an_untagged_limit_counts_calls_without_a_purpose(
    start_gateway: Any, db_pool: asyncpg.Pool
) -> None:
    """The statistics count calls without a purpose, or tagged so, as "untagged"."""
    client = await start_gateway(
        budgets={
            "daily_usd": "100",
            "enforce": True,
            "purposes": {"untagged": {"daily_usd": "1"}},
        }
    )
    app = client.server.app
    watcher = watcher_of(client)
    limit = Limit("purpose:untagged", "day", Decimal(1))
    await write_batch(
        db_pool, [spend("0.3"), spend("0.2", "untagged"), spend("5", "news")]
    )
    await watcher.refresh()
    stored = watcher.state(limit, NOW).spent_usd
    admit(app, None)

    watcher.observe(spend("0.5", ""))

    assert stored == Decimal("0.5")
    assert watcher.state(limit, NOW).spent_usd == Decimal("1.0")
    for purpose in (None, "untagged"):
        with pytest.raises(BudgetExceeded, match="daily:untagged"):
            admit(app, purpose)
    admit(app, "news")


async def test_limits_that_are_not_enforced_refuse_nothing(
    start_gateway: Any, db_pool: asyncpg.Pool
) -> None:
    client = await start_gateway()
    await write_batch(db_pool, [spend("5")])
    await watcher_of(client).refresh()

    admit(client.server.app)

    assert client.server.app[ADMISSION] == []


async def test_budget_api_lists_every_limit(
    start_gateway: Any, db_pool: asyncpg.Pool
) -> None:
    client = await start_gateway(
        budgets={
            "daily_usd": "5",
            "monthly_usd": "100",
            "purposes": {"news": {"daily_usd": "0.5"}},
        }
    )
    await write_batch(
        db_pool,
        [spend("0.45", "news"), spend("4.0", at=NOW - timedelta(days=3))],
    )
    await watcher_of(client).refresh()

    resp = await client.get("/api/budget")

    assert resp.status == 200
    assert (await resp.json())["budgets"] == [
        {
            "name": "daily",
            "scope": "global",
            "window": "day",
            "limit_usd": 5.0,
            "spent_usd": 0.45,
            "ratio": 0.09,
            "level": "green",
            "enforce": False,
            "window_start": "2030-06-15T00:00:00+00:00",
            "window_end": "2030-06-16T00:00:00+00:00",
        },
        {
            "name": "monthly",
            "scope": "global",
            "window": "month",
            "limit_usd": 100.0,
            "spent_usd": 4.45,
            "ratio": 0.0445,
            "level": "green",
            "enforce": False,
            "window_start": "2030-06-01T00:00:00+00:00",
            "window_end": "2030-07-01T00:00:00+00:00",
        },
        {
            "name": "daily:news",
            "scope": "purpose:news",
            "window": "day",
            "limit_usd": 0.5,
            "spent_usd": 0.45,
            "ratio": 0.9,
            "level": "yellow",
            "enforce": False,
            "window_start": "2030-06-15T00:00:00+00:00",
            "window_end": "2030-06-16T00:00:00+00:00",
        },
    ]


def telegram_settings(bot_api: FakeBotApi) -> dict[str, Any]:
    return {
        "bot_token": TOKEN,
        "chat_id": CHAT_ID,
        "api_base": bot_api.base_url,
        "poll_timeout_s": 1,
        "daily_summary": False,
    }


async def test_two_gateways_crossing_a_threshold_send_one_alert(
    start_gateway: Any, db_pool: asyncpg.Pool, bot_api: FakeBotApi
) -> None:
    first = await start_gateway(telegram=telegram_settings(bot_api))
    second = await start_gateway(telegram=telegram_settings(bot_api))
    watchers = [watcher_of(first), watcher_of(second)]

    await write_batch(db_pool, [spend("0.85")])
    await asyncio.gather(*(w.refresh() for w in watchers))
    await asyncio.gather(*(w.wait_idle() for w in watchers))
    after_80 = [m["text"] for m in bot_api.sent]
    await write_batch(db_pool, [spend("0.2")])
    await asyncio.gather(*(w.refresh() for w in watchers))
    await asyncio.gather(*(w.wait_idle() for w in watchers))

    assert len(after_80) == 1
    assert after_80[0].startswith("⚠️ Budget alert")
    assert "daily budget (day from 2030-06-15) reached 80%" in after_80[0]
    assert "spent $0.8500 of $1.0000" in after_80[0]
    assert len(bot_api.sent) == 2
    assert bot_api.sent[1]["text"].startswith("🚨 Budget exceeded")
    assert {m["chat_id"] for m in bot_api.sent} == {CHAT_ID}
    claims = await db_pool.fetch(
        "SELECT scope, done_at FROM gateway_once WHERE kind = 'budget_alert'"
        " ORDER BY scope"
    )
    assert [c["scope"] for c in claims] == [
        "2030-06-15:global:day:0.8",
        "2030-06-15:global:day:1",
    ]
    assert all(c["done_at"] is not None for c in claims)
    sent = sum(c.server.app[METRICS].alerts_sent["telegram"] for c in (first, second))
    assert sent == 2


async def test_a_restarted_gateway_does_not_alert_again(
    start_gateway: Any, db_pool: asyncpg.Pool, bot_api: FakeBotApi
) -> None:
    await write_batch(db_pool, [spend("0.9")])
    first = await start_gateway(telegram=telegram_settings(bot_api))
    await watcher_of(first).refresh()
    await watcher_of(first).wait_idle()
    await first.close()

    again = await start_gateway(telegram=telegram_settings(bot_api))
    await watcher_of(again).refresh()
    await watcher_of(again).wait_idle()

    assert len(bot_api.sent) == 1


async def test_the_next_window_alerts_again(
    start_gateway: Any, db_pool: asyncpg.Pool, bot_api: FakeBotApi
) -> None:
    clock = MovableClock(NOW)
    client = await start_gateway(clock, telegram=telegram_settings(bot_api))
    watcher = watcher_of(client)
    await write_batch(db_pool, [spend("0.9"), spend("0.9", at=NOW + timedelta(days=1))])

    await watcher.refresh()
    await watcher.wait_idle()
    clock.now = NOW + timedelta(days=1)
    await watcher.refresh()
    await watcher.wait_idle()

    assert len(bot_api.sent) == 2
    assert "from 2030-06-16" in bot_api.sent[1]["text"]


async def test_webhook_alert_is_retried_after_a_500(
    start_gateway: Any, db_pool: asyncpg.Pool, aiohttp_server: Any
) -> None:
    bodies: list[Any] = []

    async def receive(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response(status=500 if len(bodies) == 1 else 200)

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    server = await aiohttp_server(receiver)
    client = await start_gateway(
        alerts={"webhook_url": str(server.make_url("/hook")), "retry_initial_s": 0.05}
    )
    watcher = watcher_of(client)

    client.server.app[RECORDER].submit(spend("0.8", "news"))
    await watcher.wait_idle()

    assert len(bodies) == 2
    assert bodies[1]["text"].startswith("⚠️ Budget alert")
    assert bodies[1]["budget"] == "daily"
    assert bodies[1]["threshold"] == 0.8
    assert bodies[1]["spent_usd"] == 0.8
    assert client.server.app[METRICS].alerts_sent == {"webhook": 1}


async def test_a_proxied_call_over_the_limit_is_refused_before_the_upstream(
    aiohttp_server: Any, start_gateway: Any
) -> None:
    upstream = FakeUpstream()
    server = await aiohttp_server(upstream.app)
    base = str(server.make_url("/v1"))
    clock = MovableClock(NOW)
    # One fake call (21 + 5 tokens of gpt-4o-mini) costs more than this.
    client = await start_gateway(
        clock,
        {"daily_usd": "0.000001", "enforce": True},
        upstreams={"openai": {"base_url": base, "default": True}},
    )
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": "Bearer sk-test", "X-Purpose": "signal"}

    first = await client.post("/v1/chat/completions", json=chat, headers=headers)
    refused = await client.post("/v1/chat/completions", json=chat, headers=headers)
    reached_before_midnight = len(upstream.received)
    clock.now = NOW + timedelta(days=1)
    next_day = await client.post("/v1/chat/completions", json=chat, headers=headers)

    assert first.status == 200
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert error["type"] == "budget_exceeded"
    assert "budget daily exceeded" in error["message"]
    assert "of $0.000001 this day" in error["message"]
    assert reached_before_midnight == 1
    assert next_day.status == 200
    assert len(upstream.received) == 2


async def test_with_the_database_away_own_spend_still_counts_and_refuses(
    database_url: str,
) -> None:
    # A pool that is closed fails like a database that went away.
    pool = await db.create_pool(database_url, DatabaseSettings(url=database_url))
    await pool.close()
    settings = BudgetSettings(daily_usd=Decimal(1), enforce=True)
    watcher = BudgetWatcher(
        settings, MovableClock(NOW), Metrics(), Alerts(AlertSettings(), Metrics()), "x"
    )
    watcher.pool = pool
    watcher.observe(spend("0.6"))

    await watcher.refresh_quietly()
    watcher.observe(spend("0.5"))

    assert watcher.state(DAILY, NOW).spent_usd == Decimal("1.1")
    with pytest.raises(BudgetExceeded):
        watcher.admit({"purpose": None})
    # The threshold alerts could not be claimed: they are tried again later.
    await watcher.wait_idle()
    assert not watcher._alerted


async def test_spend_stored_before_startup_is_enforced_from_the_first_call(
    start_gateway: Any, db_pool: asyncpg.Pool
) -> None:
    await write_batch(db_pool, [spend("1.5")])

    client = await start_gateway(budgets={"enforce": True})

    with pytest.raises(BudgetExceeded):
        admit(client.server.app)


async def test_a_reused_request_id_is_two_calls(
    start_gateway: Any, db_pool: asyncpg.Pool
) -> None:
    client = await start_gateway()
    watcher = watcher_of(client)
    stored = spend("0.2")
    again = spend("0.3", at=NOW + timedelta(seconds=5))
    again.request_id = stored.request_id
    await write_batch(db_pool, [stored])
    watcher.observe(stored)
    watcher.observe(again)

    await watcher.refresh()

    assert watcher.state(DAILY, NOW).spent_usd == Decimal("0.5")
