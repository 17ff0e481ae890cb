"""
The upstream HTTP/1.1 client: its head parser and chunked decoder, fed bytes
in every split (hypothesis), and its pool against real loopback servers that
send exactly the bytes each test scripts (on asyncio's loop, and the main
paths once more on uvloop, which the gateway serves on).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from gateway import http1
from gateway.http1 import (
    BadResponse,
    CannotConnect,
    ClientError,
    Connection,
    ConnectTimeout,
    Disconnected,
    ForwardProxy,
    InvalidRequestHeader,
    Pool,
    Reply,
    ResponseTimeout,
    chunk_size,
    parse_head,
)
from tests.harness import Handler, LoopbackServers, Server

OK_BODY = b'{"usage":{"prompt_tokens":1}}'


# The head parser


def test_a_head_is_parsed_into_status_headers_and_framing() -> None:
    head = parse_head(
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/event-stream; charset=utf-8\r\n"
        b"Content-Length: 12\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"x-request-id:  req_1 \r\n"
        b"Set-Cookie: a=1\r\n"
        b"Set-Cookie: b=2"
    )

    assert (head.status, head.reason) == (200, "OK")
    assert head.headers == [
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Content-Length", "12"),
        ("Connection", "keep-alive, X-Hop"),
        ("x-request-id", "req_1"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert head.content_type == "text/event-stream"
    assert head.content_length == 12
    assert head.connection == {"keep-alive", "x-hop"}
    assert head.keep_alive
    assert not head.chunked


def test_a_status_line_may_go_without_a_reason() -> None:
    assert parse_head(b"HTTP/1.1 200").reason == ""
    assert parse_head(b"HTTP/1.1 404 ").reason == ""
    assert parse_head(b"HTTP/1.1 200 \xe9t\xe9").reason == "\xe9t\xe9"


def test_keep_alive_follows_the_version_and_connection_header() -> None:
    assert not parse_head(b"HTTP/1.1 200 OK\r\nConnection: close").keep_alive
    assert not parse_head(b"HTTP/1.0 200 OK").keep_alive
    assert parse_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive").keep_alive
    assert parse_head(b"HTTP/1.1 204 No Content").keep_alive


def test_transfer_encoding_decides_between_chunked_and_until_close() -> None:
    chunked = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked")
    other = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip")

    assert (chunked.chunked, chunked.other_encoding) == (True, False)
    assert (other.chunked, other.other_encoding) == (False, True)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/2 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"SSH-2.0-OpenSSH_9.2",
        b"HTTP/1.1 200 OK\r\nNo colon here",
        b"HTTP/1.1 200 OK\r\n: no name",
        b"HTTP/1.1 200 OK\r\nBad Name: x",
        b"HTTP/1.1 200 OK\r\n folded: x",
        b"HTTP/1.1 200 OK\r\nX: a\rb",
        b"HTTP/1.1 200 OK\nX: bare line feed",
        b"HTTP/1.1 200 OK\r\nX: nul \x00 byte",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x10",
    ],
)
def test_a_malformed_head_is_refused(head: bytes) -> None:
    with pytest.raises(BadResponse):
        parse_head(head)


def test_repeated_equal_content_lengths_are_one_length() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7, 7")

    assert head.content_length == 7


TOKEN = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=20,
)
# Field values as upstreams send them: visible characters and spaces; the
# spaces around a value are not part of it.
VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30
).map(str.strip)


@given(
    status=st.integers(200, 599),
    headers=st.lists(st.tuples(TOKEN, VALUE), max_size=12).filter(
        lambda hs: (
            not any(n.lower() in {"content-length", "transfer-encoding"} for n, _ in hs)
        )
    ),
)
def test_any_well_formed_head_parses_back_to_what_was_sent(
    status: int, headers: list[tuple[str, str]]
) -> None:
    lines = [f"HTTP/1.1 {status} Reason Phrase"]
    lines += [f"{name}:  {value} " for name, value in headers]

    head = parse_head("\r\n".join(lines).encode())

    assert head.status == status
    assert head.reason == "Reason Phrase"
    assert head.headers == headers


# The body decoder, fed the way a socket could deliver the bytes


@dataclass
class Sink:
    """Where a hand-fed connection's transport calls land."""

    written: list[bytes] = field(default_factory=list)
    aborted: bool = False
    paused: bool = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def chunked(pieces: list[bytes], extensions: bool, trailers: bool) -> bytes:
    out = b""
    for piece in pieces:
        ext = b";name=value" if extensions else b""
        out += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
    out += b"0\r\n"
    if trailers:
        out += b"X-Trailer: yes\r\n"
    return out + b"\r\n"


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


