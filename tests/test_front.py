"""
The front door: which requests it reads itself, and that it serves them as
aiohttp's server would (keep-alive, pipelining, hand-over, slow readers,
idle connections). The proxy's own tests run behind both doors as well.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import front
from gateway.app import create_app
from gateway.front import MAX_HEAD_BYTES, parse_request_head
from tests.fake_upstream import FakeUpstream
from tests.harness import (
    CHAT,
    LiveGateway,
    chat_body,
    serving,
    start_fake,
    stored_rows,
    upstreams_at,
)

MAX_BODY = 1000
PLAIN_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\n"
    b"Host: 127.0.0.1:5611\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"Content-Type: application/json\r\n"
    b"Authorization: Bearer sk-test\r\n"
    b"X-Purpose: decide\r\n"
    b"Content-Length: 120"
)


# -- which heads the door reads -----------------------------------------------


def test_a_plain_head_is_read_as_sent() -> None:
    head = parse_request_head(PLAIN_HEAD, MAX_BODY)

    assert head is not None
    assert (head.method, head.target) == ("POST", "/v1/chat/completions")
    assert list(head.headers.items())[1:3] == [
        ("Accept-Encoding", "gzip, deflate"),
        ("Connection", "keep-alive"),
    ]
    assert head.headers["x-purpose"] == "decide"
    assert head.content_length == 120
    assert not head.close


def test_connection_close_and_a_get_without_body_are_read() -> None:
    head = parse_request_head(
        b"GET /v1/models?limit=5 HTTP/1.1\r\nHost: x\r\nConnection: Close", MAX_BODY
    )

    assert head is not None
    assert head.target == "/v1/models?limit=5"
    assert head.content_length is None
    assert head.close
    # Only Connection says so (hypothesis found a door that read any header).
    other = parse_request_head(
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nUser-Agent: close", 0
    )
    assert other is not None
    assert not other.close


def with_host(line: bytes, *fields: bytes) -> bytes:
    return b"\r\n".join([line, b"Host: x", *fields])


CHAT_LINE = b"POST /v1/chat/completions HTTP/1.1"


@pytest.mark.parametrize(
    "head",
    [
        with_host(b"POST /v1/chat/completions HTTP/1.0"),
        with_host(b"PUT /v1/files HTTP/1.1"),
        with_host(b"OPTIONS /v1/chat/completions HTTP/1.1"),
        with_host(b"post /v1/chat/completions HTTP/1.1"),
        with_host(b"POST http://x/v1/chat/completions HTTP/1.1"),
        with_host(b"POST /v1/chat completions HTTP/1.1"),
        with_host(b"POST /v1/chat/\xc3\xa9 HTTP/1.1"),
        with_host(b"POST /v1/chat/completions HTTP/1.1 "),
        with_host(b"POST  /v1/chat/completions HTTP/1.1"),
        with_host(CHAT_LINE, b"X-Purpose : x"),
        with_host(CHAT_LINE, b"X-Purpose: x", b" folded"),
        with_host(CHAT_LINE, b"X-Purpose: d\xc3\xa9cide"),
        with_host(CHAT_LINE, b"X-Purpose: a\x00b"),
        with_host(CHAT_LINE, b"X-Purpose: a\rb"),
        with_host(CHAT_LINE, b"Transfer-Encoding: chunked"),
        with_host(CHAT_LINE, b"Expect: 100-continue"),
        with_host(b"GET /v1/models HTTP/1.1", b"Upgrade: websocket"),
        with_host(b"GET /v1/models HTTP/1.1", b"Connection: Upgrade"),
        with_host(CHAT_LINE, b"Content-Length: 5", b"Content-Length: 5"),
        with_host(CHAT_LINE, b"Content-Length: +5"),
        with_host(CHAT_LINE, b"Content-Length: 5, 5"),
        with_host(CHAT_LINE, b"Content-Length: 0x5"),
        with_host(CHAT_LINE, b"Content-Length: 1001"),
        with_host(CHAT_LINE, *[b"A: b"] * 100),
        with_host(CHAT_LINE, b"host: y"),
        with_host(CHAT_LINE, b"User-Agent: a", b"User-Agent: b"),
        CHAT_LINE + b"\r\nContent-Length: 5",
    ],
)
def test_heads_the_door_leaves_to_aiohttp(head: bytes) -> None:
    assert parse_request_head(head, MAX_BODY) is None


def aiohttp_reads(head: bytes) -> Any:
    """What aiohttp's server makes of *head*; None where it refuses it."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        try:
            messages, _, _ = parser.feed_data(head + b"\r\n\r\n")
        except Exception:
            return None
        return messages[0][0] if messages else None
    finally:
        loop.close()


