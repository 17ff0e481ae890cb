"""
The proxy end to end: the official openai client, the gateway, a fake upstream.

Every test checks the stored row, and its cost against a price worked out by
hand from the published per-million rates (genai-prices' bundled catalog, at
the fixed call time below, which is in DeepSeek's standard-price hours).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.errors import BudgetExceeded
from gateway.keys import ADMISSION, METRICS, RECORDER
from gateway.proxy import MAX_WHOLE_BYTES
from tests.fake_upstream import FakeUpstream
from tests.fixtures import recorded
from tests.harness import BOTH_FRONT_DOORS, serving, upstreams_at
from tests.test_front import connection, plain_request
from tests.test_http1 import BOB, start_proxy
from tests.test_recorder import wait_until

FRONT_DOORS = BOTH_FRONT_DOORS

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
CLIENT_KEY = "sk-client-secret-123"

# USD per million tokens, as published (genai-prices catalog, December 2026).
GPT_4O_MINI = (Decimal("0.15"), Decimal("0.075"), Decimal("0.6"))
DEEPSEEK_CHAT = (Decimal("0.27"), Decimal("0.07"), Decimal("1.1"))
GPT_35_INSTRUCT = (Decimal("1.5"), Decimal("1.5"), Decimal("2"))
EMBEDDING_3_SMALL = (Decimal("0.02"), Decimal("0.02"), Decimal("0"))
GPT_4 = (Decimal("30"), Decimal("30"), Decimal("60"))
O3_FLEX = (Decimal("1"), Decimal("0.25"), Decimal("4"))
# gpt-audio: text input and output, then audio input and output.
GPT_AUDIO = (Decimal("2.5"), Decimal("10"), Decimal("32"), Decimal("64"))
GPT_4O_MINI_PRIORITY = (Decimal("0.25"), Decimal("0.125"), Decimal("1"))

Gateway = Callable[..., Awaitable[TestClient]]


def expected_cost(
    rates: tuple[Decimal, Decimal, Decimal], input_tokens: int, cached: int, output: int
) -> tuple[Decimal, Decimal, Decimal]:
    """Input (uncached at the input rate, cached at the cached rate), output, total."""
    input_rate, cached_rate, output_rate = rates
    million = Decimal(1_000_000)
    input_usd = ((input_tokens - cached) * input_rate + cached * cached_rate) / million
    output_usd = output * output_rate / million
    return input_usd, output_usd, input_usd + output_usd


def assert_cost(row: asyncpg.Record, rates: tuple[Decimal, Decimal, Decimal]) -> None:
    input_usd, output_usd, total_usd = expected_cost(
        rates, row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]
    )
    assert row["input_cost_usd"] == input_usd
    assert row["output_cost_usd"] == output_usd
    assert row["total_cost_usd"] == total_usd
    assert row["price_source"] == "genai-prices"


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeUpstream:
    upstream = FakeUpstream()
    server: TestServer = await aiohttp_server(upstream.app)
    upstream.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return upstream


@pytest.fixture
def gateway(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool, fake: FakeUpstream
) -> Gateway:
    """Start a gateway whose openai and deepseek upstreams are the fake."""

    async def start(
        server: dict[str, Any] | None = None, **upstream: Any
    ) -> TestClient:
        base = fake.base_url  # type: ignore[attr-defined]
        settings = make_settings(
            server=server or {},
            upstreams={
                "openai": {"base_url": base, "default": True, **upstream},
                "deepseek": {"base_url": base, "models": ["deepseek-*"], **upstream},
            },
        )
        return await aiohttp_client(create_app(settings, clock=lambda: NOW))

    return start


@pytest.fixture
async def rows(
    db_pool: asyncpg.Pool,
) -> Callable[[TestClient], Awaitable[list[asyncpg.Record]]]:
    async def read(client: TestClient) -> list[asyncpg.Record]:
        await client.server.app[RECORDER].flush()
        return await db_pool.fetch(
            'SELECT * FROM llm_usage ORDER BY "timestamp", request_id'
        )

    return read


def openai_client(
    client: TestClient, prefix: str = "", **kwargs: Any
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=str(client.make_url(f"{prefix}/v1")),
        api_key=kwargs.pop("api_key", CLIENT_KEY),
        max_retries=0,
        **kwargs,
    )


async def direct_chunks(fake: FakeUpstream, **create: Any) -> list[dict[str, Any]]:
    async with openai.AsyncOpenAI(
        base_url=fake.base_url,  # type: ignore[attr-defined]
        api_key=CLIENT_KEY,
        max_retries=0,
    ) as direct:
        stream = await direct.chat.completions.create(stream=True, **create)
        return [chunk.model_dump() async for chunk in stream]


async def test_non_streamed_chat_is_relayed_and_recorded(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()
    tags = {
        "X-Purpose": "signal",
        "X-Ticker": "AAPL",
        "X-Cycle-Id": "cycle-7",
        "X-Tag-Strategy": "momentum",
        "X-Request-Id": "trade-42",
    }

    async with openai_client(client, default_headers=tags) as oai:
        raw = await oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    completion = raw.parse()

    assert completion.choices[0].message.content == fake.answer
    assert raw.headers["x-request-id"] == "trade-42"
    sent = fake.received[-1]
    assert sent.headers["Authorization"] == f"Bearer {CLIENT_KEY}"
    assert not any(
        name.lower().startswith(("x-purpose", "x-ticker", "x-cycle", "x-tag"))
        for name in sent.headers
    )
    assert sent.headers["Accept-Encoding"] == "identity"
    (row,) = await rows(client)
    assert row["request_id"] == "trade-42"
    assert row["timestamp"] == NOW
    assert row["model"] == "gpt-4o-mini-2024-07-18"
    assert (row["upstream"], row["endpoint"], row["status"], row["streamed"]) == (
        "openai", "/v1/chat/completions", 200, False
    )  # fmt: skip
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (
        21,
        5,
        26,
    )
    assert (row["purpose"], row["ticker"], row["cycle_id"]) == (
        "signal",
        "AAPL",
        "cycle-7",
    )
    assert row["tags"] == {"strategy": "momentum"}
    assert row["usage_complete"]
    assert not row["usage_estimated"]
    assert row["error"] is None
    assert row["response_time_ms"] > 0
    assert_cost(row, GPT_4O_MINI)
    assert sum(client.server.app[METRICS].overhead["openai"].counts) == 1


@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}])
async def test_stream_without_usage_asked_looks_as_without_the_gateway(
    gateway: Gateway,
    fake: FakeUpstream,
    rows: Any,
    stream_options: dict[str, Any] | None,
) -> None:
    client = await gateway()
    create: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
    }
    if stream_options is not None:
        create["stream_options"] = stream_options
    expected = await direct_chunks(fake, **create)

    async with openai_client(client) as oai:
        stream = await oai.chat.completions.create(stream=True, **create)
        got = [chunk.model_dump() async for chunk in stream]

    assert got == expected
    assert all(chunk["usage"] is None for chunk in got)
    assert fake.received[-1].json()["stream_options"] == {"include_usage": True}
    (row,) = await rows(client)
    assert row["streamed"]
    assert (row["input_tokens"], row["output_tokens"]) == (21, 5)
    assert row["usage_complete"]
    assert not row["usage_estimated"]
    assert_cost(row, GPT_4O_MINI)


async def test_stream_with_usage_asked_keeps_the_usage_chunk(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()
    create: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"include_usage": True},
    }
    expected = await direct_chunks(fake, **create)
    fake.received.clear()

    async with openai_client(client) as oai:
        stream = await oai.chat.completions.create(stream=True, **create)
        got = [chunk.model_dump() async for chunk in stream]

    assert got == expected
    assert got[-1]["choices"] == []
    assert got[-1]["usage"]["prompt_tokens"] == 21
    # The body the client sent went upstream byte for byte.
    assert fake.received[-1].json() == {**create, "stream": True}
    (row,) = await rows(client)
    assert (row["input_tokens"], row["output_tokens"]) == (21, 5)
    assert_cost(row, GPT_4O_MINI)


async def test_legacy_completions_streamed_and_not(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()

    async with openai_client(client) as oai:
        whole = await oai.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Say hi"
        )
        stream = await oai.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True
        )
        texts = [chunk.choices[0].text async for chunk in stream]

    assert whole.choices[0].text == fake.answer
    assert "".join(texts) == fake.answer
    recorded = await rows(client)
    assert [r["streamed"] for r in sorted(recorded, key=lambda r: r["streamed"])] == [
        False,
        True,
    ]
    for row in recorded:
        assert row["endpoint"] == "/v1/completions"
        assert (row["input_tokens"], row["output_tokens"]) == (21, 5)
        assert_cost(row, GPT_35_INSTRUCT)


async def test_embeddings_record_prompt_tokens(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()
    fake.prompt_tokens = 8

    async with openai_client(client) as oai:
        result = await oai.embeddings.create(
            model="text-embedding-3-small", input=["a", "b"]
        )

    assert len(result.data) == 2
    (row,) = await rows(client)
    assert (row["endpoint"], row["input_tokens"], row["output_tokens"]) == (
        "/v1/embeddings",
        8,
        0,
    )
    assert_cost(row, EMBEDDING_3_SMALL)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
async def test_embeddings_answers_too_large_to_hold_keep_their_usage(
    gateway: Gateway, fake: FakeUpstream, rows: Any, encoding_format: str
) -> None:
    """Past a mebibyte an answer is relayed as it comes; its end has the usage."""
    client = await gateway()
    fake.prompt_tokens = 900

    async with openai_client(client) as oai:
        raw = await oai.embeddings.with_raw_response.create(
            model="text-embedding-3-small",
            input=["word"] * 300,
            dimensions=1536,
            encoding_format=encoding_format,  # type: ignore[arg-type]
        )
    result = raw.parse()

    assert int(raw.headers["content-length"]) > MAX_WHOLE_BYTES
    assert len(result.data) == 300
    last = result.data[299].embedding
    if isinstance(last, str):
        last = list(struct.unpack("<1536f", base64.b64decode(last)))
    assert last[:3] == [0.25, -0.5, 0.125]
    (row,) = await rows(client)
    assert (row["input_tokens"], row["output_tokens"]) == (900, 0)
    assert row["model"] == "text-embedding-3-small"
    assert (row["usage_complete"], row["usage_estimated"]) == (True, False)
    assert_cost(row, EMBEDDING_3_SMALL)


async def test_responses_api_both_ways(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()
    fake.cached_tokens = 4
    fake.reasoning_tokens = 3

    async with openai_client(client) as oai:
        whole = await oai.responses.create(model="gpt-4o-mini", input="hi")
        stream = await oai.responses.create(
            model="gpt-4o-mini", input="hi", stream=True
        )
        kinds = [event.type async for event in stream]

    assert whole.output_text == fake.answer
    assert kinds[-1] == "response.completed"
    assert fake.received[-1].json() == {
        "model": "gpt-4o-mini",
        "input": "hi",
        "stream": True,
    }
    recorded = await rows(client)
    assert len(recorded) == 2
    for row in recorded:
        assert row["endpoint"] == "/v1/responses"
        assert row["model"] == "gpt-4o-mini-2024-07-18"
        assert (row["input_tokens"], row["cached_input_tokens"]) == (21, 4)
        assert (row["output_tokens"], row["reasoning_tokens"]) == (8, 3)
        assert row["usage_complete"]
        assert_cost(row, GPT_4O_MINI)


async def test_responses_with_built_in_tools_are_charged_per_tool_call(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()
    fake.web_searches = 3
    fake.file_searches = 2
    tools: list[Any] = [
        {"type": "web_search"},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
    ]

    async with openai_client(client) as oai:
        whole = await oai.responses.create(
            model="gpt-4o-mini", input="news on AAPL?", tools=tools
        )
        stream = await oai.responses.create(
            model="gpt-4o-mini", input="news on AAPL?", tools=tools, stream=True
        )
        kinds = [event.type async for event in stream]

    assert [item.type for item in whole.output].count("web_search_call") == 3
    assert kinds[-1] == "response.completed"
    recorded = await rows(client)
    assert len(recorded) == 2
    for row in recorded:
        assert (row["web_search_calls"], row["file_search_calls"]) == (3, 2)
        # 3 x $10 + 2 x $2.50 per thousand calls, beside the tokens.
        assert row["fee_cost_usd"] == Decimal("0.035")
        input_usd, output_usd, tokens_usd = expected_cost(
            GPT_4O_MINI, row["input_tokens"], 0, row["output_tokens"]
        )
        assert (row["input_cost_usd"], row["output_cost_usd"]) == (
            input_usd,
            output_usd,
        )
        assert row["total_cost_usd"] == tokens_usd + Decimal("0.035")


async def test_a_call_is_priced_at_the_tier_that_served_it(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()
    fake.cached_tokens = 4
    chat = {"model": "o3", "messages": [{"role": "user", "content": "hi"}]}

    def call(number: int) -> dict[str, Any]:
        # Every row has the same timestamp: the ids put them in call order.
        return {"extra_headers": {"X-Request-Id": f"tier-{number}"}}

    async with openai_client(client) as oai:
        await oai.chat.completions.create(**chat, service_tier="flex", **call(1))
        stream = await oai.chat.completions.create(
            **chat, service_tier="flex", stream=True, **call(2)
        )
        [chunk async for chunk in stream]
        await oai.responses.create(
            model="o3", input="hi", service_tier="flex", **call(3)
        )
        stream = await oai.responses.create(
            model="o3", input="hi", service_tier="flex", stream=True, **call(4)
        )
        [event async for event in stream]
        await oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=chat["messages"],
            service_tier="priority",
            **call(5),
        )
        await oai.chat.completions.create(**chat, **call(6))

    *flex, priority, standard = await rows(client)
    assert [(r["endpoint"], r["streamed"]) for r in flex] == [
        ("/v1/chat/completions", False),
        ("/v1/chat/completions", True),
        ("/v1/responses", False),
        ("/v1/responses", True),
    ]
    for row in flex:
        assert row["service_tier"] == "flex"
        assert row["cached_input_tokens"] == 4
        assert_cost(row, O3_FLEX)
    assert priority["service_tier"] == "priority"
    assert_cost(priority, GPT_4O_MINI_PRIORITY)
    # Asked for nothing: OpenAI names the default tier, at the standard rates.
    assert standard["service_tier"] == "default"
    assert standard["total_cost_usd"] == 2 * flex[0]["total_cost_usd"]


@pytest.mark.parametrize("stream", [False, True])
async def test_audio_tokens_are_priced_at_the_audio_rates(
    gateway: Gateway, fake: FakeUpstream, rows: Any, stream: bool
) -> None:
    client = await gateway()
    fake.input_audio_tokens, fake.output_audio_tokens = 15, 3

    async with openai_client(client) as oai:
        answer = await oai.chat.completions.create(
            model="gpt-audio",
            messages=[{"role": "user", "content": "hi"}],
            stream=stream,
        )
        if stream:
            [chunk async for chunk in answer]  # type: ignore[union-attr]

    (row,) = await rows(client)
    text_in, text_out, audio_in, audio_out = GPT_AUDIO
    million = Decimal(1_000_000)
    input_tokens, output_tokens = row["input_tokens"], row["output_tokens"]
    assert (input_tokens, output_tokens) == (21, 5)
    # 6 text and 15 audio tokens in; 2 text and 3 audio out.
    assert row["input_cost_usd"] == (6 * text_in + 15 * audio_in) / million
    assert row["output_cost_usd"] == (2 * text_out + 3 * audio_out) / million
    assert row["price_source"] == "genai-prices"


@pytest.mark.parametrize("prefix", ["/deepseek", ""])
async def test_deepseek_cache_hits_by_prefix_and_by_model_glob(
    gateway: Gateway, fake: FakeUpstream, rows: Any, prefix: str
) -> None:
    client = await gateway()
    fake.prompt_tokens, fake.cached_tokens = 1000, 896

    async with openai_client(client, prefix) as oai:
        whole = await oai.chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "hi"}]
        )
        stream = await oai.chat.completions.create(
            model="deepseek-chat",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        chunks = [chunk async for chunk in stream]

    assert whole.usage is not None
    assert whole.usage.prompt_tokens == 1000
    # DeepSeek's usage rides on its finish chunk, and the client still sees it.
    assert chunks[-1].usage is not None
    assert chunks[-1].choices[0].finish_reason == "stop"
    recorded = await rows(client)
    assert len(recorded) == 2
    for row in recorded:
        assert (row["upstream"], row["model"]) == ("deepseek", "deepseek-chat")
        assert (
            row["input_tokens"],
            row["cached_input_tokens"],
            row["output_tokens"],
        ) == (1000, 896, 5)
        assert_cost(row, DEEPSEEK_CHAT)


# (recording, endpoint, requested model, stream, reported model,
#  input, cached, output, reasoning, USD per million: input, cached, output)
RECORDINGS = [
    ("openai_chat_stream_usage_1.sse", "chat/completions", "gpt-4", True,
     "gpt-4-0613", 12, 0, 5, 0, GPT_4),
    ("openai_chat_reasoning_1.json", "chat/completions", "o3-mini", False,
     "o3-mini-2025-01-31", 7, 0, 87, 64,
     (Decimal("1.1"), Decimal("0.55"), Decimal("4.4"))),
    ("deepseek_reasoner_stream_1.sse", "chat/completions", "deepseek-reasoner", True,
     "deepseek-reasoner", 6, 0, 212, 198,
     (Decimal("0.55"), Decimal("0.14"), Decimal("2.19"))),
    ("deepseek_reasoner_1.json", "chat/completions", "deepseek-reasoner", False,
     "deepseek-v4-flash", 563, 512, 116, 60,
     (Decimal("0.15"), Decimal("0.003"), Decimal("0.6"))),
    ("openai_responses_stream_1.sse", "responses", "gpt-5.5", True,
     "gpt-5.5-2026-04-23", 11, 0, 5, 0,
     (Decimal("5"), Decimal("0.5"), Decimal("30"))),
    ("openai_embeddings_1.json", "embeddings", "text-embedding-3-small", False,
     "text-embedding-3-small", 8, 0, 0, 0, EMBEDDING_3_SMALL),
]  # fmt: skip


@pytest.mark.parametrize("case", RECORDINGS, ids=[case[0] for case in RECORDINGS])
async def test_recorded_bodies_are_relayed_byte_for_byte_and_priced(
    gateway: Gateway, fake: FakeUpstream, rows: Any, case: tuple[Any, ...]
) -> None:
    name, endpoint, model, stream, reported, *tokens, rates = case
    client = await gateway()
    body: dict[str, Any] = {"model": model, "input": "hi"}
    if stream:
        body["stream"] = True
    if stream and endpoint == "chat/completions":
        # As the recorded requests did: the bytes then match the recording.
        body["stream_options"] = {"include_usage": True}

    resp = await client.post(
        f"/v1/{endpoint}", json=body, headers={"X-Fake-Recording": name}
    )
    relayed = await resp.read()

    assert relayed == recorded(name)
    (row,) = await rows(client)
    assert row["model"] == reported
    assert row["upstream"] == ("deepseek" if model.startswith("deepseek") else "openai")
    assert row["streamed"] is stream
    assert [
        row["input_tokens"],
        row["cached_input_tokens"],
        row["output_tokens"],
        row["reasoning_tokens"],
    ] == tokens
    assert_cost(row, rates)


async def test_upstream_429_and_500_pass_through_with_their_headers(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()
    fake.fail_next(
        429, headers={"retry-after": "7", "x-ratelimit-remaining-requests": "0"}
    )
    fake.fail_next(500)
    messages = [{"role": "user", "content": "hi"}]

    async with openai_client(client) as oai:
        with pytest.raises(openai.RateLimitError) as limited:
            await oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
        with pytest.raises(openai.InternalServerError) as failed:
            await oai.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert failed.value.status_code == 500
    recorded = await rows(client)
    assert sorted(r["status"] for r in recorded) == [429, 500]
    for row in recorded:
        assert (row["input_tokens"], row["output_tokens"]) == (0, 0)
        assert row["total_cost_usd"] == 0


async def test_upstream_down_is_a_recorded_502(
    aiohttp_client: Any,
    make_settings: Any,
    db_pool: asyncpg.Pool,
    unused_tcp_port: int,
    rows: Any,
) -> None:
    settings = make_settings(
        upstreams={"openai": {"base_url": f"http://127.0.0.1:{unused_tcp_port}/v1"}}
    )
    client = await aiohttp_client(create_app(settings, clock=lambda: NOW))

    async with openai_client(client) as oai:
        with pytest.raises(openai.APIStatusError) as caught:
            await oai.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )

    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_error"  # type: ignore[index]
    (row,) = await rows(client)
    assert (row["status"], row["error"], row["input_tokens"]) == (
        502,
        "upstream_error",
        0,
    )


async def test_an_upstream_behind_a_proxy_is_called_through_it(
    gateway: Gateway, fake: FakeUpstream, rows: Any, serve: Any, caplog: Any
) -> None:
    proxy = await start_proxy(serve, required=BOB)
    client = await gateway(proxy_url=f"http://bob:s%40cret@127.0.0.1:{proxy.port}")
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    with caplog.at_level(logging.DEBUG):
        async with openai_client(client) as oai:
            completion = await oai.chat.completions.create(**chat)
            stream = await oai.chat.completions.create(**chat, stream=True)
            [chunk async for chunk in stream]

    assert completion.choices[0].message.content == fake.answer
    # One pooled connection to the proxy carried both calls.
    [head] = proxy.heads
    assert head.startswith(
        f"POST {fake.base_url}/chat/completions HTTP/1.1\r\n".encode()
    )
    assert f"Proxy-Authorization: {BOB}".encode() in head
    assert len(fake.received) == 2
    # The test's proxy strips its credentials from the first request only.
    assert "Proxy-Authorization" not in fake.received[0].headers
    recorded = await rows(client)
    assert [r["streamed"] for r in sorted(recorded, key=lambda r: r["streamed"])] == [
        False,
        True,
    ]
    for row in recorded:
        assert row["error"] is None
        assert_cost(row, GPT_4O_MINI)
    assert "s@cret" not in caplog.text
    assert "s%40cret" not in caplog.text


async def test_a_proxy_that_refuses_is_a_recorded_502_that_names_no_secret(
    gateway: Gateway, fake: FakeUpstream, rows: Any, serve: Any, caplog: Any
) -> None:
    proxy = await start_proxy(serve, required=BOB)
    client = await gateway(proxy_url=f"http://bob:hunter2@127.0.0.1:{proxy.port}")

    with caplog.at_level(logging.DEBUG):
        async with openai_client(client) as oai:
            with pytest.raises(openai.APIStatusError) as caught:
                await oai.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )

    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_error"  # type: ignore[index]
    assert fake.received == []
    (row,) = await rows(client)
    assert (row["status"], row["error"]) == (502, "upstream_error")
    assert "407 Proxy Authentication Required" in caplog.text
    assert "hunter2" not in caplog.text
    assert "hunter2" not in str(caught.value.body)


async def test_upstream_stall_is_a_recorded_504_with_estimated_input(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway(timeout_s=0.2)
    fake.stall_next(1.0)

    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )

    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"
    (row,) = await rows(client)
    assert (row["status"], row["error"]) == (504, "upstream_timeout")
    assert row["usage_estimated"]
    assert not row["usage_complete"]
    assert row["input_tokens"] > 0
    assert_cost(row, GPT_4O_MINI)


async def test_client_gone_mid_stream_leaves_one_estimated_row(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()
    fake.answer = " ".join(["word"] * 200)
    fake.event_delay_s = 0.005
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }

    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url("/v1/chat/completions"), json=body)
        first = await resp.content.readany()
        # Relayed as it comes: the first chunk is here while the rest is not.
        assert first.startswith(b"data: ")
        assert fake.open_streams == 1
        resp.close()
    # The gateway notices at its next write; wait until the row exists.
    for _ in range(200):
        if recorded := await rows(client):
            break
        await asyncio.sleep(0.02)

    (row,) = recorded
    assert row["error"] == "client_disconnected"
    assert not row["usage_complete"]
    assert row["usage_estimated"]
    assert row["input_tokens"] > 0
    assert 0 < row["output_tokens"] < 200
    assert_cost(row, GPT_4O_MINI)


async def test_upstream_reset_mid_stream_cuts_the_client_too(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()
    fake.reset_next(after_events=3)
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }

    resp = await client.post("/v1/chat/completions", json=body)
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()

    (row,) = await rows(client)
    assert row["error"] == "upstream_reset"
    assert not row["usage_complete"]
    assert row["usage_estimated"]
    assert row["output_tokens"] == 3


async def send_raw(client: TestClient, target: str) -> int:
    """Send *target* exactly as written, as no HTTP client library would."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n".encode()
    )
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


