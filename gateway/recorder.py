"""
The recorder: usage records to PostgreSQL in batches, never in the way.

``submit`` appends to an in-memory queue and returns. One writer task takes a
batch every ``flush_interval_ms`` (sooner when ``batch_size`` records wait)
and stores it: as inserts of ``statement_rows`` records each, given as JSON,
or, for a batch of ``COPY_AT_ROWS`` or more, as one binary COPY. Each
statement is its own transaction, and gives way, when it meets a row already
stored, to the insert that skips such rows. The table's triggers add the new
rows to the daily rollups.

When a write fails because the database is away (anything but a record the
database refuses), the batch goes to the spool: numbered JSON-lines segments
in the data directory, replayed oldest first, one segment per pass, with
backoff until the database answers. While it is away, and until its schema
is migrated (``schema_ready``), new batches go straight to the spool. Past
``max_queue`` waiting records, ``submit`` itself appends to the spool (a
``write(2)`` into the page cache, synced by the writer), so the records in
memory never exceed ``max_queue`` plus the batch being written, however long
an outage or a stalled write lasts.

What a SIGKILL can lose is what is in memory: the records of the current
flush interval and the batch in flight. A write that hangs (a lock, a frozen
server) past ``STALLED_WRITE_S`` sends what waits, and every record after it,
to the spool until it ends, rather than holding them until the statement
times out. Spooled records survive a SIGKILL (the page cache outlives the
process); a torn last line is skipped on replay. Writes are idempotent on
the request id, so a segment replayed twice (a crash between its write and
its removal) is stored and counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import orjson

from gateway.config import RecorderSettings
from gateway.metrics import Metrics
from gateway.record import UsageRecord, encode_json

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
    ("fee_cost_usd", "numeric"),
    ("web_search_calls", "integer"),
    ("file_search_calls", "integer"),
    ("price_source", "text"),
    ("service_tier", "text"),
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
BATCH_COLUMNS = ", ".join(f'"{name}" {type_}' for name, type_ in COLUMNS)

# A batch goes in by statements of one of two kinds; the triggers of sql/003
# and sql/004 see each statement's rows as its transition table and add them
# to the rollups in the same statement.
#
# A batch of the recorder keeping up (what one flush interval gathered) goes
# as JSON texts to INSERT_FRESH: the cheapest for the gateway, whose loop
# serves the calls (client CPU per row, batches of 40 / 200 / 1,000 rows: 9-10
# / 7 / 6 us, against 20-23 / 17-19 / 15 for COPY, whose per-batch cost is two
# round trips and whose Decimal-to-numeric encoding alone is 8-9 us a row).
# A full batch (a backlog, a replayed segment) goes as one binary COPY: the
# cheapest for the server (37 vs 63 us a row at 1,000; the JSON's parsing and
# json_to_recordset are most of the difference), so a backlog drains fastest.
COPY_AT_ROWS = 500

# A batch's records are new but for a replay or a write whose commit was never
# acknowledged, so it is first inserted as it is: the ON CONFLICT arbiter's
# speculative insertion costs the server 4-6 us of its ~55 a row (batches of
# 75 and 300). A stored row fails that statement whole, and the batch goes
# again by INSERT_BATCH, which skips the stored rows.
INSERT_FRESH = f"""
INSERT INTO llm_usage ({QUOTED})
SELECT {QUOTED} FROM json_to_recordset($1::text::json) AS b({BATCH_COLUMNS})
"""
INSERT_BATCH = f"""{INSERT_FRESH.rstrip()}
ON CONFLICT (request_id, "timestamp") DO NOTHING
"""

ROW = operator.attrgetter(*NAMES)
# asyncpg encodes a row in 14-19 us here (8-9 of them for the three costs),
# so a COPY of a thousand rows would hold the event loop for 15 ms. The rows
# are handed over this many at a time, with a turn of the loop between:
# calls in flight go on.
ROWS_PER_TURN = 64

# Errors that mean "this batch holds a record the database will never take"
# (a value out of range, a NUL in text). Every other failure, from a refused
# connection to a statement timeout or a missing table during a migration,
# says nothing about the records, so they are spooled and retried instead.
REFUSED = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    # Raised by the client before the value is sent: an integer too large for
    # its column (COPY) or past 64 bits (JSON).
    OverflowError,
    orjson.JSONEncodeError,
)

# A write that has not finished after this is taken as hung: records wait for
# it on disk, not in memory. Writes take milliseconds; a backlog's COPY, tenths.
STALLED_WRITE_S = 1.0

# A replay reads one whole segment, so this bounds its memory: 20,000 records
# measured +27 MiB of RSS while a 5-minute outage's spool was replayed.
SEGMENT_MAX_RECORDS = 2_000


def batch_arguments(records: list[UsageRecord]) -> list[str]:
    """INSERT_BATCH's one argument: the records as a JSON array of objects."""
    return [orjson.dumps(records, default=encode_json).decode()]