class ChunkByChunk(Connection):
    """A connection that decodes every chunked read chunk by chunk."""

    def whole_chunks(self, reply: Reply, data: bytes) -> bool:
        return False


class WholeReadsSeen(Connection):
    """A connection that notes whether each read went the whole-chunks way."""

    taken: ClassVar[list[bool]] = []

    def whole_chunks(self, reply: Reply, data: bytes) -> bool:
        taken = super().whole_chunks(reply, data)
        self.taken.append(taken)
        return taken


async def feed(
    data: list[bytes],
    *,
    head_request: bool = False,
    connection: type[Connection] = Connection,
) -> tuple[Reply, Sink]:
    """Run *data* through a connection, read by read; return its reply."""
    pool = Pool(
        "http://127.0.0.1:9/v1", max_connections=1, connect_timeout_s=1, timeout_s=5
    )
    conn = connection(pool)
    sink = Sink()
    conn.connection_made(sink)  # type: ignore[arg-type]
    sending = asyncio.ensure_future(
        conn.send(b"GET / HTTP/1.1\r\n\r\n", head_request=head_request, deadline=1e12)
    )
    await asyncio.sleep(0)
    for piece in data:
        conn.data_received(piece)
    reply = await sending
    return reply, sink


@given(
    pieces=st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    extensions=st.booleans(),
    trailers=st.booleans(),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_a_chunked_body_decodes_the_same_however_the_reads_split(
    pieces: list[bytes], extensions: bool, trailers: bool, cuts: list[int]
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
        pieces, extensions, trailers
    )

    async def run() -> bytes:
        reply, sink = await feed(splits(raw, cuts))
        body = await reply.read()
        assert not sink.aborted
        return body

    assert asyncio.run(run()) == b"".join(pieces)


async def decoded(
    raw: bytes, reads: list[bytes], connection: type[Connection]
) -> tuple[bytes | str, bool, bool]:
    """The body *reads* decode to (or the error), keep-alive, and whether aborted."""
    reply, sink = await feed(reads, connection=connection)
    conn = reply._conn
    if not reply._done:
        # A damaged size can ask for more than was sent: the upstream hangs up.
        conn.connection_lost(None)
    try:
        body: bytes | str = await reply.read()
    except ClientError as exc:
        body = repr(exc)
    return body, conn.keep_alive, sink.aborted


# Chunk data that looks like framing: CRLFs, size lines, a last chunk.
FRAMING_LOOKALIKES = st.lists(
    st.sampled_from([b"\r\n", b"0", b"3", b"abc", b";x", b"\r\n\r\n", b"\n"]),
    min_size=1,
    max_size=6,
).map(b"".join)


@given(
    pieces=st.lists(
        st.one_of(st.binary(min_size=1, max_size=40), FRAMING_LOOKALIKES), max_size=8
    ),
    extensions=st.booleans(),
    trailers=st.booleans(),
    after=st.sampled_from([b"", b"3\r\nabc\r\n", b"HTTP/1.1 200 OK\r\n"]),
    damage=st.one_of(st.none(), st.integers(0, 10_000)),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_whole_chunk_reads_decode_as_chunk_by_chunk_does(
    pieces: list[bytes],
    extensions: bool,
    trailers: bool,
    after: bytes,
    damage: int | None,
    cuts: list[int],
) -> None:
    body = chunked(pieces, extensions, trailers) + after
    if damage is not None:
        # One byte changed anywhere: a size, a CRLF, the data or the end.
        at = damage % len(body)
        body = body[:at] + bytes([body[at] ^ 0x41]) + body[at + 1 :]
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    reads = splits(raw, cuts)

    async def run() -> None:
        # Decoded once first, so that every size line is one already seen.
        await decoded(raw, reads, Connection)
        assert await decoded(raw, reads, Connection) == await decoded(
            raw, reads, ChunkByChunk
        )

    asyncio.run(run())


async def test_a_stream_read_whole_is_decoded_in_one_pass() -> None:
    events = [b'data: {"n":%d}\n\n' % n for n in range(12)] + [b"data: [DONE]\n\n"]
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
        events, extensions=False, trailers=False
    )
    await feed([raw])  # the size lines, seen once
    WholeReadsSeen.taken = []

    reply, _ = await feed([raw], connection=WholeReadsSeen)

    assert await reply.read() == b"".join(events)
    assert WholeReadsSeen.taken == [True]


@given(body=st.binary(max_size=200), cuts=st.lists(st.integers(0, 1000), max_size=8))
def test_a_sized_body_decodes_the_same_however_the_reads_split(
    body: bytes, cuts: list[int]
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def run() -> bytes:
        reply, _ = await feed(splits(raw, cuts))
        return await reply.read()

    assert asyncio.run(run()) == body


@given(
    size=st.integers(0, 2**64 - 1),
    upper=st.booleans(),
    extension=st.sampled_from([b"", b";name=value", b" \t;x"]),
)
def test_a_chunk_line_read_again_gives_the_size_it_gave_first(
    size: int, upper: bool, extension: bytes
) -> None:
    digits = (b"%X" if upper else b"%x") % size
    line = digits + extension

    assert chunk_size(line) == chunk_size(bytes(line)) == size


@pytest.mark.parametrize("line", [b"zz", b"0x2", b" 2", b"1_0", b"+2", b""])
def test_a_bad_chunk_line_is_refused_every_time_it_comes(line: bytes) -> None:
    for _ in range(3):
        with pytest.raises(BadResponse):
            chunk_size(line)
    assert line not in http1._CHUNK_SIZES


def test_a_long_chunk_line_is_read_but_not_remembered() -> None:
    line = b"1f;" + b"x" * http1.MAX_CACHED_CHUNK_LINE_BYTES

    assert chunk_size(line) == 31
    assert line not in http1._CHUNK_SIZES


def test_the_chunk_lines_remembered_stop_at_their_bound() -> None:
    for size in range(http1.MAX_CACHED_CHUNK_LINES + 50):
        assert chunk_size(b"%x;n=%d" % (size, size)) == size

    assert len(http1._CHUNK_SIZES) == http1.MAX_CACHED_CHUNK_LINES


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nab\r\n0\r\n\r\n",
        b"-1\r\nab\r\n0\r\n\r\n",
        b"+2\r\nab\r\n0\r\n\r\n",
        b"2\r\nabXY0\r\n\r\n",
        b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n",
        b"0x2\r\nab\r\n0\r\n\r\n",
        b" 2\r\nab\r\n0\r\n\r\n",
        b"f" * 5000,
    ],
)
async def test_a_broken_chunked_body_fails_the_reply(body: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    reply, sink = await feed([raw])

    with pytest.raises(BadResponse):
        await reply.read()
    assert sink.aborted


async def test_unread_stream_bytes_pause_the_upstream_until_read() -> None:
    big = b"x" * (300 * 1024)
    reply, sink = await feed(
        [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * len(big)), big]
    )

    assert sink.paused
    assert await reply.readany() == big
    assert not sink.paused


