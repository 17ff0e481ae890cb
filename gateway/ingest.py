"""
Calls made elsewhere, recorded as if they had gone through the proxy.

A client that calls an LLM directly posts what the call used to
``/api/usage``; it is checked field by field, priced by the same price book at
its own timestamp, and stored as a proxied call's row is (endpoint
``ingest``): through the recorder's queue, or, for a post with a request id,
by the recorder's batch writer at once, as below.

A ``request_id`` makes the post idempotent. A repeat that arrives while the
first is still being stored finds it among the recent posts this process
holds. Otherwise the stored row is looked up and, if there is none, the
record is inserted, both on one connection under a transaction lock on the
id, so that a replica posting the same id at the same moment waits and then
finds the row (the database's unique key, request id and timestamp, cannot
tell two replicas' stamps apart). While the database is away the record goes
the recorder's way, to the spool, and the recent posts and the unique key
are what hold.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from aiohttp import web

from gateway import stats
from gateway.errors import BadParameter, BadRequest
from gateway.keys import CLOCK, DATABASE, PRICES, RECORDER, SETTINGS
from gateway.pricing import PriceBook
from gateway.record import UsageRecord, new_request_id
from gateway.recorder import REFUSED, write_batch
from gateway.usage import MAX_MODEL_CHARS, MAX_TOKENS, Usage, service_tier_name

log = logging.getLogger(__name__)

ENDPOINT = "ingest"
DEFAULT_UPSTREAM = "external"
MAX_TAG_CHARS = 128
MAX_NAME_CHARS = 64
# Visible ASCII, as for the X-Request-Id header of proxied calls.
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# Text the API takes (names, tags, filters): anything but control
# characters. The OpenAPI document publishes this very pattern.
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f-\x9f]*$"
_NO_CONTROL_CHARS = re.compile(NO_CONTROL_CHARS)
# A day: anything longer is a unit mistake, not a latency.
MAX_RESPONSE_TIME_MS = 86_400_000.0
# Clocks drift; a call stamped further ahead than this is a mistake.
MAX_CLOCK_SKEW = timedelta(minutes=5)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
# How many request ids this process remembers for repeats not yet stored.
MAX_RECENT_IDS = 10_000
# Longest a post waits for its row to be written before answering id null.
MAX_STORE_WAIT_S = 5.0

FIELDS = frozenset(
    {
        "model",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
        "purpose",
        "ticker",
        "cycle_id",
        "response_time_ms",
        "timestamp",
        "request_id",
        "upstream",
        "provider",
        "service_tier",
        "web_search_calls",
        "file_search_calls",
    }
)

# Errors of the lookup that mean "the database is not answering": the post
# is still taken (the recorder spools it), only the lookup is skipped.
LOOKUP_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# Held by a post while it looks its request id up and stores it: a replica
# posting the same id waits, then finds the row.
LOCK_REQUEST_ID = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"


@dataclass(frozen=True, slots=True)
class Ingested:
    """What a post answers: the stored row (id None if not written yet)."""

    id: int | None
    request_id: str
    input_cost_usd: Decimal | None
    output_cost_usd: Decimal | None
    total_cost_usd: Decimal | None
    fee_cost_usd: Decimal | None
    price_source: str | None


class RecentPosts:
    """Request ids posted lately, each with the answer its first post gave."""

    def __init__(self, limit: int = MAX_RECENT_IDS) -> None:
        self.limit = limit
        self._answers: OrderedDict[str, asyncio.Future[Ingested | None]] = OrderedDict()

    def get(self, request_id: str) -> asyncio.Future[Ingested | None] | None:
        return self._answers.get(request_id)

    def start(self, request_id: str) -> asyncio.Future[Ingested | None]:
        future = asyncio.get_running_loop().create_future()
        self._answers[request_id] = future
        while len(self._answers) > self.limit:
            self._answers.popitem(last=False)
        return future

    def forget(self, request_id: str) -> None:
        self._answers.pop(request_id, None)


RECENT = web.AppKey("ingest_recent", RecentPosts)


def setup(app: web.Application) -> None:
    app[RECENT] = RecentPosts()
    # The proxy sets the one price book when it is wired in; this one stands
    # in for an application built without it.
    if PRICES not in app:
        app[PRICES] = PriceBook(app[SETTINGS].pricing)


# -- checking the body --------------------------------------------------------


def has_no_control_chars(value: str) -> bool:
    # fullmatch: a bare $ would also match before a final newline.
    return _NO_CONTROL_CHARS.fullmatch(value) is not None


def read_count(body: dict[str, Any], name: str, *, required: bool) -> int:
    value = body.get(name)
    if value is None:
        if required:
            raise BadParameter(f"{name} is required", param=name)
        return 0
    # bool is an int to Python, and 3.0 tokens is not a count.
    if type(value) is not int or not 0 <= value <= MAX_TOKENS:
        raise BadParameter(
            f"{name} must be a whole number from 0 to {MAX_TOKENS}", param=name
        )
    return value


def read_text(
    body: dict[str, Any], name: str, max_chars: int, *, required: bool = False
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadParameter(f"{name} is required", param=name)
        return None
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise BadParameter(
            f"{name} must be text of 1 to {max_chars} characters", param=name
        )
    if not has_no_control_chars(value):
        raise BadParameter(f"{name} must not hold control characters", param=name)
    return value


def read_response_time_ms(body: dict[str, Any]) -> float | None:
    """The call's latency; None when not given, so no average counts it."""
    value = body.get("response_time_ms")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_RESPONSE_TIME_MS
    ):
        raise BadParameter(
            f"response_time_ms must be a number from 0 to {MAX_RESPONSE_TIME_MS:.0f}",
            param="response_time_ms",
        )
    return float(value)


