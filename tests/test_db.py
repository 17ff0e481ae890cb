from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg
import pytest

from gateway import db


async def test_migrations_are_recorded_and_applied_once(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        again = await db.apply_migrations(conn)
        versions = await conn.fetch("SELECT version FROM schema_migrations")

    assert again == []
    assert [r["version"] for r in versions] == [p.stem for p in db.list_migrations()]


async def test_partitions_are_created_ahead_and_take_rows(
    db_pool: asyncpg.Pool,
) -> None:
    now = datetime(2031, 11, 15, tzinfo=UTC)
    async with db_pool.acquire() as conn:
        await conn.execute(
            'INSERT INTO llm_usage ("timestamp", model, request_id)'
            " VALUES ('2032-01-10T00:00:00Z', 'm', 'early')"
        )

        created = await db.ensure_partitions(conn, now)
        again = await db.ensure_partitions(conn, now)
        where = await conn.fetchval(
            "SELECT tableoid::regclass::text FROM llm_usage WHERE request_id = 'early'"
        )

    assert created == ["llm_usage_y2031m11", "llm_usage_y2031m12", "llm_usage_y2032m01"]
    assert again == []
    assert where == "llm_usage_y2032m01"


async def test_retention_drops_old_months_only(db_pool: asyncpg.Pool) -> None:
    now = datetime(2030, 5, 20, tzinfo=UTC)
    async with db_pool.acquire() as conn:
        await db.ensure_partitions(conn, datetime(2030, 2, 1, tzinfo=UTC), 3)
        for ts in ("2030-02-03", "2030-04-30", "2030-05-01"):
            await conn.execute(
                'INSERT INTO llm_usage ("timestamp", model, request_id)'
                " VALUES ($1, 'm', $2)",
                datetime.fromisoformat(ts).replace(tzinfo=UTC),
                ts,
            )
        # The insert trigger rolled each row up into a day of its own.

        dropped = await db.apply_retention(conn, now, months=2)
        kept = await conn.fetch("SELECT request_id FROM llm_usage ORDER BY 1")
        days = await conn.fetch("SELECT day FROM llm_usage_daily ORDER BY 1")

    assert "llm_usage_y2030m02" in dropped
    assert [r["request_id"] for r in kept] == ["2030-04-30", "2030-05-01"]
    assert [r["day"] for r in days] == [date(2030, 4, 30), date(2030, 5, 1)]


async def test_copy_is_rolled_up_like_an_insert(db_pool: asyncpg.Pool) -> None:
    day = datetime(2030, 7, 14, 23, 30, tzinfo=UTC)
    rows = [
        (f"copy-{n}", day, "m", "research" if n % 2 else None, "T", 10, 200)
        for n in range(6)
    ]
    async with db_pool.acquire() as conn:
        await db.ensure_partitions(conn, day, 0)

        await conn.copy_records_to_table(
            "llm_usage",
            records=rows,
            columns=(
                "request_id",
                "timestamp",
                "model",
                "purpose",
                "ticker",
                "total_tokens",
                "status",
            ),
        )
        daily = await conn.fetch(
            "SELECT day, purpose, calls, total_tokens FROM llm_usage_daily"
            " ORDER BY purpose"
        )
        tickers = await conn.fetchval(
            "SELECT sum(calls) FROM llm_usage_daily_ticker WHERE ticker = 'T'"
        )

    assert [tuple(r) for r in daily] == [
        (date(2030, 7, 14), "", 3, 30),
        (date(2030, 7, 14), "research", 3, 30),
    ]
    assert tickers == 6


async def test_claim_once_has_one_winner(db_pool: asyncpg.Pool) -> None:
    first = await db.claim_once(db_pool, "alert", "day:2030-01-01:0.8", "a")
    second = await db.claim_once(db_pool, "alert", "day:2030-01-01:0.8", "b")

    assert (first, second) == (True, False)


def test_redact_dsn_hides_the_password() -> None:
    assert db.redact_dsn("postgresql://u:secret@h:5/d") == "postgresql://u:***@h:5/d"
    assert db.redact_dsn("postgresql://h/d") == "postgresql://h/d"
    # asyncpg and libpq also take it, and the TLS key's, as query parameters.
    assert (
        db.redact_dsn(
            "postgresql://u@h/d?sslmode=require&password=s3cret&sslpassword=k"
        )
        == "postgresql://u@h/d?sslmode=require&password=***&sslpassword=***"
    )
    assert "s3cret" not in db.redact_dsn("postgresql://u:p@h/d?PASSWORD=s3cret")


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.ConnectionDoesNotExistError("closed"), True),
        (asyncpg.InvalidPasswordError("password authentication failed"), False),
        (asyncpg.InvalidCatalogNameError('database "x" does not exist'), False),
        (asyncpg.ClientConfigurationError("bad sslmode"), False),
        (asyncpg.UndefinedTableError("no llm_usage"), False),
    ],
)
def test_an_absent_server_is_told_apart_from_one_that_refuses(
    error: Exception, unreachable: bool
) -> None:
    assert db.is_unreachable(error) is unreachable
