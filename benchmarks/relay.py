"""
The smallest aiohttp relay we can write: the floor for a Python gateway.

It forwards the method, path, headers and body, relays the answer chunk by
chunk as it arrives, and reads nothing of either: no JSON, no usage, no
records. One pooled ``ClientSession`` and uvloop.

``--client http1`` relays through the gateway's own upstream client
(``gateway.http1``) instead of aiohttp's: the same relay with the client the
gateway uses, which shows what the accounting costs apart from the client.

``--server raw`` drops aiohttp's server too: requests are read off the
socket by a bare ``asyncio.Protocol`` and relayed through ``gateway.http1``.
It is a floor, not a server (it takes only what wrk sends: Content-Length
bodies on keep-alive connections), and shows what aiohttp's server costs a
call.

    python -m benchmarks.relay --port 18002 --upstream http://127.0.0.1:18001
    python -m benchmarks.relay --port 18003 --client http1
    python -m benchmarks.relay --port 18004 --server raw
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
from aiohttp import hdrs, web

from benchmarks.upstream import run
from gateway.http1 import Pool, Reply

# The relay's variants, by the name the benchmarks give them, and the
# options that start each.
VARIANTS: dict[str, tuple[str, ...]] = {
    "relay": (),
    # What the accounting costs apart from the client.
    "relay-http1": ("--client", "http1"),
    # What aiohttp's server costs.
    "relay-raw": ("--server", "raw"),
}

SESSION = web.AppKey("session", aiohttp.ClientSession)
POOL = web.AppKey("pool", Pool)

# Hop-by-hop headers (RFC 9110 section 7.6.1) plus the framing ones the two
# sides set for themselves.
SKIPPED = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        hdrs.PROXY_AUTHENTICATE,
        hdrs.PROXY_AUTHORIZATION,
        hdrs.TE,
        hdrs.TRAILER,
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        hdrs.HOST,
        hdrs.CONTENT_LENGTH,
    )
)


def create_app(upstream: str, middlewares: int = 0) -> web.Application:
    """The relay app; *middlewares* pass-through layers measure what one costs."""
    base = upstream.rstrip("/")

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in SKIPPED}
        async with request.app[SESSION].request(
            request.method,
            base + request.rel_url.raw_path_qs,
            data=body,
            headers=headers,
        ) as reply:
            response = web.StreamResponse(
                status=reply.status,
                headers={
                    k: v for k, v in reply.headers.items() if k.lower() not in SKIPPED
                },
            )
            if reply.content_length is not None:
                response.content_length = reply.content_length
            # A client that hangs up (wrk at the end of a cell) is normal.
            with contextlib.suppress(ConnectionResetError):
                await response.prepare(request)
                async for chunk in reply.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
        return response

    async def session_context(app: web.Application):
        connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=None)
        async with aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(600),
        ) as session:
            app[SESSION] = session
            yield

    @web.middleware
    async def pass_through(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        return await handler(request)

    app = web.Application(middlewares=[pass_through] * middlewares)
    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def create_http1_app(upstream: str) -> web.Application:
    """The same relay, through the gateway's own upstream client."""
    base = upstream.rstrip("/")

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = [
            (k, v) for k, v in request.headers.items() if k.lower() not in SKIPPED
        ]
        reply = await request.app[POOL].request(
            request.method, base + request.rel_url.raw_path_qs, headers, body
        )
        try:
            response = web.StreamResponse(
                status=reply.status,
                headers=[(k, v) for k, v in reply.headers if k.lower() not in SKIPPED],
            )
            if reply.content_length is not None:
                response.content_length = reply.content_length
            with contextlib.suppress(ConnectionResetError):
                await response.prepare(request)
                while chunk := await reply.readany():
                    await response.write(chunk)
                await response.write_eof()
        finally:
            reply.release()
        return response

    async def pool_context(app: web.Application):
        app[POOL] = Pool(base, max_connections=256, connect_timeout_s=10, timeout_s=600)
        yield
        app[POOL].close()

    app = web.Application()
    app.cleanup_ctx.append(pool_context)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


class RawRelay(asyncio.Protocol):
    """One client connection of the raw relay: its requests, one at a time."""

    def __init__(self, pool: Pool, base: str) -> None:
        self.pool = pool
        self.base = base
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self.next_request()

    def next_request(self) -> None:
        """Start the next request once its head and body are in."""
        end = self.buffer.find(b"\r\n\r\n")
        if end == -1:
            return
        request_line, *lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = []
        length = 0
        for line in lines:
            name, _, value = line.partition(":")
            value = value.strip()
            lower = name.lower()
            if lower == "content-length":
                length = int(value)
            if lower not in SKIPPED:
                headers.append((name, value))
        start = end + 4
        if len(self.buffer) < start + length:
            return
        body = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        self.busy = True
        asyncio.get_running_loop().create_task(
            self.relay(method, self.base + target, headers, body)
        )

    async def relay(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        reply = await self.pool.request(method, url, headers, body)
        try:
            await self.answer(reply)
        finally:
            reply.release()
        self.busy = False
        if self.buffer and self.transport is not None:
            self.next_request()

    async def answer(self, reply: Reply) -> None:
        head = [f"HTTP/1.1 {reply.status} {reply.reason}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in reply.headers if k.lower() not in SKIPPED]
        sized = reply.content_length is not None
        if sized:
            head.append(f"Content-Length: {reply.content_length}\r\n\r\n")
        else:
            head.append("Transfer-Encoding: chunked\r\n\r\n")
        self.write("".join(head).encode("latin-1"))
        while chunk := await reply.readany():
            self.write(chunk if sized else b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if not sized:
            self.write(b"0\r\n\r\n")

    def write(self, data: bytes) -> None:
        # A client that hung up (wrk at the end of a cell) is normal.
        if self.transport is not None:
            self.transport.write(data)


async def serve_raw(host: str, port: int, upstream: str) -> None:
    """Serve the raw relay until cancelled."""
    base = upstream.rstrip("/")
    pool = Pool(base, max_connections=256, connect_timeout_s=10, timeout_s=600)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RawRelay(pool, base), host, port, backlog=1024, reuse_address=True
    )
    try:
        async with server:
            await server.serve_forever()
    finally:
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18002)
    parser.add_argument("--upstream", default="http://127.0.0.1:18001")
    parser.add_argument(
        "--middlewares", type=int, default=0, help="pass-through middlewares to add"
    )
    parser.add_argument(
        "--client",
        choices=("aiohttp", "http1"),
        default="aiohttp",
        help="the upstream client: aiohttp's, or the gateway's own",
    )
    parser.add_argument(
        "--server",
        choices=("aiohttp", "raw"),
        default="aiohttp",
        help="the server side: aiohttp's, or a bare protocol (the gateway's client)",
    )
    args = parser.parse_args()
    if args.server == "raw":
        import uvloop

        uvloop.run(serve_raw(args.host, args.port, args.upstream))
        return
    if args.client == "http1":
        app = create_http1_app(args.upstream)
    else:
        app = create_app(args.upstream, args.middlewares)
    run(app, args.host, args.port)


if __name__ == "__main__":
    main()
