"""
Throwaway databases on the shared PostgreSQL, one per benchmark run.

Each run creates ``tallygate_bench_<pid>_<hex>`` on the server at
``--server`` (127.0.0.1:5432 by default), migrates it with the gateway's own
migrations and drops it at the end, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg

from gateway import db

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_database(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


async def create_database(server_dsn: str, prefix: str = "tallygate_bench") -> str:
    """Create and migrate a fresh database; return its URL."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(server_dsn, name)
    conn = await asyncpg.connect(url)
    try:
        await db.apply_migrations(conn)
        await db.ensure_partitions(conn, db.datetime.now(db.UTC))
    finally:
        await conn.close()
    return url


async def drop_database(server_dsn: str, url: str) -> None:
    name = url.rpartition("/")[2]
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(server_dsn: str = LOCAL_SERVER) -> AsyncIterator[str]:
    url = await create_database(server_dsn)
    try:
        yield url
    finally:
        await drop_database(server_dsn, url)


async def count_rows(url: str, table: str = "llm_usage") -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        await conn.close()


async def server_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
