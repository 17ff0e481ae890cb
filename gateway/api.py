"""
The HTTP API of recorded usage: ``/api/...`` and ``/metrics``.

Handlers read and check their parameters, ask :mod:`gateway.stats` (or
:mod:`gateway.ingest`) for plain values, and render them. Money leaves here,
and only here, as a JSON number rounded to 6 decimals; times leave as ISO 8601
in UTC. A bad parameter is a 400 that names it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, cast

import asyncpg
import orjson
from aiohttp import web

from gateway import access, db, ingest, openapi, stats
from gateway.errors import BadParameter, BadRequest, GatewayError
from gateway.keys import CLOCK, DATABASE, METRICS, SETTINGS, STARTED_AT
from gateway.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

USD_PLACES = Decimal("0.000001")
MAX_FILTER_CHARS = 256
MAX_HISTORY_DAYS = 366
MAX_CYCLES = 500
MAX_CALLS = 1000
EXPORT_CHUNK_ROWS = 1000
FILTER_PARAMS = ("purpose", "model", "ticker", "cycle_id")
# A spreadsheet runs a cell that starts with one of these as a formula, also
# after leading spaces, and some take the full-width forms for the ASCII ones.
FORMULA_STARTS = (
    "=",
    "+",
    "-",
    "@",
    "\t",
    "\r",
    "\uff1d",
    "\uff0b",
    "\uff0d",
    "\uff20",
)


class DatabaseUnavailable(GatewayError):
    status, code = 503, "database_unavailable"


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """A database that is away is a 503 saying so, not a 500 of ours."""
    try:
        yield
    except Exception as exc:
        if not db.is_unreachable(exc):
            raise
        raise DatabaseUnavailable(
            "the usage database cannot be reached; calls are still recorded"
            " and will show once it is back"
        ) from exc


def setup(app: web.Application) -> None:
    """Register the usage API, the metrics endpoint and their access rules."""
    access.setup(app)
    ingest.setup(app)
    app.router.add_get("/api/token-usage", token_usage)
    app.router.add_get("/api/token-usage/history", token_usage_history)
    app.router.add_get("/api/token-usage/cycles", token_usage_cycles)
    app.router.add_get("/api/token-usage/calls", token_usage_calls)
    app.router.add_get("/api/token-usage/export.csv", export_csv)
    app.router.add_post("/api/usage", post_usage)
    app.router.add_get("/api/openapi.json", openapi_document)
    app.router.add_get("/metrics", metrics)


# -- rendering ----------------------------------------------------------------


def usd(value: Decimal | None) -> float | None:
    """Money as a JSON number: rounded to 6 decimals, half to even."""
    if value is None:
        return None
    return float(Decimal(value).quantize(USD_PLACES, rounding=ROUND_HALF_EVEN))


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json"
    )


def render_breakdown(table: Mapping[str, stats.Totals]) -> dict[str, Any]:
    return {
        key: {"tokens": t.total_tokens, "cost": usd(t.cost_usd), "calls": t.calls}
        for key, t in sorted(table.items())
    }


def render_budget(state: stats.BudgetState) -> dict[str, Any]:
    return {
        "window": state.window,
        "limit_usd": usd(state.limit_usd),
        "spent_usd": usd(state.spent_usd),
        "ratio": None if state.ratio is None else round(state.ratio, 6),
        "level": state.level,
    }


def render_summary(
    summary: stats.Summary, now: datetime, budgets: Mapping[str, stats.BudgetState]
) -> dict[str, Any]:
    totals = summary.totals
    return {
        "period": summary.period.name,
        "from": iso(summary.period.start),
        "to": iso(now),
        "total_tokens": totals.total_tokens,
        "total_cost_usd": usd(totals.cost_usd),
        "input_tokens": totals.input_tokens,
        "cached_input_tokens": totals.cached_input_tokens,
        "output_tokens": totals.output_tokens,
        "reasoning_tokens": totals.reasoning_tokens,
        "errors_count": totals.errors,
        "breakdown_by_model": render_breakdown(summary.by_model),
        "breakdown_by_purpose": render_breakdown(summary.by_purpose),
        "breakdown_by_ticker": render_breakdown(summary.by_ticker),
        "api_calls_count": totals.calls,
        "avg_tokens_per_call": totals.avg_tokens_per_call,
        "avg_response_time_ms": totals.avg_response_time_ms,
        "budget": {name: render_budget(state) for name, state in budgets.items()},
    }


def render_call(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "timestamp": iso(row["timestamp"]),
        "request_id": row["request_id"],
        "model": row["model"],
        "purpose": row["purpose"],
        "ticker": row["ticker"],
        "cycle_id": row["cycle_id"],
        "tokens": row["total_tokens"],
        "input_tokens": row["input_tokens"],
        "cached_input_tokens": row["cached_input_tokens"],
        "output_tokens": row["output_tokens"],
        "reasoning_tokens": row["reasoning_tokens"],
        "cost": usd(row["total_cost_usd"]),
        "fee_cost": usd(row["fee_cost_usd"]),
        "web_search_calls": row["web_search_calls"],
        "file_search_calls": row["file_search_calls"],
        "service_tier": row["service_tier"],
        "response_time_ms": row["response_time_ms"],
        "status": row["status"],
        "streamed": row["streamed"],
        "upstream": row["upstream"],
        "endpoint": row["endpoint"],
        "error": row["error"],
    }


def render_cycle(cycle: stats.CycleTotals) -> dict[str, Any]:
    return {
        "cycle_id": cycle.cycle_id,
        "calls": cycle.calls,
        "tokens": cycle.total_tokens,
        "cost": usd(cycle.cost_usd),
        "tickers": cycle.tickers,
        "purposes": cycle.purposes,
        "first_call": iso(cycle.first_call),
        "last_call": iso(cycle.last_call),
    }


# -- parameters ---------------------------------------------------------------


def read_choice(
    request: web.Request, name: str, choices: tuple[str, ...], default: str
) -> str:
    value = request.query.get(name, default)
    if value not in choices:
        raise BadParameter(
            f"{name} must be one of {', '.join(choices)}, not {value[:40]!r}",
            param=name,
        )
    return value


def read_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    # int() also takes "+5", " 5" and "5_000"; a plain digit string is clearer.
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise BadParameter(f"{name} must be a whole number", param=name)
    value = int(text)
    if not low <= value <= high:
        raise BadParameter(f"{name} must be from {low} to {high}", param=name)
    return value


def read_filters(request: web.Request) -> stats.Filters:
    """The filters of *request*; an empty value is no filter."""
    found: dict[str, str] = {}
    for name in FILTER_PARAMS:
        values = request.query.getall(name, [])
        if len(values) > 1:
            raise BadParameter(f"{name} is given more than once", param=name)
        if not values or values[0] == "":
            continue
        value = values[0]
        if len(value) > MAX_FILTER_CHARS or not ingest.has_no_control_chars(value):
            raise BadParameter(
                f"{name} must be text of at most {MAX_FILTER_CHARS} characters"
                " without control characters",
                param=name,
            )
        found[name] = value
    return stats.Filters(**found)


def read_moment(request: web.Request, name: str, *, is_end: bool) -> datetime | None:
    """
    An ISO timestamp or date from the query, in UTC.

    A date as a start means its midnight; as an end it means the whole day,
    so ``from=2030-03-01&to=2030-03-01`` is that one day. A timestamp without
    an offset is UTC.
    """
    text = request.query.get(name)
    if not text:
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            if is_end:
                day += timedelta(days=1)
            return datetime.combine(day, time.min, UTC)
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        # Near year 1 or 9999 an offset can push the moment out of range.
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadParameter(
            f"{name} must be an ISO 8601 date or timestamp", param=name
        ) from None


# -- handlers -----------------------------------------------------------------


def pool_of(request: web.Request) -> asyncpg.Pool:
    return request.app[DATABASE].pool


async def token_usage(request: web.Request) -> web.Response:
    """Totals, breakdowns and budgets of one period."""
    name = read_choice(request, "period", stats.PERIODS, "today")
    filters = read_filters(request)
    now = request.app[CLOCK]()
    period = stats.resolve_period(
        cast(stats.PeriodName, name), now, request.app[STARTED_AT]
    )

    pool = pool_of(request)
    with database_errors():
        summary = await stats.summarize(pool, period, filters)
        budgets = await stats.budget_states(pool, request.app[SETTINGS].budgets, now)

    return json_response(render_summary(summary, now, budgets))


async def token_usage_history(request: web.Request) -> web.Response:
    days = read_int(request, "days", 30, 1, MAX_HISTORY_DAYS)
    filters = read_filters(request)
    today = request.app[CLOCK]().astimezone(UTC).date()

    with database_errors():
        history = await stats.daily_history(pool_of(request), today, days, filters)

    data = [
        {
            "date": entry.day.isoformat(),
            "tokens": entry.total_tokens,
            "cost": usd(entry.cost_usd),
            "calls": entry.calls,
        }
        for entry in history
    ]
    return json_response({"days": days, "data": data})


async def token_usage_cycles(request: web.Request) -> web.Response:
    limit = read_int(request, "limit", 20, 1, MAX_CYCLES)
    filters = read_filters(request)

    with database_errors():
        cycles = await stats.latest_cycles(pool_of(request), limit, filters)

    return json_response({"cycles": [render_cycle(c) for c in cycles]})


async def token_usage_calls(request: web.Request) -> web.Response:
    limit = read_int(request, "limit", 50, 1, MAX_CALLS)
    filters = read_filters(request)

    with database_errors():
        rows = await stats.latest_calls(pool_of(request), limit, filters)

    return json_response({"calls": [render_call(row) for row in rows]})


def csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        value = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if isinstance(value, str) and (
        value.startswith(FORMULA_STARTS) or value.lstrip().startswith(FORMULA_STARTS)
    ):
        return "'" + value
    return value


def csv_lines(rows: list[Any]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows([csv_cell(value) for value in row] for row in rows)
    return buffer.getvalue().encode()


async def export_csv(request: web.Request) -> web.StreamResponse:
    """The raw rows of a time range as CSV, written as the cursor reads them."""
    start = read_moment(request, "from", is_end=False)
    end = read_moment(request, "to", is_end=True)
    if start is not None and end is not None and end <= start:
        raise BadParameter("to must be later than from", param="to")
    filters = read_filters(request)

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="tallygate-usage.csv"',
            "Cache-Control": "no-store",
        }
    )
    rows = stats.iterate_rows(pool_of(request), start, end, filters, EXPORT_CHUNK_ROWS)
    # The first chunk is read before the headers go out, so a database that
    # does not answer is still an error response rather than an empty file.
    with database_errors():
        first = await anext(rows, None)
    written = 0
    try:
        await response.prepare(request)
        await response.write(csv_lines([stats.EXPORT_COLUMNS]))
        chunk = first
        while chunk is not None:
            await response.write(csv_lines(chunk))
            written += len(chunk)
            chunk = await anext(rows, None)
    finally:
        await rows.aclose()
    await response.write_eof()
    log.info("exported %d rows", written, extra={"rows": written})

    return response


async def post_usage(request: web.Request) -> web.Response:
    """Record a call made elsewhere, priced like a proxied one."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be a JSON object") from None

    answer, duplicate = await ingest.ingest(request.app, body)

    rendered = {
        "id": answer.id,
        "request_id": answer.request_id,
        "cost_usd": usd(answer.total_cost_usd),
        "input_cost_usd": usd(answer.input_cost_usd),
        "output_cost_usd": usd(answer.output_cost_usd),
        "fee_cost_usd": usd(answer.fee_cost_usd),
        "price_source": answer.price_source,
        "duplicate": duplicate,
    }
    return json_response(rendered, status=200 if duplicate else 201)


async def openapi_document(request: web.Request) -> web.Response:
    return json_response(openapi.document())


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
