"""
Hostile or broken requests: oversized, malformed, odd headers, path tricks.

Requests that no client library would send go over a raw socket. Besides
the configured fake upstream, a second "forbidden" fake listens on another
port: nothing may ever reach it, and nothing may reach the configured one
outside its ``/v1`` base path.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
)
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.keys import METRICS
from gateway.tags import MAX_TAGS, MAX_VALUE_CHARS
from tests.fake_upstream import FakeUpstream
from tests.harness import (
    BOTH_FRONT_DOORS,
    CHAT,
    body_of,
    chat_body,
    send_raw,
    start_fake,
    status_of,
    stored_rows,
    upstreams_at,
)

FRONT_DOORS = BOTH_FRONT_DOORS

Gateway = Callable[..., Awaitable[TestClient]]
BODY = orjson.dumps(chat_body())


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeUpstream:
    return await start_fake(aiohttp_server)


@pytest.fixture
async def forbidden(aiohttp_server: Any) -> FakeUpstream:
    """A server no request through the gateway may ever reach."""
    return await start_fake(aiohttp_server)


@pytest.fixture
def gateway(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool, fake: FakeUpstream
) -> Gateway:
    async def start(**server: Any) -> TestClient:
        base = fake.base_url  # type: ignore[attr-defined]
        settings = make_settings(server=server, upstreams=upstreams_at(base))
        return await aiohttp_client(create_app(settings))

    return start


def host_of(upstream: FakeUpstream) -> str:
    """``host:port`` of a fake upstream."""
    return upstream.base_url.split("/")[2]  # type: ignore[attr-defined]


async def raw_post(
    client: TestClient,
    target: str | bytes,
    headers: list[bytes] = (),  # type: ignore[assignment]
    body: bytes = BODY,
    method: bytes = b"POST",
) -> bytes:
    """POST *body* to *target* with extra raw header lines; return the answer."""
    if isinstance(target, str):
        target = target.encode()
    head = [
        method + b" " + target + b" HTTP/1.1",
        b"Host: gateway",
        b"Connection: close",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        *headers,
    ]
    return await send_raw(
        client.host, client.port, b"\r\n".join(head) + b"\r\n\r\n" + body
    )


async def assert_still_serving(client: TestClient) -> None:
    resp = await client.post(CHAT, json=chat_body())
    assert resp.status == 200


# -- bodies -------------------------------------------------------------------


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("path", [CHAT, "/v1/files"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_over_the_limit_is_413_and_reaches_no_upstream(
    gateway: Gateway,
    fake: FakeUpstream,
    db_pool: asyncpg.Pool,
    path: str,
    framing: str,
) -> None:
    client = await gateway(max_body_bytes=4096)
    body = orjson.dumps(chat_body(user="x" * 10_000))
    data: Any = body if framing == "content-length" else chunks_of(body, 1000)

    resp = await client.post(
        path, data=data, headers={"Content-Type": "application/json"}
    )

    assert resp.status == 413
    error = (await resp.json())["error"]
    assert (error["type"], error["code"]) == (
        "invalid_request_error",
        "request_too_large",
    )
    assert "4096" in error["message"]
    assert fake.received == []
    assert await stored_rows(client.server.app, db_pool) == []
    await assert_still_serving(client)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[1, 2]",
        b"null",
        b'"a string"',
        b"\xff\xfe\x00garbage",
        b'{"model": 5, "messages": []}',
        b'{"model": "gpt-4o-mini", "stream": "yes"}',
        b'{"model": "gpt-4o-mini", "stream": true, "stream_options": null}',
        b'{"model": "gpt-4o-mini", "stream": true, '
        b'"stream_options": {"include_usage": "no"}}',
        b'{"model": "' + b"m" * 5000 + b'"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"model": "gpt-4o-mini", "n": 1e999999}',
    ],
    ids=lambda body: body[:24].decode("latin-1"),
)
async def test_broken_json_is_forwarded_and_recorded_never_our_500(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool, body: bytes
) -> None:
    client = await gateway()

    answer = await raw_post(client, CHAT, body=body)

    status = status_of(answer)
    assert status < 500, answer[:300]
    assert b"internal_error" not in body_of(answer)
    (sent,) = fake.received
    if b'"stream": true' not in body:
        # Forwarded exactly as sent: the upstream judges it, not the gateway.
        assert sent.body == body
    (row,) = await stored_rows(client.server.app, db_pool)
    assert row["status"] == status
    assert row["endpoint"] == CHAT


# -- headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"X-Huge: " + b"h" * 65536, b"X-" + b"n" * 65536 + b": v"],
    ids=["huge-value", "huge-name"],
)
async def test_an_absurd_header_is_refused_by_the_server_and_it_stays_up(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool, line: bytes
) -> None:
    client = await gateway()

    answer = await raw_post(client, CHAT, [line])

    assert 400 <= status_of(answer) < 500
    assert fake.received == []
    await assert_still_serving(client)
    assert len(await stored_rows(client.server.app, db_pool)) == 1


async def test_very_many_headers_are_refused_or_served_never_a_crash(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    client = await gateway()
    lines = [b"X-Filler-%d: %s" % (i, b"f" * 1000) for i in range(300)]

    answer = await raw_post(client, CHAT, lines)

    assert status_of(answer) in (200, 400, 431)
    await assert_still_serving(client)


TAG_CASES = [
    (b"X-Purpose: tab\there", "X-Purpose"),
    (b"X-Cycle-Id: " + b"c" * (MAX_VALUE_CHARS + 1), "X-Cycle-Id"),
    (b"X-Tag-Note: \xe2\x80\xaeevil", "X-Tag-Note"),
    (b"X-Tag-Note: \xff\xfe", "X-Tag-Note"),
    (b"X-Tag-a.b: x", "X-Tag-a.b"),
    (b"X-Tag-" + b"n" * 65 + b": x", "X-Tag-" + "n" * 65),
    (b"X-Request-Id: has space", "X-Request-Id"),
    (b"X-Request-Id: " + b"r" * 129, "X-Request-Id"),
]


@pytest.mark.parametrize(
    ("line", "param"), TAG_CASES, ids=[case[1][:20] for case in TAG_CASES]
)
async def test_a_bad_tag_header_is_a_400_that_names_it(
    gateway: Gateway,
    fake: FakeUpstream,
    db_pool: asyncpg.Pool,
    line: bytes,
    param: str,
) -> None:
    client = await gateway()

    answer = await raw_post(client, CHAT, [line])

    assert status_of(answer) == 400
    error = orjson.loads(body_of(answer))["error"]
    assert (error["code"], error["param"]) == ("invalid_tag_header", param)
    assert fake.received == []
    assert await stored_rows(client.server.app, db_pool) == []
    assert client.server.app[METRICS].rejected["invalid_tag_header"] == 1


@pytest.mark.parametrize(
    ("line", "name"),
    [(b"X-Purpose: a\x01b", b"X-Purpose"), (b"X-Ticker: AAPL\x7f", b"X-Ticker")],
    ids=["ctrl", "del"],
)
async def test_control_bytes_in_a_header_are_refused_by_the_parser_naming_it(
    gateway: Gateway,
    fake: FakeUpstream,
    db_pool: asyncpg.Pool,
    line: bytes,
    name: bytes,
) -> None:
    """aiohttp's parser refuses these before the gateway sees the request."""
    client = await gateway()

    answer = await raw_post(client, CHAT, [line])

    assert status_of(answer) == 400
    assert name in body_of(answer)
    assert fake.received == []
    assert await stored_rows(client.server.app, db_pool) == []
    await assert_still_serving(client)


