"""
What docs/operations.md says about the schema, read back from a real database.

The Citus and TimescaleDB mappings in the guide rest on these facts: how
``llm_usage`` is partitioned, which columns each unique index holds, what
the recorder's ``ON CONFLICT`` targets, and the rollup's key.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from gateway import db
from gateway.recorder import INSERT_BATCH

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


async def index_columns(pool: asyncpg.Pool, table: str) -> dict[str, dict]:
    """Each index of *table*: its columns in order, unique or not, primary or not."""
    rows = await pool.fetch(
        """
        SELECT i.relname AS name, x.indisunique AS is_unique,
               x.indisprimary AS is_primary,
               array_agg(a.attname ORDER BY k.ord) AS columns
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
        WHERE t.relname = $1
        GROUP BY i.relname, x.indisunique, x.indisprimary
        """,
        table,
    )
    return {r["name"]: dict(r) for r in rows}


async def test_usage_is_range_partitioned_on_timestamp(db_pool: asyncpg.Pool) -> None:
    row = await db_pool.fetchrow(
        """
        SELECT p.partstrat::text AS partstrat, array_agg(a.attname) AS columns
        FROM pg_partitioned_table p
        JOIN pg_class c ON c.oid = p.partrelid
        CROSS JOIN LATERAL unnest(p.partattrs) AS k(attnum)
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
        WHERE c.relname = 'llm_usage'
        GROUP BY 1
        """
    )

    assert row["partstrat"] == "r"
    assert row["columns"] == ["timestamp"]


async def test_usage_has_a_default_and_monthly_partitions(
    db_pool: asyncpg.Pool,
) -> None:
    async with db_pool.acquire() as conn:
        created = await db.ensure_partitions(conn, datetime(2031, 11, 20, tzinfo=UTC))
        try:
            bounds = dict(
                await conn.fetch(
                    """
                    SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
                    FROM pg_inherits i
                    JOIN pg_class c ON c.oid = i.inhrelid
                    WHERE i.inhparent = 'llm_usage'::regclass
                    """
                )
            )
        finally:
            # Other tests expect the partitions of their own months only.
            for name in created:
                await conn.execute(f"DROP TABLE {name}")

    assert bounds["llm_usage_default"] == "DEFAULT"
    # Made two months ahead, across a year's end.
    assert "'2031-12-01" in bounds["llm_usage_y2031m12"]
    assert "'2032-01-01" in bounds["llm_usage_y2031m12"]
    assert "'2032-01-01" in bounds["llm_usage_y2032m01"]


async def test_every_unique_index_of_usage_holds_the_timestamp(
    db_pool: asyncpg.Pool,
) -> None:
    indexes = await index_columns(db_pool, "llm_usage")

    unique = {n: i["columns"] for n, i in indexes.items() if i["is_unique"]}
    primary = [i["columns"] for i in indexes.values() if i["is_primary"]]
    assert unique["llm_usage_request_id_key"] == ["request_id", "timestamp"]
    assert primary == [["id", "timestamp"]]
    assert all("timestamp" in columns for columns in unique.values())
    # Why the guide says a Citus move by request_id must replace the key.
    assert "request_id" not in primary[0]


async def test_recorder_conflicts_on_the_idempotency_index(
    db_pool: asyncpg.Pool,
) -> None:
    indexes = await index_columns(db_pool, "llm_usage")

    target = re.search(r"ON CONFLICT \(([^)]*)\)", INSERT_BATCH)[1]
    columns = [c.strip().strip('"') for c in target.split(",")]
    assert columns == indexes["llm_usage_request_id_key"]["columns"]


async def test_filters_have_their_indexes(db_pool: asyncpg.Pool) -> None:
    indexes = await index_columns(db_pool, "llm_usage")

    found = {tuple(i["columns"]) for i in indexes.values()}
    for leading in ("purpose", "model", "ticker", "cycle_id"):
        assert (leading, "timestamp") in found
    assert ("timestamp",) in found


async def test_rollups_are_plain_tables_keyed_by_day(db_pool: asyncpg.Pool) -> None:
    kinds = dict(
        await db_pool.fetch(
            "SELECT relname, relkind::text FROM pg_class"
            " WHERE relname IN ('llm_usage', 'llm_usage_daily',"
            " 'llm_usage_daily_ticker')"
        )
    )
    daily = await index_columns(db_pool, "llm_usage_daily")
    ticker = await index_columns(db_pool, "llm_usage_daily_ticker")

    assert kinds == {
        "llm_usage": "p",
        "llm_usage_daily": "r",
        "llm_usage_daily_ticker": "r",
    }
    (daily_key,) = [i["columns"] for i in daily.values() if i["is_primary"]]
    (ticker_key,) = [i["columns"] for i in ticker.values() if i["is_primary"]]
    assert daily_key == ["day", "model", "purpose"]
    assert ticker_key == ["day", "ticker", "model", "purpose"]


def test_guide_names_the_keys_the_schema_has() -> None:
    text = GUIDE.read_text()

    assert 'primary key is `(id, "timestamp")`' in text
    assert '`llm_usage_request_id_key` on `(request_id, "timestamp")`' in text
    assert "primary key `(day, model, purpose)`" in text
