"""
What the fault, hostile-input and secrets tests share: a fake upstream on
loopback, a gateway in front of it, and the rows it stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway.front import Front, FrontSite
from gateway.keys import RECORDER, SETTINGS
from tests.fake_upstream import FakeUpstream

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]

# A module about proxied calls sets ``FRONT_DOORS = BOTH_FRONT_DOORS``: each
# of its tests that builds settings then runs behind the gateway's front door
# and behind aiohttp's server (``server.front_door``; see conftest).
BOTH_FRONT_DOORS = ("gateway", "aiohttp")


async def start_fake(aiohttp_server: Any) -> FakeUpstream:
    """Serve a new fake upstream; its ``/v1`` URL is ``base_url``."""
    upstream = FakeUpstream()
    server: TestServer = await aiohttp_server(upstream.app)
    upstream.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return upstream


def upstreams_at(base_url: str, **upstream: Any) -> dict[str, Any]:
    """The openai (default) and deepseek upstreams, both at *base_url*."""
    return {
        "openai": {"base_url": base_url, "default": True, **upstream},
        "deepseek": {"base_url": base_url, "models": ["deepseek-*"], **upstream},
    }


def chat_body(*, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}
    if stream:
        body["stream"] = True
    return body


async def stored_rows(app: web.Application, pool: asyncpg.Pool) -> list[Any]:
    """Every row of llm_usage once *app*'s recorder has written what it holds."""
    await app[RECORDER].flush()
    return await pool.fetch('SELECT * FROM llm_usage ORDER BY "timestamp", request_id')


async def rows_when(
    client: TestClient | LiveGateway,
    pool: asyncpg.Pool,
    count: int,
    limit_s: float = 20,
) -> list[Any]:
    """
    Poll until *count* rows are stored; return them.

    For calls the gateway finishes after the client has gone: their row
    is written when the handler notices, not when the test stops reading.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        app = client.app if isinstance(client, LiveGateway) else client.server.app
        rows = await stored_rows(app, pool)
        if len(rows) >= count or loop.time() > deadline:
            return rows
        await asyncio.sleep(0.02)


async def send_raw(host: str, port: int, data: bytes, limit_s: float = 20) -> bytes:
    """Send *data* on a new connection and return all the server answered."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), limit_s)
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer."""
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


@dataclass
class LiveGateway:
    """A gateway served as ``tallygate serve`` serves it, on a loopback port."""

    app: web.Application
    host: str
    port: int
    session: aiohttp.ClientSession
    # The front door's shared state (None behind aiohttp's server).
    front: Front | None = None

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


class FrontTestServer(TestServer):
    """aiohttp's test server, with the gateway's front door on its socket."""

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self._loop = loop
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        sock = self.socket_factory(self.host, self.port or 0, socket.AF_INET)
        self.host, self.port = sock.getsockname()[:2]
        await FrontSite(self.runner, sock=sock).start()
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[LiveGateway]:
    """
    Serve *app* on a free loopback port as ``tallygate serve`` does: behind
    the front door unless its settings say aiohttp, with aiohttp's defaults.

    aiohttp's test server cancels a handler whose client left; the real
    server lets it finish, and that is what the gateway's rows depend on.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite
    if app[SETTINGS].server.front_door == "gateway":
        site = FrontSite(runner, host="127.0.0.1", port=0)
    else:
        site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as session:
            front = site.front if isinstance(site, FrontSite) else None
            yield LiveGateway(app, host, port, session, front)
    finally:
        await runner.cleanup()


# Loopback servers that send exactly the bytes a test scripts


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


class LoopbackServers:
    """Servers on 127.0.0.1 whose every connection runs a handler; closed together."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []

    async def start(
        self, handler: Handler, ssl_context: ssl.SSLContext | None = None
    ) -> Server:
        state = Server(port=0)

        async def on_connection(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            state.connections += 1
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(
            on_connection, "127.0.0.1", 0, ssl=ssl_context
        )
        self.servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


def serve_once(config: Path, **run: Any) -> subprocess.CompletedProcess[str]:
    """
    Run ``tallygate serve --config *config*`` until it exits (each caller's
    config makes it stop), with no setting from this process's environment.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLYGATE_")}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        **run,
    )