def mostly(good: list[str], bad: list[str]) -> st.SearchStrategy[str]:
    """Good values eight times as often as bad ones."""
    return st.sampled_from(good * 8 + bad)


NAMES = mostly(
    ["X-Purpose", "Content-Length", "Content-Type", "Connection", "A", "x-tag-desk",
     "User-Agent", "Host"],
    ["Transfer-Encoding", "Bad Name", "", "Ĥ", "X\x00", "X;", "Expect"],
)  # fmt: skip
VALUES = mostly(
    ["", "12", "0", "007", "close", "keep-alive, close", "a\tb", " 7 ", "x y"],
    ["-1", "1 2", "é", "\x7f", "\x00", "\r", "\n", "chunked", "9" * 20],
)  # fmt: skip
TARGETS = mostly(
    ["/v1/chat/completions", "/v1/models?x=1&y=%20", "/deepseek/v1/chat/completions",
     "/v1/a%2Fb"],
    ["/v1/a#frag", "/v1/<x>", "/v1/\x7f", "/v1/a b", "*", "/v1/%zz", "/v1/é", ""],
)  # fmt: skip
# Bytes that break a head wherever they land.
NASTY = st.sampled_from([b"\x00", b"\r", b"\n", b" ", b"\t", b":", b"\x80", b"\x7f"])


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    method = draw(mostly(["GET", "POST"], ["PUT", "get", "POST "]))
    version = draw(mostly(["HTTP/1.1"], ["HTTP/1.0", "HTTP/2", "http/1.1"]))
    lines = [f"{method} {draw(TARGETS)} {version}"]
    if draw(st.integers(0, 4)):
        lines.append("Host: gateway")
    for _ in range(draw(st.integers(0, 6))):
        separator = draw(mostly([": ", ":"], [" : ", ":\t"]))
        lines.append(f"{draw(NAMES)}{separator}{draw(VALUES)}")
    head = "\r\n".join(lines).encode("utf-8")
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(head)))
        head = head[:at] + draw(NASTY) + head[at:]
    return head


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_heads())
def test_the_door_reads_no_head_differently_from_aiohttp(head: bytes) -> None:
    """Whatever the door takes, aiohttp would take and read the same way."""
    ours = parse_request_head(head, 2**40)
    if ours is None:
        return
    theirs = aiohttp_reads(head)
    assert theirs is not None, head
    assert (ours.method, ours.target) == (theirs.method, theirs.path)
    assert list(ours.headers.items()) == list(theirs.headers.items())
    length = theirs.headers.get("Content-Length")
    assert ours.content_length == (int(length) if length is not None else None)
    assert ours.close == (theirs.should_close and theirs.version == (1, 1))


# -- serving -------------------------------------------------------------------


@pytest.fixture
async def live(
    aiohttp_server: Any, make_settings: Any, db_pool: asyncpg.Pool
) -> AsyncIterator[tuple[LiveGateway, FakeUpstream]]:
    fake = await start_fake(aiohttp_server)
    settings = make_settings(
        upstreams=upstreams_at(fake.base_url),  # type: ignore[attr-defined]
        recorder={"flush_interval_ms": 20},
    )
    async with serving(create_app(settings)) as gateway:
        yield gateway, fake


def plain_request(
    body: dict[str, Any] | None = None,
    *,
    extra: bytes = b"",
    path: bytes = CHAT.encode(),
    version: bytes = b"HTTP/1.1",
) -> bytes:
    data = orjson.dumps(body or chat_body())
    return (
        b"POST " + path + b" " + version + b"\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\n" + extra
        + b"Content-Length: %d\r\n\r\n" % len(data) + data
    )  # fmt: skip