# The pool, against real servers


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read one request (head and Content-Length body) and return its bytes."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def answering(*answers: bytes, server: list[Server] | None = None) -> Handler:
    """A handler that answers each request on a connection with the next bytes."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        for answer in answers:
            request = await read_request(reader)
            if server:
                server[0].requests.append(request)
            writer.write(answer)
            await writer.drain()
        # Then hold the connection open until the client closes it.
        await reader.read()

    return handle


async def never_answering(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A handler that takes the request and never says a word."""
    await reader.read()


def ok(body: bytes = OK_BODY, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


def pool_at(
    base: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    proxy: ForwardProxy | None = None,
    **options: float,
) -> Pool:
    """A pool for *base* (no /v1) with the tests' defaults, *options* over them."""
    settings = {"max_connections": 4, "connect_timeout_s": 2.0, "timeout_s": 5.0}
    settings.update(options)
    return Pool(
        f"{base}/v1",
        max_connections=int(settings["max_connections"]),
        connect_timeout_s=settings["connect_timeout_s"],
        timeout_s=settings["timeout_s"],
        ssl_context=ssl_context,
        proxy=proxy,
    )


def pool_for(server: Server, **options: float) -> Pool:
    return pool_at(f"http://127.0.0.1:{server.port}", **options)


def url(server: Server, path: str = "/v1/chat/completions") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def call(pool: Pool, server: Server, method: str = "POST") -> bytes:
    reply = await pool.request(method, url(server), [], b"{}")
    try:
        return await reply.read()
    finally:
        reply.release()


async def test_the_request_goes_out_as_given_in_one_piece(serve: Callable) -> None:
    box: list[Server] = []
    server = await serve(answering(ok(), server=box))
    box.append(server)
    pool = pool_for(server)

    reply = await pool.request(
        "POST",
        url(server, "/v1/chat/completions?api-version=1"),
        [("Content-Type", "application/json"), ("X-Note", "caf\udcc3\udca9")],
        b'{"model":"m"}',
    )
    await reply.read()
    reply.release()

    assert server.requests == [
        b"POST /v1/chat/completions?api-version=1 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\n"
        b"X-Note: caf\xc3\xa9\r\n"
        b"Content-Length: 13\r\n\r\n"
        b'{"model":"m"}' % server.port
    ]


async def test_keep_alive_connections_carry_one_call_after_another(
    serve: Callable,
) -> None:
    server = await serve(answering(ok(), ok(b"second"), ok(b"third")))
    pool = pool_for(server)

    bodies = [await call(pool, server) for _ in range(3)]

    assert bodies == [OK_BODY, b"second", b"third"]
    assert server.connections == 1


async def test_connection_close_means_a_new_connection_next_time(
    serve: Callable,
) -> None:
    server = await serve(answering(ok(extra=b"Connection: close\r\n")))
    pool = pool_for(server)

    await call(pool, server)
    await call(pool, server)

    assert server.connections == 2


async def test_an_answer_without_length_is_read_until_the_upstream_closes(
    serve: Callable,
) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()

    server = await serve(handle)
    pool = pool_for(server)

    assert await call(pool, server) == b"all of it"
    await call(pool, server)
    assert server.connections == 2


async def test_a_stream_arrives_event_by_event(serve: Callable) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for n in range(3):
            event = b"data: %d\n\n" % n
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await read_request(reader)
        writer.write(ok())
        await reader.read()

    server = await serve(handle)
    pool = pool_for(server)

    reply = await pool.request("POST", url(server), [], b"{}")
    reads = []
    while data := await reply.readany():
        reads.append(data)
    reply.release()

    assert reply.content_type == "text/event-stream"
    assert reads == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    await call(pool, server)  # the connection was clean: it serves again
    assert server.connections == 1


async def test_interim_answers_are_skipped(serve: Callable) -> None:
    server = await serve(
        answering(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n" + ok()
        )
    )
    pool = pool_for(server)

    assert await call(pool, server) == OK_BODY


async def test_head_and_no_content_answers_have_no_body(serve: Callable) -> None:
    server = await serve(
        answering(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            ok(),
        )
    )
    pool = pool_for(server)

    assert await call(pool, server, "HEAD") == b""
    assert await call(pool, server, "DELETE") == b""
    assert await call(pool, server) == OK_BODY
    assert server.connections == 1


async def test_bytes_past_the_answer_retire_the_connection(serve: Callable) -> None:
    server = await serve(answering(ok() + b"HTTP/1.1 200 OK\r\n", ok()))
    pool = pool_for(server)

    assert await call(pool, server) == OK_BODY
    await call(pool, server)
    assert server.connections == 2


async def test_a_cut_body_gives_its_bytes_then_fails(serve: Callable) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)

    server = await serve(handle)
    pool = pool_for(server)

    reply = await pool.request("POST", url(server), [], b"{}")
    assert await reply.readany() == b"partial"
    with pytest.raises(Disconnected):
        await reply.readany()
    reply.release()