async def write_batch(
    conn: asyncpg.Connection | asyncpg.Pool,
    records: list[UsageRecord],
    *,
    statement_rows: int | None = None,
) -> int:
    """
    Store *records*; return how many were new (their rollup follows by trigger).

    Fewer than ``COPY_AT_ROWS`` go by inserts of *statement_rows* each (all
    in one by default), each its own transaction; more by one COPY.
    """
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as held:
            return await write_batch(held, records, statement_rows=statement_rows)
    if len(records) >= COPY_AT_ROWS:
        return await _store(conn, records, copy=True)
    # Between two inserts the server waits for the next, and a process woken
    # on its core gets that core: one statement of a flush interval's ~300
    # rows held it for some 7 ms, which at one connection on two shared cores
    # was the calls' p99 (2.5-2.9 ms, against 1.3-1.7 ms in inserts of 30 rows,
    # for 1.12-1.31x the database's CPU). Each is its own transaction, so that
    # replicas still take the rollup rows in one order (sql/004).
    step = statement_rows or len(records) or 1
    stored = 0
    for start in range(0, len(records), step):
        stored += await _store(conn, records[start : start + step])
    return stored


async def _store(
    conn: asyncpg.Connection, records: list[UsageRecord], *, copy: bool = False
) -> int:
    """Store *records* in one statement, or two when it meets a stored row."""
    arguments = None if copy else batch_arguments(records)
    # Inside a caller's transaction a failed statement must not abort it.
    guard = conn.transaction() if conn.is_in_transaction() else contextlib.nullcontext()
    try:
        async with guard:
            if arguments is not None:
                status = await conn.execute(INSERT_FRESH, *arguments)
            else:
                status = await conn.copy_records_to_table(
                    "llm_usage", records=_rows(records), columns=NAMES
                )
    # A batch holding a row already stored (a replayed segment, a write whose
    # commit was never acknowledged) fails whole.
    except asyncpg.UniqueViolationError:
        arguments = arguments or batch_arguments(records)
        status = await conn.execute(INSERT_BATCH, *arguments)
    # The command tag, "COPY <rows>" or "INSERT 0 <rows>", counts the rows stored.
    return int(status.rsplit(" ", 1)[1])


async def _rows(records: list[UsageRecord]) -> AsyncIterator[tuple]:
    """The COPY's rows, ROWS_PER_TURN to a turn of the event loop."""
    for start in range(0, len(records), ROWS_PER_TURN):
        for row in map(ROW, records[start : start + ROWS_PER_TURN]):
            yield row
        await asyncio.sleep(0)


def encode_lines(records: list[UsageRecord]) -> bytes:
    return b"".join(r.to_json() + b"\n" for r in records)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def sync_and_close(fds: list[int]) -> None:
    """fsync and close each descriptor; blocking, so run in a thread."""
    failure: OSError | None = None
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            failure = exc
        finally:
            os.close(fd)
    if failure is not None:
        raise failure


