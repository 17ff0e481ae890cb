"""
The recorder: usage records to PostgreSQL in batches, never in the way.

``submit`` appends to an in-memory list and returns. A flusher task writes a
batch every ``flush_interval_ms`` (sooner when ``batch_size`` records wait) in
one statement that inserts the rows, skips those already stored, and adds the
new ones to the daily rollup. When a write fails the batch is appended to the
spool, an append-only directory of JSON-lines segments in the data
directory, and replayed oldest first with backoff once the database answers.
While the spool holds anything, new batches join it, so replay order is
arrival order; past ``max_queue`` waiting records, records skip the queue for
the spool, so an outage of any length costs disk, not memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import asyncpg

from gateway.config import RecorderSettings
from gateway.metrics import Metrics
from gateway.record import UsageRecord

log = logging.getLogger(__name__)

COLUMNS: tuple[tuple[str, str], ...] = (
    ("request_id", "text"),
    ("timestamp", "timestamptz"),
    ("model", "text"),
    ("upstream", "text"),
    ("endpoint", "text"),
    ("status", "smallint"),
    ("streamed", "boolean"),
    ("input_tokens", "integer"),
    ("cached_input_tokens", "integer"),
    ("output_tokens", "integer"),
    ("reasoning_tokens", "integer"),
    ("total_tokens", "integer"),
    ("input_cost_usd", "numeric"),
    ("output_cost_usd", "numeric"),
    ("total_cost_usd", "numeric"),
    ("price_source", "text"),
    ("usage_complete", "boolean"),
    ("usage_estimated", "boolean"),
    ("purpose", "text"),
    ("ticker", "text"),
    ("cycle_id", "text"),
    ("tags", "jsonb"),
    ("response_time_ms", "float8"),
    ("key_label", "text"),
    ("error", "text"),
)
NAMES = [name for name, _ in COLUMNS]
QUOTED = ", ".join(f'"{name}"' for name in NAMES)

# One statement, one round trip: insert what is new, roll up only that.
UNNEST = ", ".join(f"${i}::{type_}[]" for i, (_, type_) in enumerate(COLUMNS, 1))
INSERT_BATCH = f"""
WITH batch AS (
    SELECT * FROM unnest({UNNEST}) AS b({QUOTED})
), inserted AS (
    INSERT INTO llm_usage ({QUOTED})
    SELECT {QUOTED} FROM batch
    ON CONFLICT (request_id, "timestamp") DO NOTHING
    RETURNING "timestamp", model, purpose, status, error, input_tokens,
        cached_input_tokens, output_tokens, reasoning_tokens, total_tokens,
        input_cost_usd, output_cost_usd, total_cost_usd, response_time_ms
), rolled AS (
    INSERT INTO llm_usage_daily AS d (day, model, purpose, calls, errors,
        input_tokens, cached_input_tokens, output_tokens, reasoning_tokens,
        total_tokens, input_cost_usd, output_cost_usd, cost_usd,
        latency_ms_sum, latency_count)
    SELECT ("timestamp" AT TIME ZONE 'UTC')::date, model, coalesce(purpose, ''),
        count(*), count(*) FILTER (WHERE status >= 400 OR error IS NOT NULL),
        sum(input_tokens), sum(cached_input_tokens), sum(output_tokens),
        sum(reasoning_tokens), sum(total_tokens),
        coalesce(sum(input_cost_usd), 0), coalesce(sum(output_cost_usd), 0),
        coalesce(sum(total_cost_usd), 0),
        sum(response_time_ms), count(*)
    FROM inserted
    GROUP BY 1, 2, 3
    -- A fixed order keeps two replicas from deadlocking on the same rows.
    ORDER BY 1, 2, 3
    ON CONFLICT (day, model, purpose) DO UPDATE SET
        calls = d.calls + excluded.calls,
        errors = d.errors + excluded.errors,
        input_tokens = d.input_tokens + excluded.input_tokens,
        cached_input_tokens = d.cached_input_tokens + excluded.cached_input_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        reasoning_tokens = d.reasoning_tokens + excluded.reasoning_tokens,
        total_tokens = d.total_tokens + excluded.total_tokens,
        input_cost_usd = d.input_cost_usd + excluded.input_cost_usd,
        output_cost_usd = d.output_cost_usd + excluded.output_cost_usd,
        cost_usd = d.cost_usd + excluded.cost_usd,
        latency_ms_sum = d.latency_ms_sum + excluded.latency_ms_sum,
        latency_count = d.latency_count + excluded.latency_count
    RETURNING 1
)
SELECT count(*) FROM inserted
"""

# Errors that mean "the database is not there", as opposed to "this batch is bad".
UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InsufficientResourcesError,
)


def batch_arguments(records: list[UsageRecord]) -> list[list[object]]:
    """The batch as one list per column, in ``COLUMNS`` order."""
    return [[getattr(r, name) for r in records] for name in NAMES]


async def write_batch(
    conn: asyncpg.Connection | asyncpg.Pool, records: list[UsageRecord]
) -> int:
    """Store *records* and their rollup; return how many were new."""
    return await conn.fetchval(INSERT_BATCH, *batch_arguments(records))


class Spool:
    """
    Append-only JSON-lines segments, replayed oldest first.

    Segments are named by a rising number; appends go to the newest one, and
    ``rotate`` starts a new one so that replay never reads a file still being
    written. A torn last line (a crash mid-append) is skipped on replay.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.rejected = directory / "rejected.jsonl"
        segments = self.segments()
        self.next_number = int(segments[-1].stem) + 1 if segments else 1
        self.depth = sum(count_lines(p) for p in segments)
        self.current: Path | None = None

    def segments(self) -> list[Path]:
        return sorted(
            (p for p in self.directory.glob("*.jsonl") if p.stem.isdigit()),
            key=lambda p: int(p.stem),
        )

    def rotate(self) -> None:
        self.current = None

    def append(self, records: list[UsageRecord]) -> None:
        """Append and fsync; blocking, so callers run it in a thread."""
        if self.current is None:
            self.current = self.directory / f"{self.next_number:012d}.jsonl"
            self.next_number += 1
        data = b"".join(r.to_json() + b"\n" for r in records)
        with open(self.current, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.depth += len(records)

    def reject(self, records: list[UsageRecord]) -> None:
        with open(self.rejected, "ab") as f:
            f.write(b"".join(r.to_json() + b"\n" for r in records))
            f.flush()
            os.fsync(f.fileno())


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def read_segment(path: Path) -> list[UsageRecord]:
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(UsageRecord.from_json(line))
            except (ValueError, TypeError, KeyError):
                log.warning("spool %s line %d unreadable, skipped", path.name, number)
    return records


class Recorder:
    """Batches usage records into PostgreSQL, spooling whatever it cannot write."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: RecorderSettings,
        spool_dir: Path,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.spool = Spool(spool_dir)
        # Called with each submitted record, in the request path: keep them cheap.
        self.observers: list[Callable[[UsageRecord], None]] = []
        self._queue: list[UsageRecord] = []
        self._overflow: list[UsageRecord] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._retry_s = settings.retry_initial_s
        self._next_replay = 0.0
        self.database_ok = True

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._overflow)

    @property
    def spool_depth(self) -> int:
        return self.spool.depth

    def submit(self, record: UsageRecord) -> None:
        """Take *record* for writing; never blocks, never raises."""
        for observe in self.observers:
            try:
                observe(record)
            except Exception:
                log.exception("usage observer failed")
        if len(self._queue) >= self.settings.max_queue or self._closing:
            self._overflow.append(record)
        else:
            self._queue.append(record)
        if len(self._queue) >= self.settings.batch_size or self._overflow:
            self._wakeup.set()

    async def start(self) -> None:
        if self.spool.depth:
            log.info("spool holds %d records from before; replaying", self.spool.depth)
        self._task = asyncio.create_task(self._run(), name="recorder")

    async def close(self) -> None:
        """Write or spool everything still waiting, then stop."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drain()
        waiting = self.spool.depth
        if waiting:
            log.warning(
                "stopped with %d records in the spool; replayed at next start", waiting
            )

    async def flush(self) -> None:
        """Write everything waiting now (for tests and shutdown)."""
        await self._drain()

    async def _run(self) -> None:
        interval = self.settings.flush_interval_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), interval)
            self._wakeup.clear()
            try:
                await self._drain()
                if self.spool.depth and loop.time() >= self._next_replay:
                    await self._replay()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The loop must outlive any bug in one pass: records wait.
                log.exception("recorder pass failed")

    async def _drain(self) -> None:
        while self._queue or self._overflow:
            if self._overflow:
                overflow, self._overflow = self._overflow, []
                await self._to_spool(overflow)
            batch = self._queue[: self.settings.batch_size]
            del self._queue[: len(batch)]
            # Nothing jumps ahead of what is spooled: replay keeps arrival order.
            if self.spool.depth or not self.database_ok:
                await self._to_spool(batch)
            else:
                await self._write_or_spool(batch)

    async def _write_or_spool(self, batch: list[UsageRecord]) -> None:
        try:
            await self._write(batch)
        except UNREACHABLE as exc:
            self._mark_down(exc)
            await self._to_spool(batch)

    async def _write(self, batch: list[UsageRecord]) -> None:
        """Write *batch*; a record the database refuses is set aside, not retried."""
        try:
            await write_batch(self.pool, batch)
        except UNREACHABLE:
            raise
        except asyncpg.PostgresError as exc:
            self.metrics.write_errors += 1
            if len(batch) == 1:
                log.error(
                    "database refused record %s (%s); kept in %s",
                    batch[0].request_id,
                    exc,
                    self.spool.rejected,
                )
                await asyncio.to_thread(self.spool.reject, batch)
                return
            # Halve until the bad record is alone; the good ones get stored.
            middle = len(batch) // 2
            await self._write(batch[:middle])
            await self._write(batch[middle:])
            return
        self.metrics.rows_written += len(batch)

    def _mark_down(self, exc: BaseException) -> None:
        self.metrics.write_errors += 1
        if self.database_ok:
            log.warning("database unreachable (%s); spooling usage records", exc)
        self.database_ok = False
        loop = asyncio.get_running_loop()
        self._next_replay = loop.time() + self._retry_s
        self._retry_s = min(self._retry_s * 2, self.settings.retry_max_s)

    async def _to_spool(self, records: list[UsageRecord]) -> None:
        if not records:
            return
        try:
            await asyncio.to_thread(self.spool.append, records)
        except OSError:
            # Disk full or gone: hold the records in memory rather than lose them.
            log.exception("cannot append to the spool in %s", self.spool.directory)
            self._queue[:0] = records
            raise
        self.metrics.rows_spooled += len(records)

    async def _replay(self) -> None:
        """Replay spool segments oldest first; stop at the first failure."""
        self.spool.rotate()
        for segment in self.spool.segments():
            if segment == self.spool.current:
                break
            records = await asyncio.to_thread(read_segment, segment)
            try:
                for start in range(0, len(records), self.settings.batch_size):
                    await self._write(records[start : start + self.settings.batch_size])
            except UNREACHABLE as exc:
                self._mark_down(exc)
                return
            # Written (idempotently): a crash before this unlink replays it again.
            segment.unlink()
            self.spool.depth = max(0, self.spool.depth - len(records))
            self.metrics.rows_replayed += len(records)
        if not self.database_ok:
            log.warning("database is back; spool replayed")
        self.database_ok = True
        self._retry_s = self.settings.retry_initial_s
        self._next_replay = 0.0


def gauges(metrics: Metrics, recorder: Recorder) -> None:
    """Export the recorder's queue and spool depth."""
    metrics.gauge(
        "recorder_queue_depth",
        "Records waiting to be written.",
        lambda: recorder.queue_depth,
    )
    metrics.gauge(
        "recorder_spool_depth", "Records in the spool.", lambda: recorder.spool_depth
    )
