"""
``tallygate demo``: the gateway, a simulated upstream and a simulated trading agent.

All three run in one event loop on loopback, so nothing leaves the machine:

    trading agent ──HTTP──▶ gateway (create_app) ──HTTP──▶ simulated upstream
                             │                              OpenAI and DeepSeek
                             ▼                              dialects, 429s, 500s
                      PostgreSQL (embedded, in a data directory of its own)

The upstream answers like the real APIs do: usage with cached and reasoning
tokens, streams with and without ``stream_options.include_usage``, web
searches listed in Responses answers, a few rate limits and server errors,
and 200-1500 ms of latency. The agent runs trading cycles of several tagged
calls each (news, analysis, risk, decision) for a rotating set of tickers, at
a steady rate, so the dashboard fills within a minute. Its news step searches
the web through the Responses API when it picks an OpenAI model, so those
calls carry a search fee besides their tokens. The agent checks what it
receives: a stream it asked no usage for must carry none, one that asked for
it must carry it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import orjson
from aiohttp import web
from pydantic import SecretStr

from gateway.config import (
    AlertSettings,
    BudgetSettings,
    Settings,
    TelegramSettings,
    UpstreamSettings,
)

log = logging.getLogger(__name__)

TICKERS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "META", "BTC-USD", "ETH-USD")
STRATEGIES = ("momentum", "mean_reversion", "breakout")
AGENT_API_KEY = "sk-demo-agent"
TAG_HEADERS = {"x-purpose", "x-ticker", "x-cycle-id"}
REPLY_WORDS = (
    "momentum", "support", "resistance", "volume", "earnings", "guidance", "hold",
    "buy", "sell", "volatility", "spread", "trend", "breakout", "risk", "position",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How the simulated upstream answers for one model."""

    reported: str  # the name the upstream reports, a dated snapshot for OpenAI
    dialect: str  # "openai" or "deepseek"
    output_tokens: tuple[int, int]
    reasoning_tokens: tuple[int, int] = (0, 0)


MODELS = {
    "gpt-4o": ModelProfile("gpt-4o-2024-08-06", "openai", (120, 700)),
    "gpt-4o-mini": ModelProfile("gpt-4o-mini-2024-07-18", "openai", (40, 300)),
    "o3-mini": ModelProfile("o3-mini-2025-01-31", "openai", (60, 250), (200, 1800)),
    "deepseek-chat": ModelProfile("deepseek-chat", "deepseek", (80, 600)),
    "deepseek-reasoner": ModelProfile(
        "deepseek-reasoner", "deepseek", (60, 300), (300, 2400)
    ),
}


@dataclass(frozen=True, slots=True)
class Step:
    """One call of a trading cycle: its purpose, the models it may use."""

    purpose: str
    models: tuple[str, ...]
    context_tokens: int  # market data and instructions sent with every call
    stream_ratio: float
    # With an OpenAI model, a Responses call with the web search tool.
    searches_web: bool = False


CYCLE = (
    Step("news_summary", ("deepseek-chat", "gpt-4o-mini"), 1800, 0.2, True),
    Step("market_analysis", ("gpt-4o", "deepseek-chat"), 2600, 0.6),
    Step("risk_check", ("gpt-4o-mini",), 900, 0.0),
    Step("trading_decision", ("o3-mini", "deepseek-reasoner"), 1400, 0.5),
)


# The simulated upstream


@dataclass(slots=True)
class UpstreamBehaviour:
    latency_ms: tuple[int, int] = (200, 1500)
    rate_limited_ratio: float = 0.03
    server_error_ratio: float = 0.02