async def read_answer(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], bytes]:
    """One answer off the connection: status, headers (lower-case), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode().split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        assert headers.get("transfer-encoding") == "chunked", headers
        chunks = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            chunks += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
        body = bytes(chunks)
    return int(status_line.split()[1]), headers, body


@contextlib.asynccontextmanager
async def connection(
    gateway: LiveGateway,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_calls_on_one_connection_are_answered_in_turn_by_the_door(
    live: tuple[LiveGateway, FakeUpstream], db_pool: asyncpg.Pool
) -> None:
    gateway, fake = live
    assert gateway.front is not None
    async with connection(gateway) as (reader, writer):
        for stream in (False, True, False):
            writer.write(plain_request(chat_body(stream=stream)))
            status, headers, body = await read_answer(reader)
            assert status == 200
            assert headers["x-request-id"].startswith("tg-")
            assert (b"data: [DONE]" in body) == stream
            assert len(gateway.front.doors) == 1
    assert len(fake.received) == 3
    assert len(await stored_rows(gateway.app, db_pool)) == 3


async def test_pipelined_requests_are_answered_in_order_and_others_hand_over(
    live: tuple[LiveGateway, FakeUpstream], db_pool: asyncpg.Pool
) -> None:
    gateway, fake = live
    assert gateway.front is not None
    async with connection(gateway) as (reader, writer):
        writer.write(
            plain_request(chat_body(user="one"))
            + plain_request(chat_body(stream=True, user="two"))
            + b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
            + plain_request(chat_body(user="three"))
        )
        answers = [await read_answer(reader) for _ in range(4)]
        # The health check was aiohttp's: the connection stayed with it.
        assert gateway.front.doors == set()
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert orjson.loads(answers[2][2])["status"] == "ok"
    assert b"data: [DONE]" in answers[1][2]
    assert [r.json()["user"] for r in fake.received] == ["one", "two", "three"]
    assert len(await stored_rows(gateway.app, db_pool)) == 3


async def test_a_request_sent_byte_by_byte_is_read_whole(
    live: tuple[LiveGateway, FakeUpstream], db_pool: asyncpg.Pool
) -> None:
    gateway, fake = live
    request = plain_request()
    async with connection(gateway) as (reader, writer):
        for i in range(len(request)):
            writer.write(request[i : i + 1])
            await writer.drain()
        status, _, body = await read_answer(reader)
    assert status == 200
    assert fake.received[0].body == orjson.dumps(chat_body())
    assert orjson.loads(body)["usage"]["prompt_tokens"] == fake.prompt_tokens


async def test_connection_close_is_answered_and_the_connection_closed(
    live: tuple[LiveGateway, FakeUpstream],
) -> None:
    gateway, _ = live
    async with connection(gateway) as (reader, writer):
        writer.write(plain_request(extra=b"Connection: close\r\n"))
        status, headers, _ = await read_answer(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert status == 200
    assert headers["connection"] == "close"


async def test_a_head_too_long_for_the_door_is_aiohttps_to_answer(
    live: tuple[LiveGateway, FakeUpstream], db_pool: asyncpg.Pool
) -> None:
    gateway, fake = live
    assert gateway.front is not None
    padding = b"X-Pad: " + b"p" * 60 + b"\r\n"
    extra = padding * (MAX_HEAD_BYTES // len(padding) + 1)
    async with connection(gateway) as (reader, writer):
        writer.write(plain_request(extra=extra))
        status, _, _ = await read_answer(reader)
        assert gateway.front.doors == set()
    # aiohttp read it (every line is short enough for it), the proxy answered.
    assert status == 200
    assert len(fake.received) == 1


async def test_a_head_with_bare_line_feeds_is_aiohttps_to_answer(
    live: tuple[LiveGateway, FakeUpstream],
) -> None:
    """The door reads CRLF heads only; it must not sit on one that ends in LF LF."""
    gateway, fake = live
    assert gateway.front is not None
    request = plain_request().replace(b"\r\n", b"\n")

    async with connection(gateway) as (reader, writer):
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        assert gateway.front.doors == set()

    assert head.startswith(b"HTTP/1.")
    assert fake.received == []


async def test_a_slow_reader_gets_every_byte_of_a_long_stream(
    live: tuple[LiveGateway, FakeUpstream], db_pool: asyncpg.Pool
) -> None:
    gateway, fake = live
    fake.answer = " ".join(f"w{i}" for i in range(20_000))
    async with connection(gateway) as (reader, writer):
        writer.write(plain_request(chat_body(stream=True)))
        # The client reads nothing for a while: the door's writes wait.
        await asyncio.sleep(0.5)
        status, _, body = await read_answer(reader)
    assert status == 200
    words = []
    for line in body.split(b"\n\n"):
        if line.startswith(b"data: {"):
            delta = orjson.loads(line[6:])["choices"][0]["delta"]
            words.append(delta.get("content", ""))
    assert "".join(words).split() == fake.answer.split()
    (row,) = await stored_rows(gateway.app, db_pool)
    assert row["usage_complete"]
    assert row["error"] is None


async def test_an_idle_connection_is_closed_and_a_busy_one_is_not(
    live: tuple[LiveGateway, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway, fake = live
    monkeypatch.setattr(front, "KEEPALIVE_S", 0.3)
    async with connection(gateway) as (reader, writer):
        fake.stall_next(0.8)
        writer.write(plain_request())
        status, _, _ = await read_answer(reader)
        assert status == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_an_upload_slower_than_the_idle_time_is_not_cut(
    live: tuple[LiveGateway, FakeUpstream],
    monkeypatch: pytest.MonkeyPatch,
    db_pool: asyncpg.Pool,
) -> None:
    gateway, fake = live
    monkeypatch.setattr(front, "KEEPALIVE_S", 0.3)
    request = plain_request()
    async with connection(gateway) as (reader, writer):
        writer.write(request[:-10])
        await asyncio.sleep(0.8)
        writer.write(request[-10:])
        status, _, _ = await read_answer(reader)
    assert status == 200
    assert fake.received[0].body == orjson.dumps(chat_body())
    # The call began with its head, as behind aiohttp: the upload is in its time.
    (row,) = await stored_rows(gateway.app, db_pool)
    assert row["response_time_ms"] >= 700


async def test_a_call_refused_before_its_body_arrived_closes_the_connection(
    live: tuple[LiveGateway, FakeUpstream],
) -> None:
    gateway, fake = live
    request = plain_request(extra=b"X-Purpose: " + b"p" * 300 + b"\r\n")
    async with connection(gateway) as (reader, writer):
        writer.write(request[:-10])
        status, headers, body = await read_answer(reader)
        # What is left of the body cannot be told from a next request.
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert status == 400
    assert headers["connection"] == "close"
    assert orjson.loads(body)["error"]["code"] == "invalid_tag_header"
    assert fake.received == []


async def test_a_bug_is_a_500_and_the_connection_goes_on(
    live: tuple[LiveGateway, FakeUpstream],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway, _ = live

    def broken(headers: Any) -> Any:
        raise RuntimeError("a bug in reading tags")

    async with connection(gateway) as (reader, writer):
        with monkeypatch.context() as patch:
            patch.setattr("gateway.proxy.read_tags", broken)
            writer.write(plain_request())
            status, _, body = await read_answer(reader)
        writer.write(plain_request())
        again, _, _ = await read_answer(reader)
    assert status == 500
    assert orjson.loads(body)["error"]["code"] == "internal_error"
    assert again == 200
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "unhandled error on POST /v1/chat/completions"
    ]


# -- the same answers behind either door ----------------------------------------

CASES = {
    "plain": plain_request(),
    "streamed": plain_request(chat_body(stream=True)),
    "bad tag": plain_request(extra=b"X-Purpose: " + b"p" * 300 + b"\r\n"),
    "models": b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n",
    "bracketed query": (
        b"GET /v1/models?include[]=a&q=x|y HTTP/1.1\r\nHost: gateway\r\n\r\n"
    ),
    "prefixed": plain_request(path=b"/deepseek/v1/chat/completions"),
    "upstream error": plain_request(chat_body(user="fail")),
}
# Headers whose values differ from call to call, and Server: aiohttp names
# itself in the answers it builds, the door names nobody.
VARYING = {"date", "x-request-id", "server"}


async def answers_behind(
    door: str, aiohttp_server: Any, make_settings: Any
) -> dict[str, tuple[int, dict[str, str], bytes]]:
    fake = await start_fake(aiohttp_server)
    settings = make_settings(
        upstreams=upstreams_at(fake.base_url),  # type: ignore[attr-defined]
        server={"front_door": door},
    )
    answers = {}
    async with serving(create_app(settings)) as gateway:
        for name, request in CASES.items():
            if name == "upstream error":
                fake.fail_next(429, b'{"error": {"message": "slow down"}}')
            async with connection(gateway) as (reader, writer):
                writer.write(request)
                status, headers, body = await read_answer(reader)
            kept = {k: v for k, v in headers.items() if k not in VARYING}
            answers[name] = (status, kept, body)
    return answers


async def test_both_doors_give_the_same_answers(
    aiohttp_server: Any, make_settings: Any, db_pool: asyncpg.Pool
) -> None:
    ours = await answers_behind("gateway", aiohttp_server, make_settings)
    theirs = await answers_behind("aiohttp", aiohttp_server, make_settings)

    for name in CASES:
        assert ours[name] == theirs[name], name
    assert ours["bad tag"][0] == 400
    assert ours["upstream error"][0] == 429
    assert ours["bracketed query"][0] == 200


def test_a_whole_answer_without_a_type_says_octet_stream() -> None:
    data = front.whole_answer(web.Response(body=b"abc"), close=False)

    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: application/octet-stream" in head
    assert b"Content-Length: 3" in head
    assert body == b"abc"


def test_a_204_has_no_body_and_no_length() -> None:
    data = front.whole_answer(web.Response(status=204, body=b"x"), close=True)

    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Length" not in head
    assert b"Connection: close" in head
    assert body == b""
