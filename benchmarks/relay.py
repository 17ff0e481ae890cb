"""
The smallest aiohttp relay we can write: the floor for a Python gateway.

It forwards the method, path, headers and body, relays the answer chunk by
chunk as it arrives, and reads nothing of either: no JSON, no usage, no
records. One pooled ``ClientSession`` and uvloop.

``--client http1`` relays through the gateway's own upstream client
(``gateway.http1``) instead of aiohttp's: the same relay with the client the
gateway uses, which shows what the accounting costs apart from the client.

    python -m benchmarks.relay --port 18002 --upstream http://127.0.0.1:18001
    python -m benchmarks.relay --port 18003 --client http1
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import hdrs, web

from benchmarks.upstream import run
from gateway.http1 import Pool

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
    args = parser.parse_args()
    if args.client == "http1":
        app = create_http1_app(args.upstream)
    else:
        app = create_app(args.upstream, args.middlewares)
    run(app, args.host, args.port)


if __name__ == "__main__":
    main()
