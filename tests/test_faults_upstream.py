"""
The upstream misbehaves: refuses, resets, stalls, drips, sends garbage or
never stops. Each test checks what the client got and the row that says
what happened.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.proxy import MAX_WHOLE_BYTES
from gateway.sse import MAX_EVENT_BYTES, StreamScanner
from gateway.usage import estimate_tokens
from tests.fake_upstream import FakeUpstream, Fault
from tests.harness import (
    BOTH_FRONT_DOORS,
    CHAT,
    chat_body,
    rows_when,
    start_fake,
    stored_rows,
    upstreams_at,
)

FRONT_DOORS = BOTH_FRONT_DOORS

Gateway = Callable[..., Awaitable[TestClient]]
EMPTY_CHUNK = b'data: {"choices": []}\n\n'


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeUpstream:
    return await start_fake(aiohttp_server)


@pytest.fixture
def gateway(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool, fake: FakeUpstream
) -> Gateway:
    async def start(**upstream: Any) -> TestClient:
        base = fake.base_url  # type: ignore[attr-defined]
        settings = make_settings(upstreams=upstreams_at(base, **upstream))
        return await aiohttp_client(create_app(settings))

    return start


async def read_until_cut(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """Return the bytes read and whether the stream broke instead of ending."""
    got = bytearray()
    try:
        while data := await resp.content.readany():
            got += data
    except aiohttp.ClientPayloadError:
        return bytes(got), True
    return bytes(got), False


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def test_refused_connection_on_a_stream_is_a_502_and_a_row_of_nothing(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool, unused_tcp_port: int
) -> None:
    settings = make_settings(
        upstreams={"openai": {"base_url": f"http://127.0.0.1:{unused_tcp_port}/v1"}}
    )
    client = await aiohttp_client(create_app(settings))

    resp = await client.post(
        CHAT, json=chat_body(stream=True), headers={"X-Request-Id": "refused-1"}
    )

    assert resp.status == 502
    assert resp.headers["X-Request-Id"] == "refused-1"
    error = (await resp.json())["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_error")
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["request_id"], row["status"], row["error"]) == (
        "refused-1",
        502,
        "upstream_error",
    )
    # Nothing was sent, so nothing can have been billed.
    assert (row["total_tokens"], row["usage_complete"]) == (0, True)
    assert not row["usage_estimated"]


async def test_reset_mid_stream_relays_what_came_then_breaks(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    fake.answer = "one two three four five six"
    fake.reset_next(after_events=4)
    body = orjson.dumps(chat_body(stream=True, stream_options={"include_usage": True}))

    resp = await client.post(
        CHAT, data=body, headers={"Content-Type": "application/json"}
    )
    got, broken = await read_until_cut(resp)

    assert resp.status == 200
    assert broken
    events = got.split(b"\n\n")
    assert len(events) == 5
    assert events[-1] == b""
    assert all(e.startswith(b"data: {") for e in events[:4])
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["status"], row["error"], row["streamed"]) == (
        200,
        "upstream_reset",
        True,
    )
    assert not row["usage_complete"]
    assert row["usage_estimated"]
    # Estimated from the size of what the client sent.
    assert row["input_tokens"] == estimate_tokens(len(body))
    assert row["output_tokens"] == 4
    assert row["total_cost_usd"] > 0


async def test_stall_before_headers_on_a_stream_is_a_504_and_an_estimated_row(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway(timeout_s=0.3)
    fake.stall_next(1.0)

    resp = await client.post(CHAT, json=chat_body(stream=True))

    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["status"], row["error"]) == (504, "upstream_timeout")
    assert row["usage_estimated"]
    assert not row["usage_complete"]
    assert row["input_tokens"] > 0


async def test_stall_mid_stream_times_out_into_a_cut_and_a_row(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway(timeout_s=0.5)
    release = fake.hold_next(after_events=2)

    try:
        resp = await client.post(CHAT, json=chat_body(stream=True))
        got, broken = await read_until_cut(resp)
    finally:
        release.set()

    assert resp.status == 200
    assert broken
    assert got.count(b"\n\n") == 2
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["status"], row["error"]) == (200, "upstream_timeout")
    assert row["usage_estimated"]
    assert not row["usage_complete"]
    assert row["output_tokens"] == 2


async def test_a_slow_drip_is_relayed_as_it_comes(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    """The first chunk reaches the client while the upstream still holds the rest."""
    client = await gateway()
    fake.answer = " ".join(f"w{i}" for i in range(30))
    fake.event_delay_s = 0.002
    release = fake.hold_next(after_events=1)

    try:
        resp = await client.post(CHAT, json=chat_body(stream=True))
        first = await resp.content.readuntil(b"\n\n")
        written_when_first_arrived = fake.events_written
    finally:
        release.set()
    rest = await resp.read()

    assert first.startswith(b"data: {")
    assert written_when_first_arrived == 1
    # role chunk, 30 words, finish chunk, [DONE]; the usage chunk is hidden.
    assert (first + rest).count(b"\n\n") == 33
    assert fake.events_written == 34
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["output_tokens"], row["usage_complete"], row["error"]) == (
        30,
        True,
        None,
    )


async def test_malformed_json_with_200_is_relayed_and_billed_as_estimated(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    broken = b'{"id": "chatcmpl-x", "choices": [{"message": '
    fake.fail_next(200, body=broken)

    resp = await client.post(CHAT, json=chat_body())

    assert resp.status == 200
    assert await resp.read() == broken
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["status"], row["error"]) == (200, "no_usage")
    assert row["usage_estimated"]
    assert not row["usage_complete"]
    assert row["output_tokens"] == estimate_tokens(len(broken))
    assert row["model"] == "gpt-4o-mini"


UNREADABLE_USAGE = {"prompt_tokens": "12", "completion_tokens": 5, "total_tokens": 17}


async def test_a_body_whose_usage_is_unreadable_is_relayed_and_billed_as_estimated(
    gateway: Gateway,
    fake: FakeUpstream,
    db_pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await gateway()
    body = orjson.dumps(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}}
            ],
            "usage": UNREADABLE_USAGE,
        }
    )
    fake.fail_next(200, body=body)

    resp = await client.post(CHAT, json=chat_body())

    assert await resp.read() == body
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["status"], row["error"]) == (200, "usage_unreadable")
    assert row["usage_estimated"]
    assert not row["usage_complete"]
    assert row["input_tokens"] > 0
    assert row["output_tokens"] == estimate_tokens(len(body))
    assert row["total_cost_usd"] > 0
    unreadable = [r for r in caplog.records if "can be priced" in r.getMessage()]
    assert len(unreadable) == 1


async def test_a_stream_whose_usage_is_unreadable_is_billed_as_estimated(
    gateway: Gateway,
    fake: FakeUpstream,
    db_pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await gateway()
    chunk = {"id": "c", "model": "gpt-4o-mini-2024-07-18", "object": "x"}
    events = [
        b"data: "
        + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "a"}}]})
        + b"\n\n",
        b"data: " + orjson.dumps({**chunk, "choices": [], "usage": UNREADABLE_USAGE}),
        b"\n\ndata: [DONE]\n\n",
    ]
    fake.stream_next(events)

    resp = await client.post(CHAT, json=chat_body(stream=True))
    got, broken = await read_until_cut(resp)

    assert not broken
    # The client did not ask for usage: the chunk that carries it stays hidden.
    assert got == events[0] + b"data: [DONE]\n\n"
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["status"], row["error"]) == (200, "usage_unreadable")
    assert row["usage_estimated"]
    assert not row["usage_complete"]
    assert row["input_tokens"] > 0
    assert row["output_tokens"] == 2
    unreadable = [r for r in caplog.records if "can be priced" in r.getMessage()]
    assert len(unreadable) == 1


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream"])
async def test_a_stream_under_another_content_type_is_still_streamed_and_read(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool, content_type: str
) -> None:
    """Asked for with ``stream: true``, it is relayed as it comes, usage and all."""
    client = await gateway()
    chunk = {"id": "c", "model": "gpt-4o-mini-2024-07-18", "object": "x"}
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    events = [
        b"data: "
        + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "a"}}]})
        + b"\n\n",
        b"data: " + orjson.dumps({**chunk, "choices": [], "usage": usage}) + b"\n\n",
        b"data: [DONE]\n\n",
    ]
    release = fake.stream_next(
        events, headers={"Content-Type": content_type}, hold_after_events=1
    )

    try:
        # Held back until the whole answer came, it would never come.
        async with asyncio.timeout(5):
            resp = await client.post(CHAT, json=chat_body(stream=True))
            first = await resp.content.readexactly(len(events[0]))
    finally:
        release.set()
    rest = await resp.read()

    assert first == events[0]
    assert rest == events[2]
    (row,) = await stored_rows(client.server.app, db_pool)
    assert row["streamed"]
    assert (row["input_tokens"], row["output_tokens"]) == (9, 2)
    assert row["usage_complete"]
    assert row["error"] is None


async def test_a_json_answer_to_a_stream_request_is_read_whole(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    """An upstream that ignores ``stream: true`` still has its usage read."""
    client = await gateway()

    resp = await client.post(CHAT, json=chat_body())
    body = await resp.read()
    fake.fail_next(200, body=body)
    again = await client.post(CHAT, json=chat_body(stream=True))

    assert await again.read() == body
    rows = await stored_rows(client.server.app, db_pool)
    assert [row["streamed"] for row in rows] == [False, False]
    assert rows[0]["input_tokens"] == rows[1]["input_tokens"] > 0
    assert rows[1]["usage_complete"]


def large_completion(padding: int) -> bytes:
    answer = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"content": "x" * padding}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43},
        "service_tier": "default",
    }
    return orjson.dumps(answer)


async def test_a_json_answer_over_a_mebibyte_is_relayed_as_it_comes(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    body = large_completion(MAX_WHOLE_BYTES)
    half = len(body) // 2
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    release = fake.stream_next([body[:half], body[half:]], headers, hold_after_events=1)

    try:
        # Held until the whole answer came, it would never come.
        async with asyncio.timeout(5):
            resp = await client.post(CHAT, json=chat_body())
            first = await resp.content.readexactly(half)
    finally:
        release.set()
    rest = await resp.read()

    assert first + rest == body
    assert resp.headers["Content-Length"] == str(len(body))
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["input_tokens"], row["output_tokens"]) == (40, 3)
    assert (row["model"], row["service_tier"]) == ("gpt-4o-mini-2024-07-18", "default")
    assert (row["streamed"], row["usage_complete"], row["error"]) == (False, True, None)


async def test_a_json_answer_over_a_mebibyte_cut_short_is_estimated(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    body = large_completion(2 * MAX_WHOLE_BYTES)
    half = len(body) // 2
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    fake.faults.append(
        Fault(
            raw_events=[body[:half], body[half:]], headers=headers, reset_after_events=1
        )
    )

    resp = await client.post(CHAT, json=chat_body())
    got, broken = await read_until_cut(resp)

    assert broken
    assert got == body[: len(got)]
    (row,) = await stored_rows(client.server.app, db_pool)
    assert row["error"] == "upstream_reset"
    assert (row["usage_complete"], row["usage_estimated"]) == (False, True)
    assert row["output_tokens"] == estimate_tokens(half)


@pytest.mark.parametrize(
    ("events", "finished"),
    [
        ([b"garbage line\n", b"data: {not json\n", b"\x00\xff\xfe more\n"], False),
        ([b'data: {"a": 1}\ndata: x\n', b"event: ??\n", b"data: [DONE]\n\n"], True),
        ([b"\r\r\r", b'data: {"usage": {"prompt_tokens": "x"}}\n\n'], False),
    ],
    ids=["no-blank-lines", "garbage-then-done", "bad-usage"],
)
async def test_malformed_event_stream_is_relayed_unchanged_and_flagged(
    gateway: Gateway,
    fake: FakeUpstream,
    db_pool: asyncpg.Pool,
    events: list[bytes],
    finished: bool,
) -> None:
    client = await gateway()
    fake.stream_next(events)

    resp = await client.post(CHAT, json=chat_body(stream=True))
    got, broken = await read_until_cut(resp)

    assert resp.status == 200
    assert not broken
    assert got == b"".join(events)
    (row,) = await stored_rows(client.server.app, db_pool)
    assert row["status"] == 200
    assert row["usage_estimated"]
    assert not row["usage_complete"]
    assert row["input_tokens"] > 0
    # [DONE] came, so the stream ended whole, just without usage; without it
    # the row says the stream did not finish, though nothing was reset.
    assert row["error"] == ("no_usage" if finished else "stream_incomplete")


async def test_a_stream_that_keeps_sending_outlives_the_timeout(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    """The limit is on silence: three times the timeout of steady events."""
    client = await gateway(timeout_s=0.3)
    event = b"data: " + b"x" * 100 + b"\n\n"
    fake.stream_endlessly_next(event, every_s=0.05)
    # Usage asked for by the client: nothing is held back, every read is relayed.
    body = chat_body(stream=True, stream_options={"include_usage": True})
    loop = asyncio.get_running_loop()

    resp = await client.post(CHAT, json=body)
    until = loop.time() + 0.9
    got = b""
    while loop.time() < until:
        got += await resp.content.readany()
    resp.close()

    assert resp.status == 200
    assert got.count(b"\n\n") >= 12
    (row,) = await rows_when(client, db_pool, 1)
    assert (row["status"], row["error"]) == (200, "client_disconnected")


@pytest.mark.parametrize(
    ("piece", "is_events"),
    [(EMPTY_CHUNK * 200, True), (b"data: " + b"y" * 4090, False)],
    ids=["events", "no-blank-line"],
)
async def test_an_endless_stream_ends_when_the_client_leaves(
    gateway: Gateway,
    fake: FakeUpstream,
    db_pool: asyncpg.Pool,
    piece: bytes,
    is_events: bool,
) -> None:
    """
    Read twice the scanner's event bound, then leave. Without blank lines the
    bytes still flow: past the bound the scanner holds nothing back.
    """
    client = await gateway()
    fake.stream_endlessly_next(piece)

    resp = await client.post(CHAT, json=chat_body(stream=True))
    read = 0
    while read < 2 * MAX_EVENT_BYTES:
        read += len(await resp.content.readany())
    resp.close()

    (row,) = await rows_when(client, db_pool, 1)
    assert row["error"] == "client_disconnected"
    assert not row["usage_complete"]
    assert row["usage_estimated"]
    if is_events:
        # Every event was a data event: the estimate counts those relayed.
        assert row["output_tokens"] >= read // len(EMPTY_CHUNK)
    else:
        assert row["output_tokens"] == 0


@pytest.mark.parametrize("piece_bytes", [997, 65536])
def test_the_scanner_holds_at_most_one_event_of_a_stream_without_blank_lines(
    piece_bytes: int,
) -> None:
    """Fed 4 MiB and more with no event end, what it holds back stays bounded."""
    scanner = StreamScanner(hide_usage_chunk=True)
    piece = (b"data: {" + b"y" * piece_bytes)[:piece_bytes]
    fed = relayed = most_held = 0

    while fed < 4 * MAX_EVENT_BYTES + piece_bytes:
        relayed += len(scanner.feed(piece))
        fed += piece_bytes
        most_held = max(most_held, fed - relayed)
    relayed += len(scanner.close())

    assert most_held <= MAX_EVENT_BYTES + piece_bytes
    # What is past the bound is relayed unscanned; only two bytes stay held.
    assert fed - relayed <= 2


async def test_a_json_answer_without_usage_says_so(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    answer = orjson.dumps(
        {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"content": "hello there"}}],
        }
    )
    fake.fail_next(200, body=answer)

    resp = await client.post(CHAT, json=chat_body())

    assert await resp.read() == answer
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["status"], row["error"], row["model"]) == (
        200,
        "no_usage",
        "gpt-4o-mini-2024-07-18",
    )
    assert row["usage_estimated"]
    assert not row["usage_complete"]
    assert row["output_tokens"] == estimate_tokens(len(answer))
    assert row["total_cost_usd"] > 0


@pytest.mark.parametrize("status", ["queued", "in_progress"])
async def test_a_background_response_is_stored_with_its_usage_deferred(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool, status: str
) -> None:
    """Answered at once, before any token: there is nothing to estimate."""
    client = await gateway()
    answer = orjson.dumps(
        {
            "id": "resp_1",
            "object": "response",
            "status": status,
            "background": True,
            "model": "o3-2025-04-16",
            "output": [],
            "usage": None,
        }
    )
    fake.fail_next(200, body=answer)

    resp = await client.post(
        "/v1/responses", json={"model": "o3", "input": "hi", "background": True}
    )

    assert await resp.read() == answer
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["status"], row["error"], row["model"]) == (
        200,
        "usage_deferred",
        "o3-2025-04-16",
    )
    assert (row["input_tokens"], row["output_tokens"]) == (0, 0)
    assert not row["usage_estimated"]
    assert not row["usage_complete"]
    assert row["total_cost_usd"] == 0


async def test_embeddings_without_usage_estimate_input_only(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    answer = orjson.dumps(
        {"object": "list", "model": "text-embedding-3-small",
         "data": [{"object": "embedding", "index": 0, "embedding": [0.25] * 512}]}
    )  # fmt: skip
    fake.fail_next(200, body=answer)
    request = orjson.dumps({"model": "text-embedding-3-small", "input": "hi " * 99})

    resp = await client.post(
        "/v1/embeddings", data=request, headers={"Content-Type": "application/json"}
    )

    assert await resp.read() == answer
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["error"], row["output_tokens"]) == ("no_usage", 0)
    assert row["input_tokens"] == estimate_tokens(len(request))
    assert row["usage_estimated"]


async def test_a_stream_without_usage_says_so(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    chunk = {"object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": []}
    events = [sse(chunk), sse(chunk), sse(chunk), b"data: [DONE]\n\n"]
    fake.stream_next(events)

    resp = await client.post(CHAT, json=chat_body(stream=True))

    assert await resp.read() == b"".join(events)
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["error"], row["output_tokens"], row["model"]) == (
        "no_usage",
        3,
        "gpt-4o-mini",
    )
    assert row["usage_estimated"]
    assert not row["usage_complete"]


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (400, b'{"error": {"message": "bad", "type": "x"}}', "application/json"),
        (401, b"", "application/json"),
        (404, b"not here", "text/plain"),
        (500, b"", "text/plain"),
        (502, b"<html>bad gateway</html>", "text/html"),
        (503, b'{"error": {"message": "overloaded"}}', "application/json"),
    ],
)
async def test_error_statuses_pass_through_and_are_recorded(
    gateway: Gateway,
    fake: FakeUpstream,
    db_pool: asyncpg.Pool,
    status: int,
    body: bytes,
    content_type: str,
) -> None:
    client = await gateway()
    fake.fail_next(status, body=body, headers={"Content-Type": content_type})

    resp = await client.post(CHAT, json=chat_body())

    assert resp.status == status
    assert await resp.read() == body
    assert resp.content_type == content_type
    (row,) = await stored_rows(client.server.app, db_pool)
    assert row["status"] == status
    assert row["total_tokens"] == 0
    assert row["total_cost_usd"] == 0


async def test_an_error_status_on_a_stream_request_passes_through(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    fake.fail_next(429, headers={"retry-after": "3"})

    resp = await client.post(CHAT, json=chat_body(stream=True))

    assert resp.status == 429
    assert resp.headers["retry-after"] == "3"
    assert (await resp.json())["error"]["message"] == "fake 429"
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["status"], row["total_tokens"]) == (429, 0)


event_bytes = st.lists(
    st.sampled_from(
        [b"data: ", b"[DONE]", b"\n", b"\r", b"\n\n", b'"usage"', b":{", b"}", b"{"]
    )
    | st.binary(max_size=40),
    max_size=30,
).map(b"".join)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pieces=st.lists(event_bytes, min_size=1, max_size=6),
    streamed=st.booleans(),
)
async def test_any_upstream_bytes_are_relayed_and_leave_one_row(
    gateway: Gateway,
    fake: FakeUpstream,
    db_pool: asyncpg.Pool,
    pieces: list[bytes],
    streamed: bool,
) -> None:
    """Whatever the upstream sends, it reaches the client and is recorded once."""
    client = await gateway()
    body = b"".join(pieces)
    if streamed:
        fake.stream_next(pieces)
    else:
        fake.fail_next(200, body=body)
    before = len(await stored_rows(client.server.app, db_pool))

    resp = await client.post(CHAT, json=chat_body(stream=streamed))
    got, broken = await read_until_cut(resp)

    # A stream's row is submitted just after its last byte went out.
    rows = await rows_when(client, db_pool, before + 1)

    assert resp.status == 200
    assert not broken
    assert len(rows) == before + 1
    row = next(r for r in rows if r["request_id"] == resp.headers["X-Request-Id"])
    assert row["status"] == 200
    if row["usage_complete"]:
        # Only a body that really held usage may change what is relayed.
        assert row["usage_estimated"] is False
    else:
        # A stream whose usage the gateway asked for loses only that trace.
        sent = body.replace(b',"usage":null', b"") if streamed else body
        assert got == sent
        assert row["usage_estimated"]


async def start_raw_upstream(answer: bytes) -> tuple[asyncio.Server, str, list[bytes]]:
    """
    An upstream that reads one request, writes *answer* as it is, and hangs up.

    For replies aiohttp's server will not write: cut bodies, lying lengths,
    answers that are not HTTP at all.
    """
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        requests.append(head + await reader.readexactly(length))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1", requests


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
FIRST_EVENT = (
    b'data: {"id":"chatcmpl-h","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
)
LAST_EVENTS = (
    b'data: {"id":"chatcmpl-h","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    b'"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,'
    b'"total_tokens":6}}\n\ndata: [DONE]\n\n'
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.parametrize(
    "split",
    [0, 40, len(FIRST_EVENT)],
    ids=["head-alone", "head-and-part-of-an-event", "head-and-an-event"],
)
async def test_a_streams_head_reaches_the_client_while_the_upstream_holds_the_rest(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool, split: int
) -> None:
    """
    The answer's head may wait for bytes that came with it, never for the
    upstream: a client sees it while the upstream works on what follows.
    """
    release = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.partition(b":")[2])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        # The head and what comes with it, in one write; the rest on release.
        first = FIRST_EVENT[:split]
        writer.write(STREAM_HEAD + (chunk(first) if first else b""))
        await release.wait()
        rest = FIRST_EVENT[split:] + LAST_EVENTS
        writer.write(chunk(rest) + b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = make_settings(
        upstreams={"openai": {"base_url": f"http://127.0.0.1:{port}/v1"}}
    )
    client = await aiohttp_client(create_app(settings))

    try:
        # Held back, the head would wait for the release that never comes.
        resp = await asyncio.wait_for(
            client.post(CHAT, json=chat_body(stream=True)), timeout=10
        )
        status = resp.status
    finally:
        release.set()
    body = await resp.read()
    server.close()
    await server.wait_closed()

    assert status == 200
    # The usage chunk the gateway asked for is hidden again.
    assert body == FIRST_EVENT + b"data: [DONE]\n\n"
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["input_tokens"], row["output_tokens"], row["usage_complete"]) == (
        5,
        1,
        True,
    )


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b'Content-Length: 500\r\n\r\n{"id": "chatcmpl-x", "usage": {"prompt_',
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"id": "chatcmpl',
        b"",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ],
    ids=["cut-body", "cut-chunks", "hang-up", "not-http"],
)
async def test_an_upstream_that_breaks_the_answer_is_a_502_and_an_estimated_row(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool, answer: bytes
) -> None:
    server, base_url, requests = await start_raw_upstream(answer)
    settings = make_settings(upstreams={"openai": {"base_url": base_url}})
    client = await aiohttp_client(create_app(settings))

    try:
        resp = await client.post(CHAT, json=chat_body())
        error = (await resp.json())["error"]
    finally:
        server.close()
        await server.wait_closed()

    assert len(requests) == 1
    assert resp.status == 502
    assert error["code"] == "upstream_error"
    (row,) = await stored_rows(client.server.app, db_pool)
    assert (row["status"], row["error"]) == (502, "upstream_error")
    # The request went out, so the upstream may have billed it.
    assert not row["usage_complete"]
    assert row["usage_estimated"]
    assert row["input_tokens"] > 0


async def test_a_compressed_answer_despite_identity_is_relayed_intact(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    """An upstream that compresses anyway: the client gets its bytes as sent."""
    client = await gateway()
    plain = orjson.dumps(
        {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 9, "completion_tokens": 4}}
    )
    squeezed = gzip.compress(plain)
    fake.fail_next(200, body=squeezed, headers={"Content-Encoding": "gzip"})

    resp = await client.post(CHAT, json=chat_body())

    assert fake.received[-1].headers["Accept-Encoding"] == "identity"
    assert resp.headers["Content-Encoding"] == "gzip"
    assert await resp.read() == plain
    (row,) = await stored_rows(client.server.app, db_pool)
    assert row["status"] == 200
    # Either read through the compression or said to be a guess, never silent.
    if row["usage_complete"]:
        assert (row["input_tokens"], row["output_tokens"]) == (9, 4)
    else:
        assert row["usage_estimated"]
        assert row["error"] == "no_usage"