class Spool:
    """
    Append-only JSON-lines segments named by a rising number.

    Appends go to the open segment and are plain writes; ``take_unsynced``
    hands out duplicated descriptors for a thread to fsync, so the event loop
    never waits for the disk. ``rotate`` closes the open segment: only closed
    segments are replayed, and nothing ever appends to a closed one, so a
    torn line can only be the last line of a segment.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.rejected = directory / "rejected.jsonl"
        # Segment number -> lines in it, torn ones included. Empty segments
        # (a process that could open one but not write to it) are removed.
        self.counts: dict[int, int] = {}
        for path in directory.glob("*.jsonl"):
            if path.stem.isdigit():
                if lines := count_lines(path):
                    self.counts[int(path.stem)] = lines
                else:
                    path.unlink(missing_ok=True)
        self.depth = sum(self.counts.values())
        self.next_number = max(self.counts, default=0) + 1
        self.current: int | None = None
        self._fd: int | None = None
        self._dirty = False
        self._unsynced: list[int] = []

    def path(self, number: int) -> Path:
        return self.directory / f"{number:012d}.jsonl"

    def append(self, records: list[UsageRecord]) -> None:
        """Append *records* to the open segment (no fsync: see ``take_unsynced``)."""
        if not records:
            return
        data = encode_lines(records)
        if self._fd is None:
            self._open()
        assert self.current is not None
        assert self._fd is not None
        try:
            write_all(self._fd, data)
        except OSError:
            # Part of the data may be on disk, ending in a torn line: close the
            # segment so that nothing follows it. The caller keeps the records,
            # so the part written is replayed twice, which stores it once. A
            # segment that took nothing goes: a full disk would otherwise
            # leave an empty one per try.
            number = self.current
            self.rotate()
            if not self.counts.get(number, 0):
                self.forget(number)
                with contextlib.suppress(OSError):
                    self.path(number).unlink(missing_ok=True)
            raise
        self.counts[self.current] += len(records)
        self.depth += len(records)
        self._dirty = True
        if self.counts[self.current] >= SEGMENT_MAX_RECORDS:
            self.rotate()

    def _open(self) -> None:
        number = self.next_number
        self.next_number += 1
        # Readable by the gateway's user only, and not executable (os.open's
        # default mode is 0o777 less the umask).
        self._fd = os.open(
            self.path(number),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL,
            0o600,
        )
        self.current = number
        self.counts[number] = 0
        # The new file's name must reach the disk too, not only its lines.
        self._unsynced.append(os.open(self.directory, os.O_RDONLY))

    def take_unsynced(self) -> list[int]:
        """Descriptors that need an fsync, each the caller's to close."""
        if self._dirty and self._fd is not None:
            self._unsynced.append(os.dup(self._fd))
        self._dirty = False
        fds, self._unsynced = self._unsynced, []
        return fds

    def rotate(self) -> None:
        """Close the open segment; the next append starts a new one."""
        if self._fd is None:
            return
        if self._dirty:
            self._unsynced.append(os.dup(self._fd))
            self._dirty = False
        os.close(self._fd)
        self._fd = None
        self.current = None

    def oldest_closed(self) -> int | None:
        closed = [n for n in self.counts if n != self.current]
        return min(closed, default=None)

    def remove(self, number: int) -> None:
        self.path(number).unlink(missing_ok=True)
        self.forget(number)

    def forget(self, number: int) -> None:
        """Stop counting segment *number*, whatever became of its file."""
        self.depth -= self.counts.pop(number, 0)

    def reject(self, records: list[UsageRecord]) -> None:
        with open(self.rejected, "ab") as f:
            f.write(encode_lines(records))
            f.flush()
            os.fsync(f.fileno())


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def read_segment(path: Path) -> list[UsageRecord]:
    """The records of one segment; unreadable (torn) lines are logged and skipped."""
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            # Any failure: a torn line, or one edited into nonsense (a cost of
            # "abc", a year past 9999) must cost that line only, not the spool.
            try:
                records.append(UsageRecord.from_json(line))
            except Exception:
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
        schema_ready: asyncio.Event | None = None,
    ) -> None:
        self.pool = pool
        # Set once the migrations are applied. Before that an insert can
        # succeed on a table whose rollup trigger does not exist yet, and
        # the rollup would miss it: so until then batches go to the spool.
        self.schema_ready = schema_ready
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.spool = Spool(spool_dir)
        # Called with each submitted record, in the request path: keep them cheap.
        self.observers: list[Callable[[UsageRecord], None]] = []
        self._queue: list[UsageRecord] = []
        self._in_flight: list[UsageRecord] = []
        # Records neither the database nor the disk took; tried again each pass.
        self._held: list[UsageRecord] = []
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self._spilled_late = False
        # True while the write in flight has taken longer than STALLED_WRITE_S.
        self._stalled = False
        self._retry_s = settings.retry_initial_s
        self._next_replay = 0.0
        self._conn: asyncpg.Connection | None = None
        self.database_ok = True

    @property
    def queue_depth(self) -> int:
        """Records in memory: waiting, being written, or held after a disk error."""
        return len(self._queue) + len(self._in_flight) + len(self._held)

    @property
    def spool_depth(self) -> int:
        return self.spool.depth

    def submit(self, record: UsageRecord) -> None:
        """Take *record* for writing; never blocks, never raises."""
        self.notify(record)
        if self._closed:
            if not self._spilled_late:
                log.warning("records arrive after close; spooling them directly")
                self._spilled_late = True
            self._spill([record])
        elif self._stalled:
            self._spill([record])
        elif len(self._queue) < self.settings.max_queue:
            self._queue.append(record)
            if len(self._queue) >= self.settings.batch_size:
                self._wakeup.set()
        else:
            self._spill([record])

    def notify(self, record: UsageRecord) -> None:
        """Tell the observers of *record*, as ``submit`` does (stored elsewhere)."""
        for observe in self.observers:
            try:
                observe(record)
            except Exception:
                log.exception("usage observer failed")

    def wake(self) -> None:
        """Try the database now (it was just seen to answer), skipping backoff."""
        self._retry_s = self.settings.retry_initial_s
        self._next_replay = 0.0
        self._wakeup.set()

    async def start(self) -> None:
        if self.spool.depth:
            log.info("spool holds %d records from before; replaying", self.spool.depth)
        self._task = asyncio.create_task(self._run(), name="recorder")

    async def close(self) -> None:
        """Let the writer finish its pass, then write or spool everything left."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            # Not cancelled: a cancelled write would leave its batch in doubt.
            await self._task
            self._task = None
        async with self._lock:
            await self._drain()
            # No await between the drain and this: a record submitted now is
            # spooled by submit itself.
            self._closed = True
            self.spool.rotate()
            await self._sync_spool()
            await self._release_connection()
        if self._held:
            log.error(
                "stopped with %d records neither stored nor spooled (the database"
                " was away and %s refused them): they are lost",
                len(self._held),
                self.spool.directory,
            )
        if self.spool.depth:
            log.warning(
                "stopped with %d records in the spool; replayed at next start",
                self.spool.depth,
            )

    async def flush(self) -> None:
        """Write (or spool) everything waiting now."""
        async with self._lock:
            await self._drain()
            await self._sync_spool()

    async def _run(self) -> None:
        interval_s = self.settings.flush_interval_ms / 1000
        loop = asyncio.get_running_loop()
        # Passes begin one interval apart, however long the last one's write
        # took, so a record waits at most an interval (plus a write) for its own.
        due = loop.time() + interval_s
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(due - loop.time(), 0))
            self._wakeup.clear()
            due = loop.time() + interval_s
            try:
                async with self._lock:
                    await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The loop must outlive any bug in one pass: records wait.
                log.exception("recorder pass failed")

    def _schema_is_ready(self) -> bool:
        return self.schema_ready is None or self.schema_ready.is_set()

    async def _pass(self) -> None:
        await self._drain(whole=False)
        loop = asyncio.get_running_loop()
        if (
            (self.spool.depth or not self.database_ok)
            and self._schema_is_ready()
            and loop.time() >= self._next_replay
            and not self._stopping
        ):
            await self._replay_one()
        await self._sync_spool()

    async def _drain(self, *, whole: bool = True) -> None:
        """
        Write (or spool) the queue: all of it, or with ``whole=False`` what
        waited when the call began. What arrives during a write is then the
        next pass's batch instead of a statement of its own right after:
        draining to empty under load wrote ~23-row batches 90 times a second
        where the interval means ~10 (the database's cost is mostly per
        statement and per commit).
        """
        if self._held:
            held, self._held = self._held, []
            self._queue[:0] = held
        left = len(self._queue)
        while self._queue and (whole or left > 0):
            size = (
                self.settings.batch_size
                if whole
                else min(left, self.settings.batch_size)
            )
            batch = self._queue[:size]
            del self._queue[: len(batch)]
            left -= len(batch)
            if not self.database_ok or not self._schema_is_ready():
                self._spill(batch)
                continue
            self._in_flight = batch
            try:
                await self._write_or_spool(batch)
            finally:
                self._in_flight = []

    async def _write_or_spool(self, batch: list[UsageRecord]) -> None:
        try:
            await self._write(batch)
        except asyncio.CancelledError:
            # The write may or may not have committed: spool it and let the
            # idempotent replay decide. Synchronous, since we are cancelled.
            self._spill(batch)
            raise
        except Exception as exc:
            self._mark_down(exc)
            self._spill(batch)

    async def _write(self, batch: list[UsageRecord]) -> None:
        """Write *batch*; a record the database refuses is set aside, not retried."""
        try:
            await self._execute(batch)
        except REFUSED as exc:
            self.metrics.write_errors += 1
            if len(batch) == 1:
                log.error(
                    "database refused record %s (%s); kept in %s",
                    batch[0].request_id,
                    exc,
                    self.spool.rejected,
                )
                self.spool.reject(batch)
                return
            # Halve until the bad record is alone; the good ones get stored.
            middle = len(batch) // 2
            await self._write(batch[:middle])
            await self._write(batch[middle:])
            return
        self.metrics.rows_written += len(batch)

    async def _execute(self, batch: list[UsageRecord]) -> None:
        """
        Run the batch statement on the writer's own connection.

        Holding one connection spares each batch the pool's acquire and the
        reset statement its release sends: a round trip per batch.
        """
        stall = asyncio.get_running_loop().call_later(STALLED_WRITE_S, self._stall)
        try:
            await self._connect()
            await write_batch(
                self._conn, batch, statement_rows=self.settings.statement_rows
            )
        except REFUSED:
            raise  # the connection is fine; the batch is not
        except BaseException:
            await self._release_connection()
            raise
        finally:
            stall.cancel()
            self._stalled = False

    def _stall(self) -> None:
        """The write in flight hangs: what waits, and what comes, goes to disk."""
        log.warning(
            "a database write has taken over %g s; spooling records until it ends",
            STALLED_WRITE_S,
        )
        self._stalled = True
        waiting, self._queue = self._queue, []
        self._spill(waiting)

    async def _connect(self) -> None:
        if not self._has_connection():
            self._conn = await self.pool.acquire()

    def _has_connection(self) -> bool:
        if self._conn is None:
            return False
        try:
            if not self._conn.is_closed():
                return True
        # The pool takes back a connection it saw break; the proxy says so.
        except asyncpg.InterfaceError:
            pass
        self._conn = None
        return False

    async def _release_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # A broken connection is terminated by the pool; nothing to add.
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

    def _mark_down(self, exc: BaseException) -> None:
        self.metrics.write_errors += 1
        if self.database_ok:
            log.warning(
                "database unreachable (%s: %s); spooling usage records",
                type(exc).__name__,
                exc,
            )
        self.database_ok = False
        self._next_replay = asyncio.get_running_loop().time() + self._retry_s
        self._retry_s = min(self._retry_s * 2, self.settings.retry_max_s)

    def _mark_up(self) -> None:
        if not self.database_ok:
            log.warning("database answers again; replaying the spool")
        self.database_ok = True
        self._retry_s = self.settings.retry_initial_s
        self._next_replay = 0.0

    def _spill(self, records: list[UsageRecord]) -> None:
        """Append *records* to the spool; on a disk error, hold them in memory."""
        try:
            self.spool.append(records)
        except OSError:
            if not self._held:
                log.exception("cannot append to the spool in %s", self.spool.directory)
            self._held.extend(records)
            return
        self.metrics.rows_spooled += len(records)

    async def _sync_spool(self) -> None:
        fds = self.spool.take_unsynced()
        if fds:
            await asyncio.to_thread(sync_and_close, fds)

    async def _replay_one(self) -> None:
        """Replay the oldest closed segment; on failure leave it for later."""
        number = self.spool.oldest_closed()
        if number is None:
            self.spool.rotate()
            number = self.spool.oldest_closed()
        if number is None:
            # Nothing spooled: the next batch is the probe.
            self._mark_up()
            return
        if not self.database_ok:
            # Connect before the segment is read: while the database is away,
            # each try read and parsed 2,000 records only to fail, and left
            # the allocators a few MiB more each time (+9 MiB of RSS in a
            # 20-second outage at ~4,000 calls/s).
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._mark_down(exc)
                return
        path = self.spool.path(number)
        try:
            records = await asyncio.to_thread(read_segment, path)
        except OSError as exc:
            # Gone (removed by hand, or by another gateway sharing this data
            # directory) or unreadable: passed over so the rest still replays.
            log.error("spool segment %s cannot be read (%s); passed over", path, exc)
            self.spool.forget(number)
            self._wakeup.set()
            return
        try:
            for start in range(0, len(records), self.settings.batch_size):
                await self._write(records[start : start + self.settings.batch_size])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._mark_down(exc)
            return
        # Written, idempotently: a crash before this line replays it again.
        try:
            self.spool.remove(number)
        except OSError as exc:
            # Stored all the same: the next start replays it, stored once.
            log.error("spool segment %s cannot be removed (%s)", path, exc)
            self.spool.forget(number)
        self.metrics.rows_replayed += len(records)
        self._mark_up()
        if self.spool.depth:
            self._wakeup.set()
        else:
            log.info("spool replayed")


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
