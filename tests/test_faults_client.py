"""
The client misbehaves: leaves mid-upload or mid-answer, uploads slowly, or
comes three hundred at once. Each test checks the rows stored afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from gateway.app import create_app
from tests.fake_upstream import FakeUpstream
from tests.harness import (
    BOTH_FRONT_DOORS,
    CHAT,
    LiveGateway,
    chat_body,
    rows_when,
    serving,
    start_fake,
    status_of,
    stored_rows,
    upstreams_at,
)
from tests.test_recorder import assert_rollup_matches_rows, wait_until

FRONT_DOORS = BOTH_FRONT_DOORS

CONCURRENT_CALLS = 300


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeUpstream:
    return await start_fake(aiohttp_server)


@pytest.fixture
async def client(
    make_settings: Any, db_pool: asyncpg.Pool, fake: FakeUpstream
) -> AsyncIterator[LiveGateway]:
    base = fake.base_url  # type: ignore[attr-defined]
    # A pool smaller than the load below: calls queue for a connection, and
    # the test stays well inside a 1024 open-file limit.
    settings = make_settings(upstreams=upstreams_at(base, max_connections=64))
    async with serving(create_app(settings)) as live:
        yield live


def request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(pieces: list[bytes]) -> list[bytes]:
    """The pieces as HTTP/1.1 chunks, with the last, empty one."""
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


async def answer_still_comes(client: LiveGateway) -> None:
    resp = await client.session.post(
        client.url(CHAT), json=chat_body(), headers={"X-Request-Id": "after"}
    )
    assert resp.status == 200
    assert (await resp.json())["usage"]["total_tokens"] == 26


async def leave_mid_upload(client: LiveGateway, framing: str) -> None:
    """Send the head and a third of a body, then hang up."""
    body = orjson.dumps(chat_body(stream=True)) + b" " * 1000
    headers = {"Content-Type": "application/json", "X-Request-Id": "half"}
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        sent = b"".join(chunked([body[:300]])[:-1])
    else:
        headers["Content-Length"] = str(len(body))
        sent = body[:300]
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(request_head(CHAT, headers) + sent)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_client_leaving_mid_upload_reaches_no_upstream(
    client: LiveGateway, fake: FakeUpstream, db_pool: asyncpg.Pool, framing: str
) -> None:
    await leave_mid_upload(client, framing)
    await answer_still_comes(client)

    assert [r.headers["X-Request-Id"] for r in fake.received] == ["after"]
    rows = await stored_rows(client.app, db_pool)
    assert [r["request_id"] for r in rows] == ["after"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_client_leaving_mid_upload_is_not_logged_as_an_error(
    client: LiveGateway, caplog: pytest.LogCaptureFixture, framing: str
) -> None:
    caplog.set_level(logging.WARNING)

    await leave_mid_upload(client, framing)
    await answer_still_comes(client)
    # Let the abandoned handler finish, whatever it logs.
    await asyncio.sleep(0.1)

    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_leaving_mid_stream_leaves_exactly_one_row(
    client: LiveGateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    fake.answer = " ".join(["word"] * 100)
    fake.event_delay_s = 0.002
    release = fake.hold_next(after_events=2)

    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.url(CHAT), json=chat_body(stream=True))
        await resp.content.readuntil(b"\n\n")
        resp.close()
    # The upstream goes on; the gateway finds the client gone at its next write.
    release.set()
    await wait_until(lambda: fake.open_streams == 0, "the upstream stream to end")
    await rows_when(client, db_pool, 1)
    # Long enough for a second row, were one ever written.
    await asyncio.sleep(0.2)
    rows = await stored_rows(client.app, db_pool)

    (row,) = rows
    assert row["error"] == "client_disconnected"
    assert not row["usage_complete"]
    assert row["usage_estimated"]
    assert row["input_tokens"] > 0
    assert 2 <= row["output_tokens"] < 100


async def test_a_client_leaving_before_a_whole_answer_is_billed_what_upstream_did(
    client: LiveGateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    """The upstream did the work, so its reported usage is the row's."""
    fake.stall_next(0.3)

    async with aiohttp.ClientSession() as session:
        call = asyncio.ensure_future(session.post(client.url(CHAT), json=chat_body()))
        await wait_until(lambda: len(fake.received) == 1, "the call to go upstream")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    rows = await rows_when(client, db_pool, 1)
    await answer_still_comes(client)
    rows = await stored_rows(client.app, db_pool)

    first, after = sorted(rows, key=lambda r: r["request_id"] == "after")
    assert after["request_id"] == "after"
    assert (first["status"], first["error"]) == (200, None)
    assert (first["input_tokens"], first["output_tokens"]) == (21, 5)
    assert first["usage_complete"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_slow_upload_is_forwarded_whole(
    client: LiveGateway, fake: FakeUpstream, db_pool: asyncpg.Pool, framing: str
) -> None:
    body = orjson.dumps(chat_body(user="u" * 3000))
    pieces = [body[i : i + 128] for i in range(0, len(body), 128)]
    headers = {"Content-Type": "application/json", "Connection": "close"}
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        pieces = chunked(pieces)
    else:
        headers["Content-Length"] = str(len(body))

    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(request_head(CHAT, headers))
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.005)
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()

    assert status_of(answer) == 200
    assert fake.received[-1].body == body
    (row,) = await stored_rows(client.app, db_pool)
    assert (row["input_tokens"], row["output_tokens"], row["error"]) == (21, 5, None)


async def test_three_hundred_concurrent_calls_are_all_answered_and_counted(
    client: LiveGateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    async def call(session: aiohttp.ClientSession, number: int) -> int:
        headers = {"X-Request-Id": f"load-{number:03d}", "X-Purpose": "load"}
        body = chat_body(stream=number % 2 == 0)
        async with session.post(client.url(CHAT), json=body, headers=headers) as r:
            await r.read()
            return r.status

    connector = aiohttp.TCPConnector(limit=CONCURRENT_CALLS)
    async with aiohttp.ClientSession(connector=connector) as session:
        statuses = await asyncio.gather(
            *(call(session, n) for n in range(CONCURRENT_CALLS))
        )
    rows = await stored_rows(client.app, db_pool)
    summary = await client.session.get(
        client.url("/api/token-usage"), params={"purpose": "load"}
    )

    assert statuses == [200] * CONCURRENT_CALLS
    assert sorted(r["request_id"] for r in rows) == [
        f"load-{n:03d}" for n in range(CONCURRENT_CALLS)
    ]
    assert all(r["usage_complete"] and r["error"] is None for r in rows)
    assert sum(r["total_tokens"] for r in rows) == CONCURRENT_CALLS * 26
    totals = await summary.json()
    assert totals["api_calls_count"] == CONCURRENT_CALLS
    assert totals["total_tokens"] == CONCURRENT_CALLS * 26
    assert totals["breakdown_by_purpose"]["load"]["calls"] == CONCURRENT_CALLS
    await assert_rollup_matches_rows(db_pool)