def read_timestamp(body: dict[str, Any], now: datetime) -> datetime:
    value = body.get("timestamp")
    if value is None:
        return now
    if not isinstance(value, str) or len(value) > 64:
        raise BadParameter("timestamp must be an ISO 8601 string", param="timestamp")
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        # Near year 1 or 9999 an offset can push the moment out of range.
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadParameter(
            "timestamp must be an ISO 8601 string", param="timestamp"
        ) from None
    if not EARLIEST <= moment <= now + MAX_CLOCK_SKEW:
        raise BadParameter(
            "timestamp must be after 2000 and not in the future", param="timestamp"
        )
    return moment


def read_request_id(body: dict[str, Any]) -> str | None:
    value = body.get("request_id")
    if value is None:
        return None
    if not isinstance(value, str) or not REQUEST_ID.fullmatch(value):
        raise BadParameter(
            "request_id must be 1 to 128 visible ASCII characters", param="request_id"
        )
    return value


def read_service_tier(body: dict[str, Any]) -> str | None:
    value = body.get("service_tier")
    if value is None:
        return None
    tier = service_tier_name(value)
    if tier is None:
        raise BadParameter(
            "service_tier must be a lower-case word of at most 32 characters "
            "(default, flex, priority)",
            param="service_tier",
        )
    return tier


def build_record(body: Any, now: datetime) -> tuple[UsageRecord, str | None]:
    """
    Check *body* and return the unpriced record and the price provider named.

    Raise BadParameter naming the first field that is missing, of the wrong
    type, out of bounds, or unknown.
    """
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise BadParameter(f"unknown field {unknown[0][:64]!r}", param=unknown[0][:64])
    model = read_text(body, "model", MAX_MODEL_CHARS, required=True)
    input_tokens = read_count(body, "input_tokens", required=True)
    output_tokens = read_count(body, "output_tokens", required=True)
    cached = read_count(body, "cached_input_tokens", required=False)
    reasoning = read_count(body, "reasoning_tokens", required=False)
    if cached > input_tokens:
        raise BadParameter(
            "cached_input_tokens cannot exceed input_tokens",
            param="cached_input_tokens",
        )
    if reasoning > output_tokens:
        raise BadParameter(
            "reasoning_tokens cannot exceed output_tokens", param="reasoning_tokens"
        )
    request_id = read_request_id(body)
    record = UsageRecord(
        request_id=request_id or new_request_id(),
        timestamp=read_timestamp(body, now),
        model=model or "",
        upstream=read_text(body, "upstream", MAX_NAME_CHARS) or DEFAULT_UPSTREAM,
        endpoint=ENDPOINT,
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
        total_tokens=input_tokens + output_tokens,
        purpose=read_text(body, "purpose", MAX_TAG_CHARS),
        ticker=read_text(body, "ticker", MAX_TAG_CHARS),
        cycle_id=read_text(body, "cycle_id", MAX_TAG_CHARS),
        response_time_ms=read_response_time_ms(body),
        service_tier=read_service_tier(body),
        web_search_calls=read_count(body, "web_search_calls", required=False),
        file_search_calls=read_count(body, "file_search_calls", required=False),
    )
    return record, read_text(body, "provider", MAX_NAME_CHARS)


# -- recording ----------------------------------------------------------------


def price_provider(
    app: web.Application, record: UsageRecord, named: str | None
) -> str | None:
    """
    The catalog provider to price with: the one named, else that of the
    configured upstream named, else the upstream's own name, else none.
    """
    if named is not None:
        return named
    if record.upstream == DEFAULT_UPSTREAM:
        return None
    upstream = app[SETTINGS].upstreams.get(record.upstream)
    if upstream is not None:
        return upstream.provider or record.upstream
    return record.upstream


def price(app: web.Application, record: UsageRecord, provider: str | None) -> None:
    usage = Usage(
        input_tokens=record.input_tokens,
        cached_input_tokens=record.cached_input_tokens,
        output_tokens=record.output_tokens,
        reasoning_tokens=record.reasoning_tokens,
        total_tokens=record.total_tokens,
        web_search_calls=record.web_search_calls,
        file_search_calls=record.file_search_calls,
    )
    cost = app[PRICES].cost(
        record.model,
        usage,
        provider=provider,
        at=record.timestamp,
        service_tier=record.service_tier,
    )
    if cost is not None:
        record.input_cost_usd = cost.input_usd
        record.output_cost_usd = cost.output_usd
        record.total_cost_usd = cost.total_usd
        record.fee_cost_usd = cost.fee_usd
        record.price_source = cost.source