async def test_a_close_before_the_head_is_a_disconnect(serve: Callable) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)

    server = await serve(handle)
    pool = pool_for(server)

    with pytest.raises(Disconnected):
        await pool.request("POST", url(server), [], b"{}")
    await asyncio.sleep(0.05)
    assert pool.open_count == 0


async def test_garbage_instead_of_http_is_a_bad_response(serve: Callable) -> None:
    server = await serve(answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    pool = pool_for(server)

    with pytest.raises(BadResponse):
        await pool.request("POST", url(server), [], b"{}")


async def test_an_endless_head_is_refused(serve: Callable) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(100):
            writer.write(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        await writer.drain()
        await reader.read()

    server = await serve(handle)
    pool = pool_for(server)

    with pytest.raises(BadResponse, match="too large"):
        await pool.request("POST", url(server), [], b"{}")


async def test_a_refused_connection_was_never_sent(unused_tcp_port: int) -> None:
    pool = Pool(
        f"http://127.0.0.1:{unused_tcp_port}/v1",
        max_connections=2,
        connect_timeout_s=2,
        timeout_s=5,
    )

    with pytest.raises(CannotConnect) as caught:
        await pool.request("POST", f"http://127.0.0.1:{unused_tcp_port}/v1/x", [], b"")
    assert not isinstance(caught.value, TimeoutError)
    assert pool.open_count == 0


async def test_a_connect_past_its_deadline_is_a_connect_timeout(
    serve: Callable,
) -> None:
    server = await serve(answering(ok()))
    pool = pool_for(server, connect_timeout_s=1e-9)

    with pytest.raises(ConnectTimeout):
        await pool.request("POST", url(server), [], b"{}")
    assert pool.open_count == 0


async def test_an_upstream_that_never_answers_times_out(serve: Callable) -> None:
    server = await serve(never_answering)
    pool = pool_for(server, timeout_s=0.2)

    with pytest.raises(ResponseTimeout):
        await pool.request("POST", url(server), [], b"{}")


async def test_a_stream_that_keeps_talking_outlives_the_timeout(
    serve: Callable,
) -> None:
    """The limit is on the upstream's silence, as the openai client's is."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for n in range(6):
            await asyncio.sleep(0.1)
            writer.write(b"1\r\n%d\r\n" % n)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await reader.read()

    server = await serve(handle)
    pool = pool_for(server, timeout_s=0.25)

    reply = await pool.request("POST", url(server), [], b"{}")
    body = await reply.read()
    reply.release()

    assert body == b"012345"


async def test_a_reader_that_pauses_the_upstream_is_not_its_silence(
    serve: Callable,
) -> None:
    big = b"x" * (300 * 1024)

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (3 * len(big)))
        writer.write(big * 3)
        await writer.drain()
        await reader.read()

    server = await serve(handle)
    pool = pool_for(server, timeout_s=0.2)

    reply = await pool.request("POST", url(server), [], b"{}")
    await asyncio.sleep(0.5)
    body = await reply.read()
    reply.release()

    assert body == big * 3


async def test_a_stream_silent_past_the_timeout_times_out(serve: Callable) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        await writer.drain()
        await reader.read()

    server = await serve(handle)
    pool = pool_for(server, timeout_s=0.3)

    reply = await pool.request("POST", url(server), [], b"{}")
    assert await reply.readany() == b"abc"
    with pytest.raises(ResponseTimeout):
        await reply.readany()
    reply.release()


async def test_calls_past_max_connections_wait_for_one_to_come_free(
    serve: Callable,
) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(ok())
            await writer.drain()

    server = await serve(handle)
    pool = pool_for(server, max_connections=1)

    bodies = await asyncio.gather(*(call(pool, server) for _ in range(4)))

    assert bodies == [OK_BODY] * 4
    assert server.connections == 1
    assert pool.open_count == 1


async def test_waiting_for_a_connection_counts_against_the_deadline(
    serve: Callable,
) -> None:
    server = await serve(answering(ok(), ok(b"after")))
    pool = pool_for(server, max_connections=1, timeout_s=0.2)
    # Read whole but not released: the only connection stays taken.
    held = await pool.request("POST", url(server), [], b"{}")
    await held.read()

    with pytest.raises(ResponseTimeout, match="came free"):
        await pool.request("POST", url(server), [], b"{}")
    held.release()
    assert await call(pool, server) == b"after"
    assert server.connections == 1


async def test_a_cancelled_call_drops_its_connection(serve: Callable) -> None:
    server = await serve(never_answering)
    pool = pool_for(server, max_connections=1)
    task = asyncio.ensure_future(pool.request("POST", url(server), [], b"{}"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)

    assert pool.open_count == 0
    assert pool.idle == []


async def test_a_connection_the_upstream_closed_while_idle_is_not_reused(
    serve: Callable,
) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(ok())
        await writer.drain()
        # Keep-alive promised, then the server drops the idle connection.

    server = await serve(handle)
    pool = pool_for(server)

    await call(pool, server)
    await asyncio.sleep(0.05)
    assert await call(pool, server) == OK_BODY
    assert server.connections == 2


async def test_a_header_with_a_line_break_is_never_sent(serve: Callable) -> None:
    server = await serve(answering(ok()))
    pool = pool_for(server)

    with pytest.raises(InvalidRequestHeader):
        await pool.request(
            "POST", url(server), [("Authorization", "Bearer sk\r\nX-Evil: 1")], b""
        )
    assert server.connections == 0


async def test_a_url_off_the_pools_origin_is_refused(serve: Callable) -> None:
    server = await serve(answering(ok()))
    pool = pool_for(server)

    with pytest.raises(ValueError, match="is not on"):
        await pool.request("GET", "http://elsewhere.example/v1/models", [], b"")


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_upstreams_are_spoken_to_over_tls(
    serve: Callable, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server = await serve(answering(ok(), ok(b"again")), ssl_context=server_side)
    trusting = ssl.create_default_context(cafile=str(cert))
    base = f"https://127.0.0.1:{server.port}"
    pool = Pool(
        f"{base}/v1",
        max_connections=2,
        connect_timeout_s=5,
        timeout_s=5,
        ssl_context=trusting,
    )

    for expected in (OK_BODY, b"again"):
        reply = await pool.request("POST", f"{base}/v1/chat/completions", [], b"{}")
        assert await reply.read() == expected
        reply.release()
    assert server.connections == 1
    pool.close()


async def test_an_untrusted_certificate_is_refused(
    serve: Callable, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server = await serve(answering(ok()), ssl_context=server_side)
    base = f"https://127.0.0.1:{server.port}"
    pool = Pool(f"{base}/v1", max_connections=2, connect_timeout_s=5, timeout_s=5)

    with pytest.raises(CannotConnect):
        await pool.request("POST", f"{base}/v1/chat/completions", [], b"{}")


def test_the_pool_works_the_same_on_uvloop() -> None:
    """Keep-alive, a chunked stream, a cut and a deadline, on uvloop's loop."""
    answers = {
        b"ok": ok(),
        b"chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        b"cut": b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ncut",
    }

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # The body names the answer; "stall" gets none, "cut" a closed connection.
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                request = await read_request(reader)
                body = request.partition(b"\r\n\r\n")[2]
                if body == b"stall":
                    await reader.read()
                    break
                writer.write(answers[body])
                await writer.drain()
                if body == b"cut":
                    break
        writer.close()

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = f"http://127.0.0.1:{port}/v1/x"
        pool = Pool(
            f"http://127.0.0.1:{port}/v1",
            max_connections=1,
            connect_timeout_s=2,
            timeout_s=0.5,
        )

        async def send(body: bytes) -> Reply:
            return await pool.request("POST", target, [], body)

        reply = await send(b"ok")
        assert await reply.read() == OK_BODY
        reply.release()
        reply = await send(b"chunked")
        assert await reply.readany() == b"hello"
        assert await reply.readany() == b""
        reply.release()
        reply = await send(b"cut")
        with pytest.raises(Disconnected):
            await reply.read()
        reply.release()
        with pytest.raises(ResponseTimeout):
            await send(b"stall")
        reply = await send(b"ok")
        assert await reply.read() == OK_BODY
        reply.release()
        pool.close()
        server.close()

    uvloop.run(run())


# Through an HTTP proxy


@dataclass
class FakeProxy:
    """What a loopback HTTP proxy was asked: every request head, as sent."""

    port: int = 0
    heads: list[bytes] = field(default_factory=list)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def start_proxy(
    serve: Callable[..., Awaitable[Server]], required: str | None = None
) -> FakeProxy:
    """
    A proxy that tunnels CONNECT and forwards absolute-form requests (one
    origin per connection), refusing with 407 a client that does not send
    ``Proxy-Authorization: <required>``.
    """
    proxy = FakeProxy()

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        proxy.heads.append(head)
        request_line, *lines = head[:-4].decode().split("\r\n")
        method, target, _ = request_line.split(" ")
        sent = [line.partition(":")[2].strip() for line in lines]
        if required is not None and f"{required}" not in sent:
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b"Content-Length: 6\r\n\r\ndenied"
            )
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            origin = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(
                origin.hostname, origin.port
            )
            kept = [line for line in lines if not line.lower().startswith("proxy-")]
            line = f"{method} {origin.path} HTTP/1.1"
            up_writer.write("\r\n".join([line, *kept, "", ""]).encode())
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy.port = (await serve(handle)).port
    return proxy


BOB = "Basic " + base64.b64encode(b"bob:s@cret").decode()


def bobs_proxy(proxy: FakeProxy, password: str = "s%40cret") -> ForwardProxy:
    return ForwardProxy.from_url(f"http://bob:{password}@127.0.0.1:{proxy.port}")


def tls_contexts(certificate: tuple[Path, Path]) -> tuple[ssl.SSLContext, ...]:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    return server_side, ssl.create_default_context(cafile=str(cert))


async def recording(
    serve: Callable[..., Awaitable[Server]],
    *answers: bytes,
    context: ssl.SSLContext | None = None,
) -> Server:
    """A server answering *answers* in turn that keeps the requests it read."""
    seen: list[Server] = []
    server = await serve(answering(*answers, server=seen), context)
    seen.append(server)
    return server


async def tunnelled_calls(
    serve: Callable[..., Awaitable[Server]], certificate: tuple[Path, Path]
) -> None:
    """Two calls to an https upstream through one tunnel of an asking proxy."""
    server_side, trusting = tls_contexts(certificate)
    server = await recording(serve, ok(), ok(b"again"), context=server_side)
    proxy = await start_proxy(serve, required=BOB)
    base = f"https://127.0.0.1:{server.port}"
    pool = pool_at(
        base, ssl_context=trusting, proxy=bobs_proxy(proxy), max_connections=2
    )

    for expected in (OK_BODY, b"again"):
        reply = await pool.request("POST", f"{base}/v1/chat/completions", [], b"{}")
        assert await reply.read() == expected
        reply.release()
    pool.close()

    assert proxy.heads == [
        f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Proxy-Authorization: {BOB}\r\n\r\n".encode()
    ]
    assert server.connections == 1
    # Inside the tunnel the upstream is asked as if straight, with no credentials.
    assert all(
        r.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") for r in server.requests
    )
    assert not any(b"Proxy-Authorization" in r for r in server.requests)


async def test_an_https_upstream_is_reached_through_a_proxy_tunnel(
    serve: Callable, certificate: tuple[Path, Path]
) -> None:
    await tunnelled_calls(serve, certificate)


def test_a_proxy_tunnel_works_the_same_on_uvloop(
    certificate: tuple[Path, Path],
) -> None:
    async def run() -> None:
        servers = LoopbackServers()
        await tunnelled_calls(servers.start, certificate)
        # The closed pool's tunnel winds down through the proxy's pipes.
        await asyncio.sleep(0.2)
        await servers.close()

    uvloop.run(run())


async def test_an_http_upstream_is_asked_in_absolute_form_through_a_proxy(
    serve: Callable,
) -> None:
    server = await recording(serve, ok(), ok(b"again"))
    proxy = await start_proxy(serve, required=BOB)
    base = f"http://127.0.0.1:{server.port}"
    pool = pool_at(base, proxy=bobs_proxy(proxy))

    for expected in (OK_BODY, b"again"):
        reply = await pool.request(
            "POST", f"{base}/v1/chat/completions", [("X-A", "1")], b"{}"
        )
        assert await reply.read() == expected
        reply.release()
    pool.close()

    [head] = proxy.heads
    assert (
        head
        == (
            f"POST {base}/v1/chat/completions HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n"
            f"Proxy-Authorization: {BOB}\r\n"
            "X-A: 1\r\nContent-Length: 2\r\n\r\n"
        ).encode()
    )
    assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert len(server.requests) == 2


async def test_a_proxy_that_refuses_the_tunnel_means_nothing_was_sent(
    serve: Callable, certificate: tuple[Path, Path]
) -> None:
    server_side, trusting = tls_contexts(certificate)
    server = await serve(answering(ok()), server_side)
    proxy = await start_proxy(serve, required=BOB)
    base = f"https://127.0.0.1:{server.port}"
    pool = pool_at(
        base,
        ssl_context=trusting,
        proxy=bobs_proxy(proxy, password="wrong-password"),
    )

    with pytest.raises(CannotConnect) as refused:
        await pool.request("POST", f"{base}/v1/chat/completions", [], b"{}")

    message = str(refused.value)
    assert message == (
        f"127.0.0.1:{server.port} by way of proxy 127.0.0.1:{proxy.port}: "
        "the proxy refused the tunnel: 407 Proxy Authentication Required"
    )
    assert "wrong-password" not in message
    assert server.connections == 0
    assert pool.open_count == 0


async def test_an_untrusted_certificate_inside_a_tunnel_is_refused(
    serve: Callable, certificate: tuple[Path, Path]
) -> None:
    server_side, _ = tls_contexts(certificate)
    server = await recording(serve, ok(), context=server_side)
    proxy = await start_proxy(serve)
    base = f"https://127.0.0.1:{server.port}"
    pool = pool_at(base, proxy=ForwardProxy.from_url(f"http://127.0.0.1:{proxy.port}"))

    with pytest.raises(CannotConnect, match="CERTIFICATE_VERIFY_FAILED"):
        await pool.request("POST", f"{base}/v1/chat/completions", [], b"{}")

    # The tunnel reached the upstream; the handshake failed before a request.
    assert len(proxy.heads) == 1
    assert server.requests == []
    assert pool.open_count == 0


async def test_a_proxy_that_never_answers_connect_times_out(
    serve: Callable,
) -> None:
    silent = await serve(never_answering)
    pool = pool_at(
        "https://api.example.invalid",
        proxy=ForwardProxy.from_url(f"http://127.0.0.1:{silent.port}"),
        connect_timeout_s=0.3,
    )

    with pytest.raises(ConnectTimeout, match="by way of proxy"):
        await pool.request("POST", "https://api.example.invalid/v1/x", [], b"{}")

    assert pool.open_count == 0


async def test_a_proxy_that_is_not_there_cannot_connect(
    serve: Callable,
) -> None:
    server = await serve(answering(ok()))
    base = f"http://127.0.0.1:{server.port}"
    pool = pool_at(base, proxy=ForwardProxy.from_url("http://127.0.0.1:9"))

    with pytest.raises(CannotConnect, match=r"by way of proxy 127\.0\.0\.1:9:"):
        await pool.request("GET", f"http://127.0.0.1:{server.port}/v1/models", [])

    assert server.connections == 0


@pytest.mark.parametrize(
    ("url", "proxy"),
    [
        ("http://proxy.internal:3128", ForwardProxy("proxy.internal", 3128)),
        ("http://10.1.2.3", ForwardProxy("10.1.2.3", 80)),
        ("http://[::1]:8080/", ForwardProxy("::1", 8080)),
        ("http://bob:s%40cret@p:1", ForwardProxy("p", 1, BOB)),
        (
            "http://bob@p:1",
            ForwardProxy("p", 1, "Basic " + base64.b64encode(b"bob:").decode()),
        ),
    ],
)
def test_a_proxy_url_gives_the_proxy_and_its_credentials(
    url: str, proxy: ForwardProxy
) -> None:
    assert ForwardProxy.from_url(url) == proxy


@pytest.mark.parametrize(
    "url",
    [
        "https://bob:hunter2@p:1",
        "socks5://bob:hunter2@p:1",
        "http://bob:hunter2@:1",
        "http://bob:hunter2@p:1/path",
        "http://bob:hunter2@p:99999",
        "bob:hunter2@p:1",
    ],
)
def test_a_bad_proxy_url_is_refused_without_repeating_it(url: str) -> None:
    with pytest.raises(ValueError, match="proxy URL") as refused:
        ForwardProxy.from_url(url)

    assert "hunter2" not in str(refused.value)
