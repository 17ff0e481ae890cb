"""
The dashboard page: how the gateway serves its files, and the page itself in
a real headless Chromium.

The browser tests talk to a ``dashboard_target``: a server that serves the
built page and the usage API. Here it is a small aiohttp app with canned
answers in the API's shapes; pointing the tests at a real gateway with seeded
data means writing another fixture that yields a :class:`DashboardTarget`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway import dashboard

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

    The browser tests need only this: to run them against a real gateway,
    write a fixture that starts one on seeded data and yields a target whose
    ``api`` reads its JSON (with the admin token, if any) and whose ``stop``
    makes it unreachable.
    """

    url: str
    admin_token: str | None
    api: Callable[[str], Awaitable[dict[str, Any]]]
    stop: Callable[[], Awaitable[None]]
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


@pytest.fixture
async def dashboard_target(
    aiohttp_server, dashboard_build: Path
) -> AsyncIterator[DashboardTarget]:
    """The built page and a canned usage API on one local port."""
    canned = CannedApi()
    server = await aiohttp_server(canned.app(dashboard_build))
    base = f"http://127.0.0.1:{server.port}"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async with aiohttp.ClientSession(base, headers=headers) as http:

        async def api(path: str) -> dict[str, Any]:
            async with http.get(path) as resp:
                resp.raise_for_status()
                return await resp.json()

        # A short refresh so the unreachable banner shows within seconds.
        yield DashboardTarget(
            url=f"{base}/dashboard/?refresh=2",
            admin_token=ADMIN_TOKEN,
            api=api,
            stop=server.close,
            canned=canned,
        )


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
    target: DashboardTarget, chromium: Path, *, screenshots: bool = False
) -> AsyncIterator[PageDriver]:
    """Run the e2e script on *target*; with *screenshots*, also every layout."""
    env = {
        **os.environ,
        "DASHBOARD_URL": target.url,
        "ADMIN_TOKEN": target.admin_token or "",
        "ARTIFACTS_DIR": str(ARTIFACTS),
        "CHROMIUM": str(chromium),
        "SCREENSHOTS": "1" if screenshots else "0",
    }
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