def answer_of(row: Any) -> Ingested:
    return Ingested(
        id=row["id"],
        request_id=row["request_id"],
        input_cost_usd=row["input_cost_usd"],
        output_cost_usd=row["output_cost_usd"],
        total_cost_usd=row["total_cost_usd"],
        fee_cost_usd=row["fee_cost_usd"],
        price_source=row["price_source"],
    )


async def look_up(
    app: web.Application, request_id: str, timestamp: datetime | None = None
) -> Any:
    # While the recorder knows the database is away, asking would only wait
    # for a connect timeout; the recent posts and the unique key still hold.
    if not app[RECORDER].database_ok:
        return None
    try:
        return await stats.find_call(app[DATABASE].pool, request_id, timestamp)
    except LOOKUP_ERRORS as exc:
        log.warning("cannot look up request %s (%s)", request_id, exc)
        return None


async def wait_until_stored(app: web.Application, record: UsageRecord) -> int | None:
    """
    The id of *record*'s row once written, or None when it is not written
    within a short bound (the database is away, or the row was spooled).
    """
    recorder = app[RECORDER]
    loop = asyncio.get_running_loop()
    flush_s = app[SETTINGS].recorder.flush_interval_ms / 1000
    deadline = loop.time() + min(MAX_STORE_WAIT_S, 2 * flush_s + 0.5)
    await recorder.flush()
    while True:
        row = await look_up(app, record.request_id, record.timestamp)
        if row is not None:
            return row["id"]
        if not recorder.database_ok or loop.time() >= deadline:
            return None
        # Another flush may be writing it right now.
        await asyncio.sleep(min(flush_s, 0.02))


async def record_new(
    app: web.Application, record: UsageRecord, provider: str | None
) -> Ingested:
    price(app, record, provider)
    app[RECORDER].submit(record)
    return ingested(record, await wait_until_stored(app, record))


async def store_once(
    app: web.Application, record: UsageRecord, provider: str | None
) -> tuple[Ingested, bool] | None:
    """
    Look a posted request id up and, when it is new, store its record, on one
    connection under a transaction lock on the id: another replica posting
    the same id at the same moment waits, then finds this row. Return the
    answer and whether the id was stored before; None when the database
    could not do it, and the recorder's way (spooled if need be) is taken.
    """
    recorder = app[RECORDER]
    if not recorder.database_ok:
        return None
    try:
        async with app[DATABASE].pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_REQUEST_ID, record.request_id)
            row = await stats.find_call(conn, record.request_id)
            if row is not None:
                return answer_of(row), True
            price(app, record, provider)
            await write_batch(conn, [record])
            row = await stats.find_call(conn, record.request_id, record.timestamp)
    except (*LOOKUP_ERRORS, *REFUSED) as exc:
        log.warning("cannot store request %s at once (%s)", record.request_id, exc)
        return None
    recorder.notify(record)
    recorder.metrics.rows_written += 1
    return ingested(record, row["id"] if row is not None else None), False


def ingested(record: UsageRecord, row_id: int | None) -> Ingested:
    """The answer to a post whose record is new; logged once."""
    log.info(
        "ingested %s (%s, %d tokens)",
        record.request_id,
        record.model,
        record.total_tokens,
        extra={"request_id": record.request_id, "model": record.model},
    )
    return Ingested(
        id=row_id,
        request_id=record.request_id,
        input_cost_usd=record.input_cost_usd,
        output_cost_usd=record.output_cost_usd,
        total_cost_usd=record.total_cost_usd,
        fee_cost_usd=record.fee_cost_usd,
        price_source=record.price_source,
    )


async def ingest(app: web.Application, body: Any) -> tuple[Ingested, bool]:
    """
    Check, price and record one posted call; return the answer and whether
    the request id had been posted before (then nothing new is stored).
    """
    record, named_provider = build_record(body, app[CLOCK]())
    provider = price_provider(app, record, named_provider)
    if body.get("request_id") is None:
        return await record_new(app, record, provider), False

    recent = app[RECENT]
    request_id = record.request_id
    while (pending := recent.get(request_id)) is not None:
        earlier = await asyncio.shield(pending)
        if earlier is None:
            # The first post failed; this one takes its place.
            continue
        if earlier.id is None:
            row = await look_up(app, request_id)
            if row is not None:
                earlier = answer_of(row)
        return earlier, True

    future = recent.start(request_id)
    try:
        stored = await store_once(app, record, provider)
        if stored is not None:
            answer, duplicate = stored
        elif (row := await look_up(app, request_id)) is not None:
            answer, duplicate = answer_of(row), True
        else:
            answer, duplicate = await record_new(app, record, provider), False
    except BaseException:
        recent.forget(request_id)
        future.set_result(None)
        raise
    future.set_result(answer)

    return answer, duplicate
