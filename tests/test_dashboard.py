"""
The dashboard page: how the gateway serves its files, and the page itself in
a real headless Chromium.

The browser tests talk to a :class:`DashboardTarget`: a server that serves
the built page and the usage API. Most checks run against the gateway itself
(``seeded_gateway``: ``create_app`` on the test database, rows written by the
recorder's batch writer, budgets and an admin token set) in one browser
session; a small aiohttp app with canned answers (``canned_target``) covers
what only fixed answers can show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, ROUND_UP, Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from yarl import URL

from gateway import dashboard
from gateway.app import create_app
from gateway.clock import Clock
from gateway.record import UsageRecord
from tests import seed

INDEX_HTML = "<!doctype html><title>tallygate</title><p>dashboard</p>"


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A stand-in for ``npm run build`` output, plus a secret beside it."""
    root = tmp_path / "dashboard"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX_HTML)
    (root / "assets" / "index-abc123.js").write_text("console.log('hi');")
    (root / "assets" / "index-abc123.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("not for the web")
    return root


async def client_for(aiohttp_client, directory: Path):
    app = web.Application()
    dashboard.setup(app, directory)
    return await aiohttp_client(app)


async def test_root_redirects_to_the_dashboard(aiohttp_client, built) -> None:
    client = await client_for(aiohttp_client, built)

    root = await client.get("/", allow_redirects=False)
    bare = await client.get("/dashboard", allow_redirects=False)

    assert root.status == 302
    assert root.headers["Location"] == "/dashboard/"
    assert bare.status == 302
    assert bare.headers["Location"] == "/dashboard/"


async def test_dashboard_serves_index_html_uncached(aiohttp_client, built) -> None:
    client = await client_for(aiohttp_client, built)

    resp = await client.get("/dashboard/")

    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert await resp.text() == INDEX_HTML
    assert resp.headers["Cache-Control"] == "no-cache"


async def test_following_the_root_redirect_lands_on_the_page(
    aiohttp_client, built
) -> None:
    client = await client_for(aiohttp_client, built)

    resp = await client.get("/")

    assert resp.status == 200
    assert resp.url.path == "/dashboard/"
    assert await resp.text() == INDEX_HTML


async def test_assets_are_cached_for_long(aiohttp_client, built) -> None:
    client = await client_for(aiohttp_client, built)

    script = await client.get("/dashboard/assets/index-abc123.js")
    style = await client.get("/dashboard/assets/index-abc123.css")

    assert script.status == 200
    assert "javascript" in script.content_type
    assert await script.text() == "console.log('hi');"
    assert "immutable" in script.headers["Cache-Control"]
    assert "max-age=31536000" in style.headers["Cache-Control"]


async def test_index_by_name_is_not_cached_for_long(aiohttp_client, built) -> None:
    client = await client_for(aiohttp_client, built)

    resp = await client.get("/dashboard/index.html")

    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-cache"


async def test_unknown_file_is_404(aiohttp_client, built) -> None:
    client = await client_for(aiohttp_client, built)

    resp = await client.get("/dashboard/assets/nope.js")
    folder = await client.get("/dashboard/assets")

    assert resp.status == 404
    assert folder.status == 404


async def test_missing_build_answers_503_with_the_build_command(
    aiohttp_client, tmp_path
) -> None:
    client = await client_for(aiohttp_client, tmp_path / "not-built")

    page = await client.get("/dashboard/")
    asset = await client.get("/dashboard/assets/index-abc123.js")

    assert page.status == 503
    assert page.content_type == "text/html"
    assert "npm ci &amp;&amp; npm run build" in await page.text()
    assert asset.status == 503


def test_default_directory_is_next_to_the_module() -> None:
    app = web.Application()

    dashboard.setup(app)

    expected = Path(dashboard.__file__).parent / "static" / "dashboard"
    assert app[dashboard.DASHBOARD_DIR] == expected


async def test_directory_set_on_the_app_is_used(aiohttp_client, built) -> None:
    app = web.Application()
    app[dashboard.DASHBOARD_DIR] = built
    dashboard.setup(app)
    client = await aiohttp_client(app)

    resp = await client.get("/dashboard/")

    assert resp.status == 200
    assert await resp.text() == INDEX_HTML


TRAVERSALS = [
    "/dashboard/../secret.txt",
    "/dashboard/../../gateway/config.py",
    "/dashboard/%2e%2e/secret.txt",
    "/dashboard/%2E%2E/secret.txt",
    "/dashboard/..%2fsecret.txt",
    "/dashboard/..%2Fsecret.txt",
    "/dashboard/%2e%2e%2fsecret.txt",
    "/dashboard/assets/..%2f..%2fsecret.txt",
    "/dashboard/assets/%2e%2e/%2e%2e/secret.txt",
    "/dashboard/..%5csecret.txt",
    "/dashboard/%5c..%5csecret.txt",
    "/dashboard/%2fetc%2fpasswd",
    "/dashboard//etc/passwd",
    "/dashboard/.%2e/secret.txt",
    "/dashboard/%252e%252e/secret.txt",
    "/dashboard/index.html%00.js",
    "/dashboard/./index.html/../../secret.txt",
]


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_traversal_never_leaves_the_directory(
    aiohttp_client, built, path
) -> None:
    client = await client_for(aiohttp_client, built)

    resp = await client.get(URL(path, encoded=True), allow_redirects=False)
    body = await resp.read()

    assert resp.status in {400, 404}, (path, resp.status)
    assert b"not for the web" not in body


def test_resolve_inside_refuses_a_symlink_that_points_away(built) -> None:
    (built / "escape.txt").symlink_to(built.parent / "secret.txt")

    assert dashboard.resolve_inside(built, "escape.txt") is None
    assert dashboard.resolve_inside(built, "assets/index-abc123.js") is not None


# The page in a real browser

REPO = Path(__file__).resolve().parents[1]
DASHBOARD_SRC = REPO / "dashboard"
NODE_MODULES = DASHBOARD_SRC / "node_modules"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "test-artifacts"
ADMIN_TOKEN = "test-admin-token"

# The light scheme's level colours in the dashboard's stylesheet.
LEVEL_COLOURS = {
    "green": "rgb(34, 160, 107)",
    "yellow": "rgb(226, 163, 0)",
    "red": "rgb(229, 72, 77)",
}


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.is_file() or shutil.which("node") is None:
        pytest.skip(
            f"needs node and Chromium at {CHROMIUM} "
            "(apt-get install -y chromium nodejs)"
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def dashboard_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dashboard built from the current sources into a scratch directory."""
    vite = NODE_MODULES / ".bin" / "vite"
    if not vite.exists() or not (NODE_MODULES / "playwright-core").is_dir():
        pytest.skip("dashboard/node_modules is missing (cd dashboard && npm ci)")
    out = tmp_path_factory.mktemp("dashboard-build")
    built = subprocess.run(
        [str(vite), "build", "--outDir", str(out)],
        cwd=DASHBOARD_SRC,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if built.returncode != 0:
        pytest.fail(f"vite build failed:\n{built.stdout}\n{built.stderr}")
    return out


@dataclass
class DashboardTarget:
    """
    A running server with the dashboard and the usage API, as the tests see it.

    ``api`` reads its JSON (with the admin token, if any), ``post`` sends it
    JSON, ``stop`` makes it unreachable. ``clock_start`` is the server's
    time when the browser starts, for a server on a test clock: the page's
    clock starts there too.
    """

    url: str
    admin_token: str | None
    api: Callable[[str], Awaitable[dict[str, Any]]]
    post: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
    stop: Callable[[], Awaitable[None]]
    clock_start: Callable[[], datetime] | None = None
    # Only a canned server can change its answers in the middle of a test.
    canned: CannedApi | None = None


def breakdown(tokens: int, cost: float, calls: int) -> dict[str, Any]:
    return {"tokens": tokens, "cost": cost, "calls": calls}


def budget(window: str, limit: float | None, spent: float, level: str) -> dict:
    ratio = None if limit is None else spent / limit
    return {
        "window": window,
        "limit_usd": limit,
        "spent_usd": spent,
        "ratio": ratio,
        "level": level,
    }


@dataclass
class CannedApi:
    """The usage API's answers, fixed, behind an admin token."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    budgets: dict[str, Any] = field(
        default_factory=lambda: {
            "daily": budget("day", 0.5, 0.45, "yellow"),
            "monthly": budget("month", None, 3.2, "green"),
        }
    )
    authorization: list[str | None] = field(default_factory=list)
    # Paths that answer 500, or 200 with a body of the wrong shape.
    failing: set[str] = field(default_factory=set)
    malformed: set[str] = field(default_factory=set)

    def usage(self, period: str) -> dict[str, Any]:
        start = self.now.replace(hour=0, minute=0, second=0, microsecond=0)
        if period == "session":
            return self._usage(period, start + timedelta(hours=6), 12, 0.12)
        scale = {"today": 1, "week": 5, "month": 20, "all": 60}[period]
        return self._usage(period, start - timedelta(days=scale - 1), scale, 0.45)

    def _usage(
        self, period: str, since: datetime, scale: int, cost: float
    ) -> dict[str, Any]:
        calls = 45 * scale if period != "session" else scale
        return {
            "period": period,
            "from": since.isoformat(),
            "to": self.now.isoformat(),
            "total_tokens": 125000 * scale,
            "total_cost_usd": cost * scale if period != "session" else cost,
            "input_tokens": 90000 * scale,
            "cached_input_tokens": 10000 * scale,
            "output_tokens": 35000 * scale,
            "reasoning_tokens": 0,
            "errors_count": 1,
            "breakdown_by_model": {
                "gpt-4o": breakdown(50000 * scale, 0.35 * scale, 15 * scale),
                "gpt-4o-mini": breakdown(60000 * scale, 0.08 * scale, 25 * scale),
                "deepseek-chat": breakdown(15000 * scale, 0.02 * scale, 5 * scale),
            },
            "breakdown_by_purpose": {
                "trading_decision": breakdown(90000 * scale, 0.3 * scale, 30 * scale),
                "market_summary": breakdown(20000 * scale, 0.1 * scale, 10 * scale),
                "untagged": breakdown(15000 * scale, 0.05 * scale, 5 * scale),
            },
            "breakdown_by_ticker": {
                "AAPL": breakdown(80000 * scale, 0.3 * scale, 20 * scale)
            },
            "api_calls_count": calls,
            "avg_tokens_per_call": 2778,
            "avg_response_time_ms": 850,
            "budget": self.budgets,
        }

    def history(self, days: int) -> dict[str, Any]:
        today = self.now.date()
        data = []
        for back in range(days - 1, -1, -1):
            wave = (back * 37) % 11
            data.append(
                {
                    "date": (today - timedelta(days=back)).isoformat(),
                    "tokens": 60000 + wave * 9000,
                    "cost": round(0.2 + wave * 0.035, 4),
                    "calls": 20 + wave * 3,
                }
            )
        return {"days": days, "data": data}

    def cycles(self, limit: int) -> dict[str, Any]:
        cycles = []
        for index in range(min(limit, 4)):
            last = self.now - timedelta(minutes=15 * index)
            cycles.append(
                {
                    "cycle_id": f"c-{42 - index}",
                    "calls": 5 - index,
                    "tokens": 12000 - 1000 * index,
                    "cost": 0.04 - 0.005 * index,
                    "tickers": ["AAPL", "MSFT"][: 2 - index % 2],
                    "purposes": ["trading_decision"],
                    "first_call": (last - timedelta(seconds=40)).isoformat(),
                    "last_call": last.isoformat(),
                }
            )
        return {"cycles": cycles}

    def calls(self, limit: int) -> dict[str, Any]:
        models = ["gpt-4o", "gpt-4o-mini", "deepseek-chat", "local-llama", "gpt-4o"]
        calls = []
        for index, model in enumerate(models[:limit]):
            calls.append(
                {
                    "id": 100 - index,
                    "timestamp": (self.now - timedelta(minutes=3 * index)).isoformat(),
                    "model": model,
                    "purpose": None if index == 2 else "trading_decision",
                    "ticker": "AAPL" if index % 2 == 0 else None,
                    "cycle_id": "c-42" if index < 3 else None,
                    "tokens": 2400 + 100 * index,
                    "input_tokens": 2000,
                    "output_tokens": 400 + 100 * index,
                    "cost": None if model == "local-llama" else 0.0031,
                    "response_time_ms": 812.5 + 40 * index,
                    "status": 500 if index == 4 else 200,
                    "streamed": index % 2 == 0,
                    "upstream": "deepseek"
                    if model.startswith("deepseek")
                    else "openai",
                    "endpoint": "/v1/chat/completions",
                }
            )
        return {"calls": calls}

    @web.middleware
    async def require_token(self, request: web.Request, handler):
        if request.path.startswith("/api/"):
            sent = request.headers.get("Authorization")
            self.authorization.append(sent)
            if sent != f"Bearer {ADMIN_TOKEN}":
                error = {
                    "message": "this endpoint needs the admin token",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                    "param": None,
                }
                return web.json_response({"error": error}, status=401)
            if request.path in self.failing:
                error = {
                    "message": "statistics query failed",
                    "type": "server_error",
                    "code": "internal_error",
                    "param": None,
                }
                return web.json_response({"error": error}, status=500)
            if request.path in self.malformed:
                return web.json_response({"unexpected": True})
        return await handler(request)

    def app(self, build: Path) -> web.Application:
        app = web.Application(middlewares=[self.require_token])
        dashboard.setup(app, build)

        def route(answer: Callable[[web.Request], dict[str, Any]]):
            async def handler(request: web.Request) -> web.Response:
                return web.json_response(answer(request))

            return handler

        def number(request: web.Request, name: str, default: int) -> int:
            return int(request.query.get(name, default))

        app.router.add_get(
            "/api/token-usage",
            route(lambda r: self.usage(r.query.get("period", "today"))),
        )
        app.router.add_get(
            "/api/token-usage/history",
            route(lambda r: self.history(number(r, "days", 30))),
        )
        app.router.add_get(
            "/api/token-usage/cycles",
            route(lambda r: self.cycles(number(r, "limit", 20))),
        )
        app.router.add_get(
            "/api/token-usage/calls",
            route(lambda r: self.calls(number(r, "limit", 50))),
        )
        return app


@contextlib.asynccontextmanager
async def admin_client(
    base: str,
) -> AsyncIterator[
    tuple[
        Callable[[str], Awaitable[dict[str, Any]]],
        Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]],
    ]
]:
    """Read and post the API's JSON at *base* with the admin token."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(base, headers=headers) as http:

        async def api(path: str) -> dict[str, Any]:
            async with http.get(path) as resp:
                resp.raise_for_status()
                return await resp.json()

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with http.post(path, json=body) as resp:
                resp.raise_for_status()
                return await resp.json()

        yield api, post


@pytest.fixture
async def canned_target(
    aiohttp_server, dashboard_build: Path
) -> AsyncIterator[DashboardTarget]:
    """The built page and a canned usage API on one local port."""
    canned = CannedApi()
    server = await aiohttp_server(canned.app(dashboard_build))
    base = f"http://127.0.0.1:{server.port}"

    async with admin_client(base) as (api, post):
        yield DashboardTarget(
            url=f"{base}/dashboard/?refresh=2",
            admin_token=ADMIN_TOKEN,
            api=api,
            post=post,
            stop=server.close,
            canned=canned,
        )


# A real gateway on seeded rows

# USD per million tokens, for the calls the test posts while the page is open.
DESK_PRICING = {"desk-model": {"input": "10", "output": "30"}}
LONG_MODEL = "accounts/fireworks/models/llama-v3p1-405b-instruct-long-context"
# USD per token (input, output); local-llama has no price: its cost is null.
SEED_PRICES = {
    "gpt-4o": (Decimal("0.0000025"), Decimal("0.00001")),
    "gpt-4o-mini": (Decimal("0.00000015"), Decimal("0.0000006")),
    "deepseek-chat": (Decimal("0.00000027"), Decimal("0.0000011")),
    LONG_MODEL: (Decimal("0.000003"), Decimal("0.000003")),
    "local-llama": None,
}
SEED_PURPOSES = (
    None,
    "trading_decision",
    "market_summary",
    "news_summary",
    "risk_check",
    "portfolio_rebalance",
    "sentiment_scan",
    "earnings_digest",
    "overnight_macro_research_digest_for_the_morning_meeting",
)
SEED_TICKERS = (None, "AAPL", "MSFT", "NVDA", "BRK.B")
# Calls per day, by days before the gateway's today. Days left out (and
# three days back) have none: zeros in the history. Twenty days back and
# more are in the previous month.
CALLS_BY_DAYS_BACK = {
    0: 36, 1: 14, 2: 9, 3: 0, 4: 12, 5: 7, 6: 10, 8: 6, 11: 8, 14: 5,
    20: 9, 33: 12, 47: 6,
}  # fmt: skip
# Today's spend is about this share of the daily limit (yellow: past the
# first alert threshold, 0.8), the month's of the monthly limit (green).
DAILY_SHARE = Decimal("0.9")
MONTHLY_SHARE = Decimal("0.25")


def gateway_start(real_now: datetime) -> datetime:
    """
    Noon on the 15th of this month: today, this week and this month then
    cover different days, and no run of the test crosses a midnight.
    """
    return real_now.replace(day=15, hour=12, minute=0, second=0, microsecond=0)


def shifted_clock(start: datetime) -> Clock:
    """A clock that reads *start* now and runs at the real pace from there."""
    offset = start - datetime.now(UTC)
    return lambda: datetime.now(UTC) + offset


def dashboard_records(now: datetime, seed_value: int = 11) -> list[UsageRecord]:
    """Calls over the days before *now*, as a trading bot's week might look."""
    rng = random.Random(seed_value)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    records = []
    for back, count in CALLS_BY_DAYS_BACK.items():
        day = today - timedelta(days=back)
        # Today's calls all happened before now.
        span_s = (now - day).total_seconds() - 60 if back == 0 else 86_399
        for n in range(count):
            model = rng.choice(list(SEED_PRICES))
            input_tokens = rng.randint(200, 9000)
            output_tokens = rng.randint(20, 1500)
            prices = SEED_PRICES[model]
            input_cost = None if prices is None else input_tokens * prices[0]
            output_cost = None if prices is None else output_tokens * prices[1]
            failed = rng.random() < 0.06
            records.append(
                UsageRecord(
                    request_id=f"dash-{back}-{n}",
                    timestamp=day + timedelta(seconds=rng.uniform(0, span_s)),
                    model=model,
                    upstream="deepseek" if model.startswith("deepseek") else "openai",
                    endpoint="/v1/chat/completions",
                    status=rng.choice((500, 429)) if failed else 200,
                    streamed=rng.random() < 0.5,
                    input_tokens=input_tokens,
                    cached_input_tokens=rng.randint(0, input_tokens // 2),
                    output_tokens=output_tokens,
                    total_tokens=input_tokens + output_tokens,
                    input_cost_usd=input_cost,
                    output_cost_usd=output_cost,
                    total_cost_usd=None if prices is None else input_cost + output_cost,
                    price_source=None if prices is None else "config",
                    purpose=rng.choice(SEED_PURPOSES),
                    ticker=rng.choice(SEED_TICKERS),
                    cycle_id=f"cycle-{back}-{n // 4}" if rng.random() < 0.7 else None,
                    response_time_ms=round(rng.uniform(120, 4200), 3),
                )
            )
    return records


def day_bounds(moment: datetime) -> tuple[datetime, datetime]:
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


@dataclass
class SeededGateway:
    target: DashboardTarget
    records: list[UsageRecord]
    start: datetime
    daily_usd: Decimal
    monthly_usd: Decimal


@pytest.fixture
async def seeded_gateway(
    make_settings, db_pool: asyncpg.Pool, dashboard_build: Path
) -> AsyncIterator[SeededGateway]:
    """
    The gateway itself on a loopback port, on rows written by the recorder's
    own batch writer, with budgets set so that today is yellow and the
    month green, and the admin token required.
    """
    start = gateway_start(datetime.now(UTC))
    records = dashboard_records(start)
    await seed.store(db_pool, records)
    today, tomorrow = day_bounds(start)
    today_cost = seed.select(records, today, tomorrow).cost
    month_cost = seed.select(records, today.replace(day=1), tomorrow).cost
    # Rounded up to the cent, so today stays under DAILY_SHARE of its limit
    # and (today's cost being well above a few cents) above 0.8 of it.
    cent = Decimal("0.01")
    daily_usd = (today_cost / DAILY_SHARE).quantize(cent, rounding=ROUND_UP)
    monthly_usd = (month_cost / MONTHLY_SHARE).quantize(cent, rounding=ROUND_UP)
    settings = make_settings(
        server={"admin_token": ADMIN_TOKEN},
        budgets={"daily_usd": str(daily_usd), "monthly_usd": str(monthly_usd)},
        pricing=DESK_PRICING,
    )
    clock = shifted_clock(start)
    app = create_app(settings, clock=clock)
    # The build of this run's sources, not whatever gateway/static holds.
    app[dashboard.DASHBOARD_DIR] = dashboard_build
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    stopped = False

    async def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            await runner.cleanup()

    try:
        async with admin_client(base) as (api, post):
            # A short refresh so changes and the outage show within seconds.
            target = DashboardTarget(
                url=f"{base}/dashboard/?refresh=2",
                admin_token=ADMIN_TOKEN,
                api=api,
                post=post,
                stop=stop,
                clock_start=clock,
            )
            yield SeededGateway(target, records, start, daily_usd, monthly_usd)
    finally:
        await stop()


# The dashboard's formatting (dashboard/src/format.ts), to say what the page
# must show for a figure of the API. Intl rounds the exact value of a double
# half away from zero, as Decimal(value) with ROUND_HALF_UP does.


def js_fixed(value: float, max_digits: int, min_digits: int) -> str:
    exact = Decimal(value).quantize(Decimal(1).scaleb(-max_digits), ROUND_HALF_UP)
    whole, _, fraction = f"{exact:,.{max_digits}f}".partition(".")
    fraction = fraction.rstrip("0").ljust(min_digits, "0")
    return f"{whole}.{fraction}" if fraction else whole


def js_round(value: float) -> int:
    # Math.round: halves go up, towards +infinity.
    return math.floor(value + 0.5)


def format_integer(value: float) -> str:
    return f"{js_round(value):,}"


def format_tokens(value: float) -> str:
    if abs(value) >= 1e9:
        return f"{js_fixed(value / 1e9, 1, 1)}B"
    if abs(value) >= 1e6:
        return f"{js_fixed(value / 1e6, 1, 1)}M"
    return format_integer(value)


def format_usd(value: float) -> str:
    size = abs(value)
    if size == 0:
        digits = 2
    elif size >= 1000:
        digits = 0
    elif size >= 0.01:
        digits = 2
    else:
        digits = min(8, max(3, 1 - math.floor(math.log10(size))))
    return f"{'-' if value < 0 else ''}${js_fixed(size, digits, min(digits, 2))}"


def format_ms(value: float) -> str:
    if abs(value) >= 1000:
        return f"{js_fixed(value / 1000, 1, 1)} s"
    return f"{format_integer(value)} ms"


def format_percent(ratio: float) -> str:
    if 0 < ratio < 0.01:
        return "<1%"
    return f"{js_fixed(ratio * 100, 0, 0)}%"


class PageDriver:
    """The running e2e script: read its reports, send it commands."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def read(self, event: str, timeout_s: float = 60) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
            if not line:
                raise AssertionError(f"the browser script ended before {event!r}")
            with contextlib.suppress(ValueError):
                report = json.loads(line)
                if report.get("event") == "error":
                    raise AssertionError(report["message"])
                if report.get("event") == event:
                    return report

    async def read_after(self, command: str, event: str) -> dict[str, Any]:
        """Send *command* and return the *event* it reports."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()
        return await self.read(event)

    async def send(self, command: str, event: str) -> dict[str, Any]:
        """Send *command* and return the page report of the *event* it ends with."""
        return (await self.read_after(command, event))["report"]


@contextlib.asynccontextmanager
async def open_page(
    target: DashboardTarget,
    chromium: Path,
    *,
    screenshots: bool = False,
    motion: bool = False,
) -> AsyncIterator[PageDriver]:
    """
    Run the e2e script on *target*; with *screenshots*, also every layout.

    The page is shown with reduced motion, so that charts draw at once,
    unless *motion* lets Chart.js animate as it does for most visitors.
    """
    env = {
        **os.environ,
        "DASHBOARD_URL": target.url,
        "ADMIN_TOKEN": target.admin_token or "",
        "ARTIFACTS_DIR": str(ARTIFACTS),
        "CHROMIUM": str(chromium),
        "SCREENSHOTS": "1" if screenshots else "0",
        "MOTION": "1" if motion else "0",
    }
    if target.clock_start is not None:
        env["CLOCK_START"] = target.clock_start().isoformat()
    process = await asyncio.create_subprocess_exec(
        "node",
        "e2e/dashboard.mjs",
        cwd=DASHBOARD_SRC,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield PageDriver(process)
    finally:
        assert process.stdin is not None
        with contextlib.suppress(ConnectionError):
            process.stdin.write(b"quit\n")
            process.stdin.close()
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        except TimeoutError:
            process.kill()
            _, stderr = await process.communicate()
        if process.returncode:
            print(stderr.decode(errors="replace"))


def shown_kpis(usage: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    """Each KPI card's figure in the API's answers, and its text on the page."""
    figures = {
        "tokens": (usage["total_tokens"], format_tokens),
        "cost": (usage["total_cost_usd"], format_usd),
        "calls": (usage["api_calls_count"], format_integer),
        "avg-tokens": (usage["avg_tokens_per_call"], format_integer),
        "avg-latency": (usage["avg_response_time_ms"], format_ms),
        "session-cost": (session["total_cost_usd"], format_usd),
    }
    return {name: (value, shown(value)) for name, (value, shown) in figures.items()}


def check_kpis(
    report: dict[str, Any], usage: dict[str, Any], session: dict[str, Any]
) -> None:
    for name, (value, text) in shown_kpis(usage, session).items():
        kpi = report["kpis"][name]
        assert float(kpi["value"]) == pytest.approx(value), (name, kpi)
        assert kpi["text"] == text, (name, kpi)


def check_budgets(shown: dict[str, Any], budgets: dict[str, Any]) -> None:
    for name, budget in budgets.items():
        card = shown[name]
        assert card["level"] == budget["level"], name
        if budget["limit_usd"] is None:
            assert "no limit" in card["text"], card
            assert card["fillWidth"] == 0, card
            continue
        spent, limit, ratio = budget["spent_usd"], budget["limit_usd"], budget["ratio"]
        assert card["fillColour"] == LEVEL_COLOURS[budget["level"]], card
        share = min(1.0, ratio)
        assert card["fillWidth"] == pytest.approx(card["trackWidth"] * share, abs=2), (
            card
        )
        assert card["text"] == f"{format_usd(spent)} of {format_usd(limit)}", card
        over = " · over" if ratio >= 1 else ""
        assert card["state"] == f"{format_percent(ratio)}{over}", card


def check_drawn(report: dict[str, Any]) -> None:
    assert set(report["charts"]) == {"chart-models", "chart-history", "chart-purposes"}
    for name, chart in report["charts"].items():
        assert chart["painted"] > 2000, (name, chart)


@pytest.mark.browser
async def test_page_on_a_seeded_gateway(chromium, seeded_gateway) -> None:
    """
    The whole page against the gateway itself, in one browser session: the
    token asked for, the KPIs and budgets equal to the API's answers as
    format.ts writes them, charts drawn, phones fit, the daily bar turning
    red when a posted call takes it over its limit, the period and history
    range selectable, and the unreachable state once the gateway stops.
    """
    target = seeded_gateway.target
    today_start, tomorrow = day_bounds(seeded_gateway.start)
    today = await target.api("/api/token-usage?period=today")
    session = await target.api("/api/token-usage?period=session")
    week = await target.api("/api/token-usage?period=week")
    cycles = (await target.api("/api/token-usage/cycles?limit=20"))["cycles"]
    calls = (await target.api("/api/token-usage/calls?limit=50"))["calls"]
    # The figures are the seed's, so the page is not compared with zeros.
    seeded_today = seed.select(seeded_gateway.records, today_start, tomorrow)
    assert today["api_calls_count"] == seeded_today.calls == CALLS_BY_DAYS_BACK[0]
    assert today["total_cost_usd"] == seed.usd(seeded_today.cost)
    assert len(today["breakdown_by_purpose"]) == len(SEED_PURPOSES)
    assert LONG_MODEL in today["breakdown_by_model"]
    assert (today["budget"]["daily"]["level"], today["budget"]["monthly"]["level"]) == (
        "yellow",
        "green",
    )
    assert session["api_calls_count"] == 0

    async with open_page(target, chromium, screenshots=True) as page:
        loaded = await page.read("loaded")
        wide, narrow, narrowest = loaded["wide"], loaded["narrow"], loaded["narrowest"]

        assert loaded["askedForToken"]
        sent = loaded["apiAuthorization"]
        assert sent[0] is None
        first_with_token = sent.index(f"Bearer {ADMIN_TOKEN}")
        assert set(sent[first_with_token:]) == {f"Bearer {ADMIN_TOKEN}"}
        check_kpis(wide, today, session)
        check_budgets(wide["budgets"], today["budget"])
        check_drawn(wide)
        assert len(wide["tables"]["cycles-table"]) == len(cycles) == 20
        assert len(wide["tables"]["calls-table"]) == len(calls) == 50
        assert [row[1] for row in wide["tables"]["calls-table"]] == [
            call["model"] for call in calls
        ]
        assert not wide["bannerVisible"]
        assert wide["lastRefresh"].startswith("Updated")
        assert narrow["scrollWidth"] <= narrow["viewportWidth"] == 375
        assert narrowest["scrollWidth"] <= narrowest["viewportWidth"] == 360
        # Long names and yesterday's dated rows leave every column in sight,
        # on a phone and with the tables side by side on a wide screen.
        fits = {"cycles-table": True, "calls-table": True}
        for layout in (wide, narrow, narrowest, loaded["widest"]):
            assert layout["tableFits"] == fits, layout["viewportWidth"]
        assert loaded["pageErrors"] == []

        # Enough spend to take today over its limit, the month staying green.
        over_usd = seeded_gateway.daily_usd * Decimal("0.25")
        output_tokens = math.ceil(over_usd / Decimal("0.00003"))
        posted = await target.post(
            "/api/usage",
            {
                "model": "desk-model",
                "input_tokens": 0,
                "output_tokens": output_tokens,
                "purpose": "trading_decision",
            },
        )
        assert posted["id"] is not None
        after = await page.send("next", "next")
        today_after = await target.api("/api/token-usage?period=today")
        session_after = await target.api("/api/token-usage?period=session")

        assert today_after["budget"]["daily"]["level"] == "red"
        assert today_after["budget"]["monthly"]["level"] == "green"
        assert session_after["total_cost_usd"] == posted["cost_usd"]
        check_kpis(after, today_after, session_after)
        check_budgets(after["budgets"], today_after["budget"])
        assert after["budgets"]["daily"]["fillColour"] == LEVEL_COLOURS["red"]
        assert after["tables"]["calls-table"][0][1] == "desk-model"

        shown_week = await page.read_after("period week", "period")
        shown_days = await page.read_after("days 30", "days")

        week_after = await target.api("/api/token-usage?period=week")
        assert week_after["api_calls_count"] == week["api_calls_count"] + 1
        check_kpis(shown_week["report"], week_after, session_after)
        assert shown_week["report"]["periodRange"].startswith("This week")
        assert "/api/token-usage?period=week" in shown_week["apiRequests"]
        assert "/api/token-usage/history?days=30" in shown_days["apiRequests"]
        assert shown_days["report"]["fragment"] == "#period=week&days=30"
        check_drawn(shown_days["report"])

        await target.stop()
        stale = await page.send("stale", "stale")

    assert stale["bannerVisible"]
    assert "Cannot reach the gateway" in stale["bannerText"]
    assert "not current" in stale["bannerText"]
    assert stale["bodyStale"]
    assert stale["lastRefresh"].startswith("Stale")
    assert stale["kpis"]["tokens"]["opacity"] < 1
    # The figures stay as they were, greyed, not blanked.
    assert (
        stale["kpis"]["tokens"]["text"]
        == shown_days["report"]["kpis"]["tokens"]["text"]
    )
    for name in ("375", "1280", "375-unreachable", "1280-unreachable"):
        assert (ARTIFACTS / f"dashboard-{name}.png").stat().st_size > 0, name


@pytest.mark.browser
async def test_page_shows_what_only_canned_answers_can(chromium, canned_target) -> None:
    """
    Exact texts for known figures, a budget with no limit, a call with no
    price, and sections that fail or answer nonsense while the rest loads.
    """
    target = canned_target
    canned = target.canned
    assert canned is not None
    today = await target.api("/api/token-usage?period=today")
    session = await target.api("/api/token-usage?period=session")

    async with open_page(target, chromium) as page:
        loaded = await page.read("loaded")
        wide = loaded["wide"]

        kpis = {name: kpi["text"] for name, kpi in wide["kpis"].items()}
        expected = {
            "tokens": "125,000",
            "cost": "$0.45",
            "calls": "45",
            "avg-tokens": "2,778",
            "avg-latency": "850 ms",
            "session-cost": "$0.12",
        }
        assert kpis == expected
        # The formatting the seeded-gateway test relies on says the same.
        assert {
            name: text for name, (_, text) in shown_kpis(today, session).items()
        } == expected
        assert wide["budgets"]["daily"]["text"] == "$0.45 of $0.50"
        assert wide["budgets"]["monthly"]["state"] == "no limit"
        check_budgets(wide["budgets"], today["budget"])
        assert wide["tables"]["calls-table"][3][5] == "—"  # no known price
        assert loaded["pageErrors"] == []

        canned.budgets = {
            "daily": budget("day", 0.4, 0.45, "red"),
            "monthly": budget("month", 100.0, 3.2, "green"),
        }
        refreshed = await page.send("refresh", "refreshed")

        check_budgets(refreshed["budgets"], canned.budgets)
        assert refreshed["budgets"]["daily"]["state"] == "113% · over"

        canned.failing = {"/api/token-usage/calls"}
        canned.malformed = {"/api/token-usage/history"}
        partial = await page.send("refresh", "refreshed")
        canned.failing = canned.malformed = set()
        recovered = await page.send("refresh", "refreshed")

    assert partial["bannerVisible"]
    assert "latest calls (statistics query failed" in partial["bannerText"]
    assert "daily history (unexpected answer" in partial["bannerText"]
    assert partial["staleSections"] == ["history", "calls"]
    assert not partial["bodyStale"]
    assert partial["lastRefresh"].startswith("Partly updated")
    assert not recovered["bannerVisible"]
    assert recovered["staleSections"] == []


@pytest.mark.browser
async def test_animated_charts_end_as_still_ones(chromium, canned_target) -> None:
    """
    With motion allowed, Chart.js animates every draw, colours included: the
    page raises no error, and each chart ends as it is drawn without motion,
    on loading and after a refresh.
    """
    async with open_page(canned_target, chromium) as page:
        still = (await page.read("loaded"))["wide"]["charts"]
    async with open_page(canned_target, chromium, motion=True) as page:
        loaded = await page.read("loaded")
        refreshed = await page.read_after("refresh", "refreshed")

    assert loaded["pageErrors"] == []
    assert refreshed["pageErrors"] == []
    for report in (loaded["wide"], refreshed["report"]):
        check_drawn(report)
        for name, chart in report["charts"].items():
            assert chart["painted"] == pytest.approx(
                still[name]["painted"], rel=0.02
            ), name


def test_formatting_mirror_rounds_as_intl_does() -> None:
    assert format_usd(0) == "$0.00"
    assert format_usd(0.00042) == "$0.00042"
    assert format_usd(0.005) == "$0.005"
    assert format_usd(1234.5) == "$1,235"
    assert format_usd(2.5) == "$2.50"
    assert format_tokens(1_250_000) == "1.3M"
    assert format_tokens(999_999) == "999,999"
    assert format_ms(1250) == "1.3 s"
    assert format_ms(849.5) == "850 ms"
    assert format_percent(1.125) == "113%"
    assert format_percent(0.004) == "<1%"