def expected_kpis(today: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    return {
        "tokens": today["total_tokens"],
        "cost": today["total_cost_usd"],
        "calls": today["api_calls_count"],
        "avg-tokens": today["avg_tokens_per_call"],
        "avg-latency": today["avg_response_time_ms"],
        "session-cost": session["total_cost_usd"],
    }


def check_budgets(shown: dict[str, Any], budgets: dict[str, Any]) -> None:
    for name, budget in budgets.items():
        card = shown[name]
        assert card["level"] == budget["level"], name
        if budget["limit_usd"] is None:
            assert "no limit" in card["text"], card
            assert card["fillWidth"] == 0, card
        else:
            assert card["fillColour"] == LEVEL_COLOURS[budget["level"]], card
            share = min(1.0, budget["ratio"])
            assert card["fillWidth"] == pytest.approx(
                card["trackWidth"] * share, abs=2
            ), card


@pytest.mark.browser
async def test_page_shows_the_api_figures(chromium, dashboard_target) -> None:
    """KPIs equal the JSON, charts are drawn, bars follow the level, phones fit."""
    target = dashboard_target
    today = await target.api("/api/token-usage?period=today")
    session = await target.api("/api/token-usage?period=session")
    cycles = (await target.api("/api/token-usage/cycles?limit=20"))["cycles"]
    calls = (await target.api("/api/token-usage/calls?limit=50"))["calls"]

    async with open_page(target, chromium, screenshots=True) as page:
        loaded = await page.read("loaded")
        wide, narrow = loaded["wide"], loaded["narrow"]

        for name, value in expected_kpis(today, session).items():
            assert float(wide["kpis"][name]["value"]) == pytest.approx(value), name
            assert wide["kpis"][name]["text"] not in {"", "—"}, name
        check_budgets(wide["budgets"], today["budget"])
        for name, chart in wide["charts"].items():
            assert chart["painted"] > 2000, (name, chart)
        assert len(wide["tables"]["cycles-table"]) == max(1, len(cycles))
        assert len(wide["tables"]["calls-table"]) == max(1, len(calls))
        assert not wide["bannerVisible"]
        assert wide["lastRefresh"].startswith("Updated")
        assert narrow["scrollWidth"] <= narrow["viewportWidth"] == 375
        narrowest = loaded["narrowest"]
        assert narrowest["scrollWidth"] <= narrowest["viewportWidth"] == 360
        assert loaded["pageErrors"] == []

        if target.admin_token:
            assert loaded["askedForToken"]
            sent = loaded["apiAuthorization"]
            first_with_token = sent.index(f"Bearer {target.admin_token}")
            assert set(sent[first_with_token:]) == {f"Bearer {target.admin_token}"}

        if target.canned is not None:
            kpis = {name: kpi["text"] for name, kpi in wide["kpis"].items()}
            assert kpis == {
                "tokens": "125,000",
                "cost": "$0.45",
                "calls": "45",
                "avg-tokens": "2,778",
                "avg-latency": "850 ms",
                "session-cost": "$0.12",
            }
            assert wide["budgets"]["daily"]["text"] == "$0.45 of $0.50"
            assert wide["budgets"]["monthly"]["state"] == "no limit"
            assert wide["tables"]["calls-table"][3][5] == "—"  # no known price

            target.canned.budgets = {
                "daily": budget("day", 0.4, 0.45, "red"),
                "monthly": budget("month", 100.0, 3.2, "green"),
            }
            refreshed = await page.send("refresh", "refreshed")

            check_budgets(refreshed["budgets"], target.canned.budgets)
            assert refreshed["budgets"]["daily"]["state"] == "113% · over"

            target.canned.failing = {"/api/token-usage/calls"}
            target.canned.malformed = {"/api/token-usage/history"}
            partial = await page.send("refresh", "refreshed")
            target.canned.failing = target.canned.malformed = set()
            recovered = await page.send("refresh", "refreshed")

            assert partial["bannerVisible"]
            assert "latest calls (statistics query failed" in partial["bannerText"]
            assert "daily history (unexpected answer" in partial["bannerText"]
            assert partial["staleSections"] == ["history", "calls"]
            assert not partial["bodyStale"]
            assert partial["lastRefresh"].startswith("Partly updated")
            assert not recovered["bannerVisible"]
            assert recovered["staleSections"] == []

    assert (ARTIFACTS / "dashboard-375.png").stat().st_size > 0
    assert (ARTIFACTS / "dashboard-1280.png").stat().st_size > 0


@pytest.mark.browser
async def test_period_and_history_range_are_selectable(
    chromium, dashboard_target
) -> None:
    target = dashboard_target
    week = await target.api("/api/token-usage?period=week")

    async with open_page(target, chromium) as page:
        await page.read("loaded")
        shown_week = await page.read_after("period week", "period")
        shown_days = await page.read_after("days 30", "days")

    tokens = shown_week["report"]["kpis"]["tokens"]
    assert float(tokens["value"]) == week["total_tokens"]
    assert shown_week["report"]["periodRange"].startswith("This week")
    assert "/api/token-usage?period=week" in shown_week["apiRequests"]
    assert "/api/token-usage/history?days=30" in shown_days["apiRequests"]
    assert shown_days["report"]["fragment"] == "#period=week&days=30"
    assert shown_days["report"]["charts"]["chart-history"]["painted"] > 2000


@pytest.mark.browser
async def test_page_says_when_the_gateway_is_unreachable(
    chromium, dashboard_target
) -> None:
    """Once the server is gone the banner shows and the figures are greyed."""
    target = dashboard_target

    async with open_page(target, chromium) as page:
        loaded = await page.read("loaded")
        await target.stop()
        stale = await page.send("stale", "stale")

    assert not loaded["wide"]["bannerVisible"]
    assert stale["bannerVisible"]
    assert "Cannot reach the gateway" in stale["bannerText"]
    assert "not current" in stale["bannerText"]
    assert stale["bodyStale"]
    assert stale["lastRefresh"].startswith("Stale")
    assert stale["kpis"]["tokens"]["opacity"] < 1