async def test_one_tag_too_many_and_a_repeated_tag_are_400s(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    too_many = [b"X-Tag-t%d: v" % i for i in range(MAX_TAGS + 1)]

    many = await raw_post(client, CHAT, too_many)
    repeated = await raw_post(client, CHAT, [b"X-Purpose: a", b"X-Purpose: b"])

    assert status_of(many) == 400
    assert orjson.loads(body_of(many))["error"]["param"] == f"X-Tag-t{MAX_TAGS}"
    assert status_of(repeated) == 400
    assert orjson.loads(body_of(repeated))["error"]["param"] == "X-Purpose"
    assert fake.received == []
    assert await stored_rows(client.server.app, db_pool) == []


@pytest.mark.parametrize(
    "line",
    [b"X-Purpose: a\rInjected: b", b"X-Purpose: a\nInjected: b", b"X-Purpose: a\r\n b"],
    ids=["bare-cr", "bare-lf", "folded"],
)
async def test_line_breaks_in_a_tag_never_reach_a_row_or_the_upstream(
    gateway: Gateway, fake: FakeUpstream, db_pool: asyncpg.Pool, line: bytes
) -> None:
    client = await gateway()

    answer = await raw_post(client, CHAT, [line])

    status = status_of(answer)
    rows = await stored_rows(client.server.app, db_pool)
    if status == 400:
        assert rows == []
        assert fake.received == []
    else:
        # Taken as two header lines: the tag is what precedes the break.
        assert status == 200
        (row,) = rows
        assert row["purpose"] == "a"
        assert "X-Purpose" not in fake.received[-1].headers
    for sent in fake.received:
        assert all("\r" not in v and "\n" not in v for v in sent.headers.values())


# -- where requests may go ----------------------------------------------------


def path_tricks(evil: str) -> list[str]:
    return [
        "/v1/../admin",
        "/v1/../../etc/passwd",
        "/v1/%2e%2e/chat/completions",
        "/v1/%2E%2e%2Fchat/completions",
        "/v1/..%2f..%2fadmin",
        "/v1/chat%2fcompletions",
        "/v1/chat%2Fcompletions",
        "/v1/chat%5ccompletions",
        "/v1\\..\\admin",
        "/v1/chat\\completions",
        "/v1//chat/completions",
        "/v1/./chat/completions",
        "/v1/chat/completions/",
        "/v1/chat/completions/../../../admin",
        "/deepseek/../openai/v1/chat/completions",
        "/deepseek/v1/../../openai/v1/chat/completions",
        "/%2e%2e/v1/chat/completions",
        "/v1/chat/completions%00",
        "/v1/chat/completions%0d%0aX-Evil:%201",
        "/v1/chat/completions#frag",
        f"//{evil}/v1/chat/completions",
        f"http://{evil}/v1/chat/completions",
        f"https://{evil}/v1/chat/completions",
        f"/{evil}/v1/chat/completions",
        "/evil.example/v1/chat/completions",
        "/v2/chat/completions",
        "v1/chat/completions",
        "*",
    ]


async def test_path_tricks_reach_nothing_and_nobody_else(
    gateway: Gateway, fake: FakeUpstream, forbidden: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    evil = host_of(forbidden)

    answers = {t: await raw_post(client, t) for t in path_tricks(evil)}

    statuses = {t: status_of(a) for t, a in answers.items()}
    assert all(s in (400, 404) for s in statuses.values()), statuses
    assert fake.received == []
    assert forbidden.received == []
    assert await stored_rows(client.server.app, db_pool) == []


async def test_odd_but_plain_targets_stay_under_the_base_path(
    gateway: Gateway, fake: FakeUpstream, forbidden: FakeUpstream
) -> None:
    """What is let through goes to the configured upstream, below its /v1."""
    client = await gateway()
    evil = host_of(forbidden)
    targets = [
        f"/v1/@{evil}/chat/completions",
        f"/v1/chat/completions?next=http://{evil}/v1/x",
        "/v1/models/%252e%252e/admin",
        "/v1/models;jsessionid=..",
        f"/openai/v1/models?host={evil}",
    ]

    for target in targets:
        await raw_post(client, target, method=b"GET")
    await raw_post(
        client, CHAT, [f"X-Forwarded-Host: {evil}".encode(), b"Forwarded: host=x"]
    )

    assert len(fake.received) == len(targets) + 1
    assert all(r.path.startswith("/v1/") for r in fake.received)
    assert forbidden.received == []


async def test_the_host_header_never_picks_the_upstream(
    gateway: Gateway, fake: FakeUpstream, forbidden: FakeUpstream
) -> None:
    client = await gateway()
    evil = host_of(forbidden)
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    )

    answer = await send_raw(client.host, client.port, head.encode() + BODY)

    assert status_of(answer) == 200
    assert len(fake.received) == 1
    assert forbidden.received == []


async def test_connect_and_absolute_form_requests_go_nowhere(
    gateway: Gateway, fake: FakeUpstream, forbidden: FakeUpstream
) -> None:
    client = await gateway()
    evil = host_of(forbidden)

    connect = await send_raw(
        client.host,
        client.port,
        f"CONNECT {evil} HTTP/1.1\r\nHost: {evil}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    absolute = await raw_post(client, f"http://{evil}/v1/models", method=b"GET")

    assert status_of(connect) in (400, 404, 405)
    assert status_of(absolute) in (400, 404)
    assert fake.received == []
    assert forbidden.received == []
    await assert_still_serving(client)


async def test_an_upstream_redirect_is_passed_back_not_followed(
    gateway: Gateway, fake: FakeUpstream, forbidden: FakeUpstream, db_pool: asyncpg.Pool
) -> None:
    client = await gateway()
    elsewhere = f"{forbidden.base_url}/chat/completions"  # type: ignore[attr-defined]
    fake.fail_next(307, body=b"", headers={"Location": elsewhere})

    resp = await client.post(CHAT, json=chat_body(), allow_redirects=False)

    assert resp.status == 307
    assert resp.headers["Location"] == elsewhere
    assert forbidden.received == []
    (row,) = await stored_rows(client.server.app, db_pool)
    assert row["status"] == 307


def aiohttp_error_record(error: Exception) -> logging.LogRecord:
    """The record aiohttp's server logs for a request it could not parse."""
    try:
        raise error
    except Exception:
        return logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request",
            None, sys.exc_info(),
        )  # fmt: skip


@pytest.mark.parametrize(
    "error",
    [
        LineTooLong(b"Bearer sk-SECRET" * 600, "8190"),
        InvalidHeader(b"Authorization: Bearer sk-SECRET\x01"),
        BadStatusLine("POST /v1/chat/completions?key=sk-SECRET HTTP/1.1"),
    ],
    ids=["line-too-long", "invalid-header", "bad-status-line"],
)
def test_a_malformed_request_line_shows_none_of_its_bytes(
    error: HttpProcessingError,
) -> None:
    """What aiohttp quotes of the request may be a key: the line keeps the kind only."""
    from gateway.cli import quiet_malformed_requests

    record = aiohttp_error_record(error)

    assert quiet_malformed_requests(record)
    line = record.getMessage()
    assert "SECRET" not in line
    assert line.startswith("malformed request refused: ")
    assert len(line) > len("malformed request refused: ") + 10


def test_a_malformed_request_is_one_info_line_not_a_traceback() -> None:
    """aiohttp reports unparsable requests at ERROR; the CLI's filter quiets them."""
    from aiohttp.http_exceptions import BadHttpMessage

    from gateway.cli import quiet_malformed_requests

    record = aiohttp_error_record(
        BadHttpMessage("Invalid header value char:\n\n  b'X: \\x01'\n  ^")
    )

    assert quiet_malformed_requests(record)
    assert record.levelno == logging.INFO
    assert record.exc_info is None
    assert "\n" not in record.getMessage()
