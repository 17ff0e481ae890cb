"""
Shared fixtures: one real PostgreSQL database per test run.

The server is ``$TEST_DATABASE_URL`` when set, else the one on
127.0.0.1:5432 when it answers, else an embedded server started for the run.
Each run creates its own database, migrates it, and drops it at the end; each
test that asks for ``db_pool`` starts from empty tables.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import db
from gateway.config import DatabaseSettings, Settings, load_settings
from gateway.keys import SETTINGS
from tests.harness import FrontTestServer, LoopbackServers, Server

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLES = ("llm_usage", "llm_usage_daily", "gateway_once", "gateway_state")


def with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


async def server_answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """A URL of a server the run may create databases on."""
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if asyncio.run(server_answers(LOCAL_SERVER)):
        yield LOCAL_SERVER
        return
    with tempfile.TemporaryDirectory(prefix="tallygate-pg-") as tmp:
        yield db.start_embedded_server(Path(tmp))


@pytest.fixture(scope="session")
def database_url(pg_server_dsn: str) -> Iterator[str]:
    """A freshly created and migrated database, dropped after the run."""
    name = f"tallygate_test_{os.getpid()}_{secrets.token_hex(3)}"

    async def create() -> None:
        conn = await asyncpg.connect(pg_server_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        conn = await asyncpg.connect(with_database(pg_server_dsn, name))
        try:
            await db.apply_migrations(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(pg_server_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield with_database(pg_server_dsn, name)
    finally:
        asyncio.run(drop())


@pytest.fixture
async def db_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the run's database, every gateway table emptied first."""
    pool = await db.create_pool(database_url, DatabaseSettings(url=database_url))
    await pool.execute(f"TRUNCATE {', '.join(TABLES)}")
    try:
        yield pool
    finally:
        await pool.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    doors = getattr(metafunc.module, "FRONT_DOORS", None)
    if doors and "front_door" in metafunc.fixturenames:
        metafunc.parametrize("front_door", doors, indirect=True)


@pytest.fixture
def front_door(request: pytest.FixtureRequest) -> str:
    """
    Who reads proxied requests in this test's gateways: the gateway's own
    door, as served by default, or each in turn in a module that names them
    in ``FRONT_DOORS``.
    """
    return getattr(request, "param", "gateway")


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path, front_door: str) -> Any:
    """Build Settings for a test: the run's database, a data dir of its own."""

    def build(**sections: Any) -> Settings:
        database = {"url": database_url, "data_dir": str(tmp_path / "data")}
        database.update(sections.pop("database", {}))
        server = {"front_door": front_door, **sections.pop("server", {})}
        return load_settings(environ={}, database=database, server=server, **sections)

    return build


@pytest.fixture
def aiohttp_client(aiohttp_client: Any) -> Any:
    """
    pytest-aiohttp's client, with a gateway served as ``tallygate serve``
    serves it: behind its front door unless its settings say aiohttp.
    """

    async def start(app_or_server: Any, **kwargs: Any) -> TestClient:
        if (
            isinstance(app_or_server, web.Application)
            and SETTINGS in app_or_server
            and app_or_server[SETTINGS].server.front_door == "gateway"
        ):
            app_or_server = FrontTestServer(app_or_server)
        return await aiohttp_client(app_or_server, **kwargs)

    return start


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Start a loopback server whose every connection runs the given handler."""
    servers = LoopbackServers()
    yield servers.start
    await servers.close()