async def test_path_tricks_never_reach_outside_the_base_path(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    client = await gateway()
    tricks = [
        "/v1/../admin",
        "/v1/../../etc/passwd",
        "/v1/%2e%2e/secret",
        "/v1/%2E%2E%2Fsecret",
        "/v1/models/..%2f..%2fadmin",
        "/v1/a%5c..%5cadmin",
        "/v1//models",
        "/v1/./models",
        "/deepseek/v1/../../x",
        "/openai/v1/%2e/models",
        "http://evil.example/v1/models",
        "//evil.example/v1/models",
        "/v1/models?next=http://evil.example#x",
    ]

    statuses = [await send_raw(client, target) for target in tricks]
    good = await send_raw(client, "/v1/models")

    assert all(status in (400, 404) for status in statuses), statuses
    assert good == 200
    assert [r.path for r in fake.received] == ["/v1/models"]


async def test_gateway_keys_guard_the_door_and_swap_in_the_upstream_key(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway(
        server={"gateway_keys": [{"key": "gk-one-secret", "label": "trading-bot"}]},
        api_key="sk-upstream-secret",
    )
    messages = [{"role": "user", "content": "hi"}]

    async with openai_client(client, api_key="sk-not-a-gateway-key") as oai:
        with pytest.raises(openai.AuthenticationError):
            await oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
    refused_upstream = list(fake.received)
    async with openai_client(client, api_key="gk-one-secret") as oai:
        await oai.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert refused_upstream == []
    assert fake.received[-1].headers["Authorization"] == "Bearer sk-upstream-secret"
    assert client.server.app[METRICS].rejected["invalid_api_key"] == 1
    (row,) = await rows(client)
    assert row["key_label"] == "trading-bot"
    assert "secret" not in repr(dict(row))


async def test_upstream_key_is_sent_when_the_client_sends_none(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    client = await gateway(api_key="sk-upstream-secret")

    resp = await client.get("/v1/models")

    assert resp.status == 200
    assert fake.received[-1].headers["Authorization"] == "Bearer sk-upstream-secret"


async def test_other_v1_paths_are_relayed_without_a_row(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()

    resp = await client.get(
        "/v1/models?limit=2",
        headers={"Accept-Encoding": "gzip", "X-Purpose": "listing"},
    )

    assert resp.status == 200
    assert (await resp.json())["object"] == "list"
    assert resp.headers["X-Request-Id"].startswith("tg-")
    assert resp.headers["Content-Encoding"] == "gzip"
    sent = fake.received[-1]
    assert sent.path == "/v1/models?limit=2"
    assert sent.headers["Accept-Encoding"] == "gzip"
    assert "X-Purpose" not in sent.headers
    assert await rows(client) == []


async def test_a_bad_tag_header_is_refused_before_any_upstream(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()

    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": []},
        headers={"X-Ticker": "x" * 500},
    )

    assert resp.status == 400
    error = (await resp.json())["error"]
    assert (error["code"], error["param"]) == ("invalid_tag_header", "X-Ticker")
    assert fake.received == []
    assert client.server.app[METRICS].rejected["invalid_tag_header"] == 1
    assert await rows(client) == []


async def test_a_refusal_before_any_upstream_carries_the_request_id(
    gateway: Gateway, fake: FakeUpstream, caplog: Any
) -> None:
    client = await gateway(server={"max_body_bytes": 1000})
    chat = {"model": "gpt-4o-mini", "messages": []}

    with caplog.at_level(logging.INFO, logger="gateway.errors"):
        bad_tag = await client.post(
            "/v1/chat/completions",
            json=chat,
            headers={"X-Ticker": "x" * 500, "X-Request-Id": "trade-7"},
        )
        too_large = await client.post(
            "/v1/chat/completions", json={**chat, "input": "x" * 2000}
        )
        bad_id = await client.post(
            "/v1/chat/completions", json=chat, headers={"X-Request-Id": "a b"}
        )

    assert (bad_tag.status, bad_tag.headers["X-Request-Id"]) == (400, "trade-7")
    generated = too_large.headers["X-Request-Id"]
    assert too_large.status == 413
    assert generated.startswith("tg-")
    # An id that is not one is the refusal's reason, and is not echoed.
    assert bad_id.status == 400
    assert "X-Request-Id" not in bad_id.headers
    assert (await bad_id.json())["error"]["param"] == "X-Request-Id"
    assert fake.received == []
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3
    assert refusals[0].endswith("(request trade-7)")
    assert refusals[1].endswith(f"(request {generated})")


async def test_a_body_over_the_limit_is_413(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    client = await gateway(server={"max_body_bytes": 1000})

    resp = await client.post(
        "/v1/chat/completions", json={"model": "gpt-4o-mini", "input": "x" * 2000}
    )

    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "request_too_large"
    assert fake.received == []


async def test_invalid_json_is_forwarded_and_the_upstream_answer_recorded(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()

    resp = await client.post(
        "/v1/chat/completions",
        data=b'{"model": "gpt-4o-mini", oops',
        headers={"Content-Type": "application/json"},
    )

    assert resp.status == 400
    assert fake.received[-1].body == b'{"model": "gpt-4o-mini", oops'
    (row,) = await rows(client)
    assert (row["status"], row["model"], row["input_tokens"]) == (400, "unknown", 0)


async def test_a_refused_admission_reaches_no_upstream(
    gateway: Gateway, fake: FakeUpstream, rows: Any
) -> None:
    client = await gateway()
    seen: list[dict[str, str | None]] = []

    def refuse(tags: dict[str, str | None]) -> None:
        seen.append(tags)
        raise BudgetExceeded("daily budget spent")

    client.server.app[ADMISSION].append(refuse)

    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": []},
        headers={"X-Purpose": "signal", "X-Cycle-Id": "c1"},
    )

    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "budget_exceeded"
    assert seen == [{"purpose": "signal", "ticker": None, "cycle_id": "c1"}]
    assert fake.received == []
    assert client.server.app[METRICS].rejected["budget_exceeded"] == 1
    assert await rows(client) == []


async def test_a_shutdown_gives_every_started_call_one_drain_time(
    fake: FakeUpstream, make_settings: Any, db_pool: asyncpg.Pool
) -> None:
    # Behind the front door the HTTP/1.0 call is aiohttp's to serve: calls
    # behind both are drained together, not one door's after the other's.
    fake.stall_next(3.0)
    fake.stall_next(3.0)
    settings = make_settings(
        upstreams=upstreams_at(fake.base_url),  # type: ignore[attr-defined]
        server={"drain_timeout_s": 1.0},
    )
    async with contextlib.AsyncExitStack() as clients:
        async with serving(create_app(settings)) as live:
            calls = [await clients.enter_async_context(connection(live)) for _ in "ab"]
            calls[0][1].write(plain_request())
            calls[1][1].write(plain_request(version=b"HTTP/1.0"))
            await wait_until(lambda: len(fake.received) == 2, "both calls upstream")
        for reader, _ in calls:
            assert await asyncio.wait_for(reader.read(), 5) == b""

    rows = await db_pool.fetch("SELECT status, error, response_time_ms FROM llm_usage")
    assert [(r["status"], r["error"]) for r in rows] == [(503, "gateway_shutdown")] * 2
    # Cut at the drain time (1 s); aiohttp's own drain would give it twice.
    assert all(900 <= r["response_time_ms"] < 1600 for r in rows), rows