@dataclass(slots=True)
class UpstreamLog:
    """What the simulated upstream received, for the demo's own tests."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    tag_headers_seen: int = 0
    unauthorized: int = 0


UPSTREAM_LOG = web.AppKey("demo_upstream_log", UpstreamLog)
UPSTREAM_BEHAVIOUR = web.AppKey("demo_upstream_behaviour", UpstreamBehaviour)
UPSTREAM_RANDOM = web.AppKey("demo_upstream_random", random.Random)


def create_upstream_app(
    behaviour: UpstreamBehaviour, rng: random.Random | None = None
) -> web.Application:
    """An OpenAI- and DeepSeek-speaking upstream under ``/v1`` and ``/deepseek/v1``."""
    app = web.Application()
    app[UPSTREAM_LOG] = UpstreamLog()
    app[UPSTREAM_BEHAVIOUR] = behaviour
    app[UPSTREAM_RANDOM] = rng or random.Random()
    for prefix in ("/v1", "/deepseek/v1"):
        app.router.add_post(f"{prefix}/chat/completions", answer_chat)
    # DeepSeek has no Responses API.
    app.router.add_post("/v1/responses", answer_responses)
    return app


def openai_error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def carries_tags(request: web.Request) -> bool:
    names = {name.lower() for name in request.headers}
    return bool(names & TAG_HEADERS) or any(n.startswith("x-tag-") for n in names)


class Admitted(NamedTuple):
    """A call the simulated upstream will answer."""

    payload: dict[str, Any]
    profile: ModelProfile
    latency_s: float
    rng: random.Random


async def admit(request: web.Request, endpoint: str) -> Admitted | web.StreamResponse:
    """The call to answer, or the refusal or failure the upstream gives instead."""
    upstream_log = request.app[UPSTREAM_LOG]
    behaviour = request.app[UPSTREAM_BEHAVIOUR]
    rng = request.app[UPSTREAM_RANDOM]
    if carries_tags(request):
        upstream_log.tag_headers_seen += 1
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        upstream_log.unauthorized += 1
        body = openai_error("No API key provided.", "invalid_request_error", None)
        return web.json_response(body, status=401)

    payload = orjson.loads(await request.read())
    profile = MODELS.get(payload.get("model", ""))
    if profile is None:
        message = f"The model `{payload.get('model')}` does not exist."
        body = openai_error(message, "invalid_request_error", "model_not_found")
        return web.json_response(body, status=404)
    prefix = request.path.removesuffix(endpoint)
    upstream_log.calls[(prefix, payload["model"])] += 1
    latency_s = rng.uniform(*behaviour.latency_ms) / 1000

    roll = rng.random()
    if roll < behaviour.rate_limited_ratio:
        await asyncio.sleep(latency_s / 4)
        body = openai_error(
            f"Rate limit reached for {profile.reported} on requests per min (RPM).",
            "requests",
            "rate_limit_exceeded",
        )
        headers = {
            "retry-after": "1",
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
        }
        return web.json_response(body, status=429, headers=headers)
    if roll < behaviour.rate_limited_ratio + behaviour.server_error_ratio:
        await asyncio.sleep(latency_s)
        body = openai_error(
            "The server had an error while processing your request.",
            "server_error", None,
        )  # fmt: skip
        return web.json_response(body, status=500)

    return Admitted(payload, profile, latency_s, rng)


async def answer_chat(request: web.Request) -> web.StreamResponse:
    admitted = await admit(request, "/chat/completions")
    if not isinstance(admitted, Admitted):
        return admitted
    payload, profile, latency_s, rng = admitted
    usage = simulate_usage(profile, payload, rng)
    reply = simulated_reply(profile, "answer", rng)
    if payload.get("stream"):
        return await stream_chat(request, profile, payload, usage, reply, latency_s)
    await asyncio.sleep(latency_s)
    message: dict[str, Any] = {"role": "assistant", "content": reply}
    if profile.dialect == "deepseek" and profile.reasoning_tokens[1]:
        message["reasoning_content"] = "Weighing the signals before deciding."
    body = {
        "id": completion_id(profile),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": profile.reported,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
        "system_fingerprint": "fp_demo",
    }
    return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())


async def answer_responses(request: web.Request) -> web.StreamResponse:
    """A Responses answer: one search call per search run, then the message."""
    admitted = await admit(request, "/responses")
    if not isinstance(admitted, Admitted):
        return admitted
    payload, profile, latency_s, rng = admitted
    text = str(payload.get("instructions", "")) + str(payload.get("input", ""))
    chat = simulate_usage(profile, {"messages": [{"content": text}]}, rng)
    tools = {t.get("type") for t in payload.get("tools", []) if isinstance(t, dict)}
    searches = rng.randint(1, 3) if "web_search" in tools else 0
    output: list[dict[str, Any]] = [
        {
            "id": f"ws_{uuid.uuid4().hex}",
            "type": "web_search_call",
            "status": "completed",
            "action": {"type": "search", "query": f"{payload.get('input')} news"},
        }
        for _ in range(searches)
    ]
    reply = simulated_reply(profile, "summary", rng)
    output.append(
        {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": reply, "annotations": []}],
        }
    )
    details = chat["completion_tokens_details"]
    body = {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": profile.reported,
        "output": output,
        "tools": payload.get("tools", []),
        "service_tier": "default",
        "usage": {
            "input_tokens": chat["prompt_tokens"],
            "input_tokens_details": chat["prompt_tokens_details"],
            "output_tokens": chat["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": details["reasoning_tokens"]},
            "total_tokens": chat["total_tokens"],
        },
    }
    await asyncio.sleep(latency_s * (1 + searches))
    return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())


def simulated_reply(profile: ModelProfile, kind: str, rng: random.Random) -> str:
    words = " ".join(rng.choice(REPLY_WORDS) for _ in range(rng.randint(12, 40)))
    return f"Simulated {profile.reported} {kind}: {words}"


def completion_id(profile: ModelProfile) -> str:
    if profile.dialect == "deepseek":
        return str(uuid.uuid4())
    return "chatcmpl-" + uuid.uuid4().hex[:29]


def simulate_usage(
    profile: ModelProfile, payload: dict[str, Any], rng: random.Random
) -> dict[str, Any]:
    """Token usage in the model's dialect, with cache hits and reasoning tokens."""
    text = "".join(str(m.get("content", "")) for m in payload.get("messages", []))
    prompt = len(text) // 4 + rng.randint(0, 300)
    reasoning = rng.randint(*profile.reasoning_tokens)
    completion = rng.randint(*profile.output_tokens) + reasoning
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if profile.dialect == "deepseek":
        # DeepSeek's context cache works in 64-token units of a repeated prefix.
        hit = (prompt * 3 // 4) // 64 * 64 if rng.random() < 0.7 else 0
        usage["prompt_tokens_details"] = {"cached_tokens": hit}
        usage["prompt_cache_hit_tokens"] = hit
        usage["prompt_cache_miss_tokens"] = prompt - hit
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage
    # OpenAI caches prompts of 1024 tokens or more, in steps of 128 beyond that.
    cached = 0
    if prompt >= 1024 and rng.random() < 0.6:
        cached = 1024 + (prompt * 2 // 3 - 1024) // 128 * 128 if prompt > 1536 else 1024
    usage["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
    usage["completion_tokens_details"] = {
        "reasoning_tokens": reasoning,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    return usage


async def stream_chat(
    request: web.Request,
    profile: ModelProfile,
    payload: dict[str, Any],
    usage: dict[str, Any],
    reply: str,
    latency_s: float,
) -> web.StreamResponse:
    """Relay *reply* as an event stream, usage placed where each dialect puts it."""
    wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    base = {
        "id": completion_id(profile),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": profile.reported,
        "system_fingerprint": "fp_demo",
    }

    async def send(choices: list[dict[str, Any]], chunk_usage: Any = None) -> None:
        chunk = {**base, "choices": choices}
        if wants_usage:
            chunk["usage"] = chunk_usage
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

    words = reply.split(" ")
    pieces = [" ".join(words[i : i + 4]) + " " for i in range(0, len(words), 4)]
    await asyncio.sleep(latency_s * 0.3)  # time to first token
    await send([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
    for piece in pieces:
        await asyncio.sleep(latency_s * 0.7 / len(pieces))
        await send([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
    finish = {"index": 0, "delta": {}, "finish_reason": "stop"}
    if profile.dialect == "deepseek":
        # DeepSeek carries usage on the chunk with finish_reason.
        await send([finish], usage)
    else:
        await send([finish])
        if wants_usage:
            await send([], usage)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


# The simulated trading agent


@dataclass(slots=True)
class AgentStats:
    """What the agent sent and what came back."""

    sent: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    streams: int = 0
    connection_errors: int = 0
    # Streams whose usage chunks were not what the client asked for.
    protocol_errors: int = 0

    @property
    def answered(self) -> int:
        return sum(self.by_status.values())


class TradingAgent:
    """Runs trading cycles of tagged calls against an OpenAI-compatible base URL."""

    def __init__(
        self, base_url: str, calls_per_minute: float, rng: random.Random
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cycle_interval_s = len(CYCLE) * 60 / calls_per_minute
        self.rng = rng
        self.stats = AgentStats()

    async def run(
        self,
        stop: asyncio.Event,
        max_cycles: int | None = None,
        drain_timeout_s: float = 10.0,
    ) -> None:
        """
        Start a cycle every interval until *stop* (or *max_cycles* started).

        Cycles already started finish their current call; after *stop* they
        start no further one, and after *max_cycles* they run to their end.
        """
        cycles: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            number = 0
            while not stop.is_set() and number != max_cycles:
                number += 1
                task = asyncio.create_task(self.run_cycle(session, number, stop))
                cycles.add(task)
                task.add_done_callback(cycles.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.cycle_interval_s)
            if cycles:
                _, late = await asyncio.wait(cycles, timeout=drain_timeout_s)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)

    async def run_cycle(
        self, session: aiohttp.ClientSession, number: int, stop: asyncio.Event
    ) -> None:
        ticker = self.rng.choice(TICKERS)
        strategy = self.rng.choice(STRATEGIES)
        cycle_id = f"cycle-{datetime.now(UTC):%Y%m%d-%H%M%S}-{number:05d}"
        for step in CYCLE:
            if stop.is_set():
                return
            headers = {
                "Authorization": f"Bearer {AGENT_API_KEY}",
                "X-Purpose": step.purpose,
                "X-Ticker": ticker,
                "X-Cycle-Id": cycle_id,
                "X-Tag-Strategy": strategy,
            }
            body = self.request_body(step, ticker)
            endpoint = "/responses" if "tools" in body else "/chat/completions"
            await self.call(session, headers, body, endpoint)

    def request_body(self, step: Step, ticker: str) -> dict[str, Any]:
        # The system prompt stands for the market data and instructions a real
        # agent sends with every call: it is what the upstream caches.
        context = f"You are the {step.purpose} module of a trading system. " * (
            step.context_tokens // 12
        )
        model = self.rng.choice(step.models)
        if step.searches_web and MODELS[model].dialect == "openai":
            return {
                "model": model,
                "instructions": context,
                "input": f"Latest news on {ticker}, summarised.",
                "tools": [{"type": "web_search"}],
            }
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": context},
                {"role": "user", "content": f"{step.purpose} for {ticker} now."},
            ],
        }
        if self.rng.random() < step.stream_ratio:
            body["stream"] = True
            if self.rng.random() < 0.5:
                body["stream_options"] = {"include_usage": True}
        return body

    async def call(
        self,
        session: aiohttp.ClientSession,
        headers: dict[str, str],
        body: dict[str, Any],
        endpoint: str = "/chat/completions",
    ) -> None:
        self.stats.sent += 1
        url = f"{self.base_url}{endpoint}"
        try:
            async with session.post(url, json=body, headers=headers) as response:
                if body.get("stream") and response.status == 200:
                    self.stats.streams += 1
                    await self.read_stream(response, body)
                else:
                    await response.read()
                self.stats.by_status[response.status] += 1
        except aiohttp.ClientError as exc:
            self.stats.connection_errors += 1
            log.warning("demo agent: call failed: %s", exc)

    async def read_stream(
        self, response: aiohttp.ClientResponse, body: dict[str, Any]
    ) -> None:
        """
        Read the stream to its end and check its usage.

        A client that asked for usage must get it; one that did not must not
        get the usage-only chunk (empty ``choices``) that asking adds.
        """
        asked = bool(body.get("stream_options", {}).get("include_usage"))
        usage_seen = usage_only_seen = done = False
        async for line in response.content:
            if line == b"data: [DONE]\n":
                done = True
            elif line.startswith(b"data: "):
                chunk = orjson.loads(line[6:])
                if chunk.get("usage") is not None:
                    usage_seen = True
                    usage_only_seen = usage_only_seen or not chunk.get("choices")
        if not done or (asked and not usage_seen) or (not asked and usage_only_seen):
            self.stats.protocol_errors += 1
            log.warning(
                "demo agent: stream for %s asked usage=%s, saw usage=%s, done=%s",
                body["model"], asked, usage_seen, done,
            )  # fmt: skip


# Running the three together


@dataclass(slots=True)
class DemoOptions:
    data_dir: Path
    calls_per_minute: float = 120.0
    duration_s: float | None = None
    # Stop after this many trading cycles (for tests: a run of known size).
    max_cycles: int | None = None
    database_url: str | None = None
    behaviour: UpstreamBehaviour = field(default_factory=UpstreamBehaviour)
    seed: int | None = None


def demo_settings(settings: Settings, options: DemoOptions, upstream: str) -> Settings:
    """
    The given settings with the demo's own upstreams, database and budgets.

    Telegram and alerts are switched off: the demo's figures are not news
    for anyone's phone, and nothing in the demo may reach the internet.
    """
    database = settings.database.model_copy(
        update={
            "url": SecretStr(options.database_url) if options.database_url else None,
            "data_dir": options.data_dir,
        }
    )
    upstreams = {
        "openai": UpstreamSettings(base_url=f"{upstream}/v1", default=True),
        "deepseek": UpstreamSettings(
            base_url=f"{upstream}/deepseek/v1", models=["deepseek-*"]
        ),
    }
    budgets = BudgetSettings(daily_usd=Decimal(20), monthly_usd=Decimal(300))
    return settings.model_copy(
        update={
            "database": database,
            "upstreams": upstreams,
            "budgets": budgets,
            "telegram": TelegramSettings(),
            "alerts": AlertSettings(),
        }
    )


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


WILDCARD_OR_LOOPBACK = {"127.0.0.1", "0.0.0.0", "::", "::1", "localhost"}


def runner_port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]


async def run_demo(
    settings: Settings,
    options: DemoOptions,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> AgentStats:
    """
    Run upstream, gateway and agent until *stop* is set or the duration ends.

    *on_ready* is called with the gateway's base address once it listens.
    """
    from gateway.app import create_app

    stop = stop or asyncio.Event()
    rng = random.Random(options.seed)
    upstream_runner = await start_site(
        create_upstream_app(options.behaviour, random.Random(rng.random())),
        "127.0.0.1",
        0,
    )
    try:
        upstream = f"http://127.0.0.1:{runner_port(upstream_runner)}"
        gateway_settings = demo_settings(settings, options, upstream)
        server = gateway_settings.server
        gateway_runner = await start_site(
            create_app(gateway_settings), server.host, server.port
        )
        try:
            host = "localhost" if server.host in WILDCARD_OR_LOOPBACK else server.host
            address = f"http://{host}:{runner_port(gateway_runner)}"
            if on_ready is not None:
                on_ready(address)
            agent = TradingAgent(f"{address}/v1", options.calls_per_minute, rng)
            timer = None
            if options.duration_s is not None:
                timer = asyncio.get_running_loop().call_later(
                    options.duration_s, stop.set
                )
            reporter = asyncio.create_task(report_progress(agent.stats, stop))
            try:
                await agent.run(stop, options.max_cycles)
            finally:
                reporter.cancel()
                if timer is not None:
                    timer.cancel()
        finally:
            await gateway_runner.cleanup()
    finally:
        await upstream_runner.cleanup()
    return agent.stats


async def report_progress(stats: AgentStats, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 30)
        log.info(
            "demo agent: %d calls sent, %d answered (%s), %d streamed",
            stats.sent, stats.answered, dict(sorted(stats.by_status.items())),
            stats.streams,
        )  # fmt: skip


def print_banner(address: str) -> None:
    print(
        f"\ntallygate demo is running.\n"
        f"  dashboard:  {address}/dashboard/\n"
        f"  stats API:  {address}/api/token-usage?period=today\n"
        f"  metrics:    {address}/metrics\n"
        f"  base URL:   {address}/v1  (OPENAI_BASE_URL for your own client)\n"
        f"Press Ctrl-C to stop.\n",
        flush=True,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The ``demo`` command."""
    from gateway.cli import new_event_loop

    options = DemoOptions(
        data_dir=args.data_dir or settings.database.data_dir / "demo",
        calls_per_minute=args.calls_per_minute,
        duration_s=args.duration_s,
        database_url=args.database_url,
        seed=args.seed,
    )

    async def main() -> AgentStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await run_demo(settings, options, stop=stop, on_ready=print_banner)

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            stats = runner.run(main())
    except OSError as exc:
        log.error("demo could not start: %s", exc)
        return 1
    print(
        f"demo stopped: {stats.sent} calls sent, {stats.answered} answered, "
        f"statuses {dict(sorted(stats.by_status.items()))}; data kept in "
        f"{options.data_dir}",
        flush=True,
    )
    return 0


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def add_demo_command(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``tallygate demo`` through the command line's *command* helper."""
    parser = command(
        "demo", run, "run the gateway with a simulated upstream and trading agent"
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 5611)")
    parser.add_argument(
        "--calls-per-minute", type=positive_float, default=120.0,
        help="how many calls the agent makes a minute (default 120)",
    )  # fmt: skip
    parser.add_argument(
        "--duration-s", type=positive_float,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", type=Path,
        help="embedded PostgreSQL and spool (default: <data_dir>/demo)",
    )  # fmt: skip
    parser.add_argument(
        "--database-url",
        help="use this PostgreSQL, not the embedded one (it fills with demo rows)",
    )
    parser.add_argument("--seed", type=int, help="seed for repeatable traffic")
