"""The demo: its simulated upstream, its trading agent, and the whole run."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import sys
from collections import Counter
from typing import Any

import orjson
import pytest

from gateway import demo
from gateway.cli import build_parser

QUIET = demo.UpstreamBehaviour(
    latency_ms=(1, 5), rate_limited_ratio=0, server_error_ratio=0
)
AUTH = {"Authorization": "Bearer sk-test"}


def chat(model: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "market data " * 600}]
    return {"model": model, "messages": messages, **extra}


async def read_chunks(response: Any) -> list[dict[str, Any]]:
    text = await response.text()
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


@pytest.fixture
async def upstream(aiohttp_client: Any) -> Any:
    return await aiohttp_client(demo.create_upstream_app(QUIET, random.Random(7)))


async def test_upstream_reports_openai_usage_with_cache_and_reasoning(
    upstream: Any,
) -> None:
    response = await upstream.post(
        "/v1/chat/completions", json=chat("o3-mini"), headers=AUTH
    )

    body = await response.json()
    usage = body["usage"]
    assert response.status == 200
    assert body["model"] == "o3-mini-2025-01-31"
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] > 0
    assert (
        usage["completion_tokens_details"]["reasoning_tokens"]
        < usage["completion_tokens"]
    )
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached == 0 or (cached >= 1024 and cached % 128 == 0)


async def test_upstream_lists_the_web_searches_of_a_responses_call(
    upstream: Any,
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "input": "Latest news on AAPL",
        "tools": [{"type": "web_search"}],
    }

    response = await upstream.post("/v1/responses", json=body, headers=AUTH)

    answer = await response.json()
    kinds = [item["type"] for item in answer["output"]]
    usage = answer["usage"]
    assert response.status == 200
    assert answer["model"] == "gpt-4o-mini-2024-07-18"
    assert 1 <= kinds.count("web_search_call") <= 3
    assert kinds[-1] == "message"
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_upstream_reports_deepseek_cache_hits(upstream: Any) -> None:
    hits = []
    for _ in range(10):
        response = await upstream.post(
            "/deepseek/v1/chat/completions", json=chat("deepseek-chat"), headers=AUTH
        )
        usage = (await response.json())["usage"]
        assert (
            usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
            == usage["prompt_tokens"]
        )
        hits.append(usage["prompt_cache_hit_tokens"])

    assert any(hits)
    assert all(hit % 64 == 0 for hit in hits)


async def test_upstream_stream_without_include_usage_carries_no_usage(
    upstream: Any,
) -> None:
    response = await upstream.post(
        "/v1/chat/completions", json=chat("gpt-4o", stream=True), headers=AUTH
    )

    chunks = await read_chunks(response)
    assert response.headers["Content-Type"] == "text/event-stream"
    assert len(chunks) > 2
    assert all("usage" not in chunk for chunk in chunks)


async def test_upstream_stream_with_include_usage_ends_with_a_usage_chunk(
    upstream: Any,
) -> None:
    body = chat("gpt-4o-mini", stream=True, stream_options={"include_usage": True})

    response = await upstream.post("/v1/chat/completions", json=body, headers=AUTH)

    chunks = await read_chunks(response)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


async def test_upstream_deepseek_stream_puts_usage_on_the_finish_chunk(
    upstream: Any,
) -> None:
    body = chat(
        "deepseek-reasoner", stream=True, stream_options={"include_usage": True}
    )

    response = await upstream.post(
        "/deepseek/v1/chat/completions", json=body, headers=AUTH
    )

    chunks = await read_chunks(response)
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


async def test_upstream_refuses_calls_without_a_key_and_unknown_models(
    upstream: Any,
) -> None:
    no_key = await upstream.post("/v1/chat/completions", json=chat("gpt-4o"))
    unknown = await upstream.post(
        "/v1/chat/completions", json=chat("gpt-9"), headers=AUTH
    )

    assert no_key.status == 401
    assert unknown.status == 404
    assert (await unknown.json())["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        (demo.UpstreamBehaviour((1, 2), rate_limited_ratio=1.0), 429),
        (demo.UpstreamBehaviour((1, 2), 0.0, server_error_ratio=1.0), 500),
    ],
)
async def test_upstream_fails_as_often_as_told(
    aiohttp_client: Any, behaviour: demo.UpstreamBehaviour, status: int
) -> None:
    client = await aiohttp_client(demo.create_upstream_app(behaviour))

    response = await client.post(
        "/v1/chat/completions", json=chat("gpt-4o"), headers=AUTH
    )

    assert response.status == status
    assert "message" in (await response.json())["error"]
    if status == 429:
        assert response.headers["retry-after"] == "1"


async def test_agent_runs_tagged_cycles_against_the_upstream(
    aiohttp_server: Any,
) -> None:
    server = await aiohttp_server(demo.create_upstream_app(QUIET, random.Random(1)))
    agent = demo.TradingAgent(str(server.make_url("/v1")), 6000, random.Random(2))

    await agent.run(asyncio.Event(), max_cycles=12)

    upstream_log = server.app[demo.UPSTREAM_LOG]
    models = {model for _, model in upstream_log.calls}
    assert agent.stats.sent == 12 * len(demo.CYCLE)
    assert agent.stats.answered == agent.stats.sent
    assert agent.stats.by_status == {200: agent.stats.sent}
    assert agent.stats.streams > 0
    assert agent.stats.protocol_errors == 0
    assert models == set(demo.MODELS)
    # Straight to the upstream, nothing removes the tags: they arrive.
    assert upstream_log.tag_headers_seen == agent.stats.sent


def test_demo_command_parses_its_options() -> None:
    args = build_parser().parse_args(
        ["demo", "--port", "0", "--calls-per-minute", "30", "--duration-s", "5"]
    )

    assert args.run is demo.run
    assert (args.port, args.calls_per_minute, args.duration_s) == (0, 30.0, 5.0)


def test_demo_command_refuses_a_rate_of_zero(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--calls-per-minute", "0"])

    assert "--calls-per-minute" in capsys.readouterr().err


def test_demo_settings_point_every_upstream_at_the_simulator(
    make_settings: Any, tmp_path: Any
) -> None:
    options = demo.DemoOptions(data_dir=tmp_path / "demo")
    settings = make_settings(telegram={"bot_token": "123:abc", "chat_id": "1"})

    built = demo.demo_settings(settings, options, "http://127.0.0.1:9")

    assert {str(u.base_url) for u in built.upstreams.values()} == {
        "http://127.0.0.1:9/v1",
        "http://127.0.0.1:9/deepseek/v1",
    }
    assert built.database.url is None
    assert built.database.data_dir == tmp_path / "demo"
    assert not built.telegram.is_configured
    assert built.alerts.webhook_url is None


async def test_demo_records_tagged_rows_through_the_gateway(
    make_settings: Any, database_url: str, db_pool: Any, tmp_path: Any
) -> None:
    options = demo.DemoOptions(
        data_dir=tmp_path / "demo",
        calls_per_minute=2400,
        max_cycles=10,
        database_url=database_url,
        behaviour=demo.UpstreamBehaviour((5, 40), 0.05, 0.05),
        seed=3,
    )
    addresses: list[str] = []

    stats = await demo.run_demo(
        make_settings(server={"port": 0}), options, on_ready=addresses.append
    )

    rows = await db_pool.fetch(
        "SELECT model, purpose, ticker, cycle_id, tags, status, streamed,"
        " endpoint, web_search_calls, fee_cost_usd FROM llm_usage"
    )
    assert addresses
    assert addresses[0].startswith("http://localhost:")
    assert stats.sent == 10 * len(demo.CYCLE)
    assert stats.connection_errors == 0
    assert stats.protocol_errors == 0
    assert len(rows) == stats.answered == stats.sent
    assert {r["purpose"] for r in rows} == {s.purpose for s in demo.CYCLE}
    assert all(r["ticker"] in demo.TICKERS for r in rows)
    assert all(r["cycle_id"].startswith("cycle-") for r in rows)
    assert all(r["tags"].get("strategy") in demo.STRATEGIES for r in rows)
    assert Counter(r["status"] for r in rows) == stats.by_status
    assert any(r["streamed"] for r in rows)
    # The news step's OpenAI calls searched the web, and were charged for it.
    searched = [r for r in rows if r["endpoint"] == "/v1/responses"]
    assert searched
    assert all(r["purpose"] == "news_summary" for r in searched)
    assert any(r["web_search_calls"] > 0 and r["fee_cost_usd"] > 0 for r in searched)
    # Every cycle ran to its end: each id tags one call per step.
    per_cycle = Counter(r["cycle_id"] for r in rows)
    assert set(per_cycle.values()) == {len(demo.CYCLE)}


async def test_demo_command_stops_cleanly_on_ctrl_c(
    database_url: str, db_pool: Any, tmp_path: Any
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", "--port", "0",
        "--calls-per-minute", "1200", "--seed", "5",
        "--database-url", database_url, "--data-dir", str(tmp_path / "demo"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        banner = await asyncio.wait_for(read_until(process, b"Press Ctrl-C"), 60)
        # Stop once the gateway has stored a call (within a minute).
        for _ in range(600):
            if await db_pool.fetchval("SELECT count(*) FROM llm_usage"):
                break
            await asyncio.sleep(0.1)
        process.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(process.stdout.read(), 60)
        status = await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    stopped = re.search(rb"demo stopped: (\d+) calls sent, (\d+) answered", rest)
    rows = await db_pool.fetchval("SELECT count(*) FROM llm_usage")
    assert status == 0
    assert re.search(rb"dashboard:  http://localhost:\d+/dashboard/", banner)
    assert stopped is not None
    assert rows == int(stopped[2]) >= 1


async def read_until(process: Any, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        line = await process.stdout.readline()
        if not line:
            raise AssertionError(f"the demo exited before printing {marker!r}")
        seen += line
    return seen
