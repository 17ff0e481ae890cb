"""
The budget watcher: what each limit's window has spent, alerts, enforcement.

Spent per limit is what the daily rollup holds for the window, re-read every
``budgets.refresh_interval_s`` (so the spend of other replicas shows up),
plus what this process submitted to the recorder and the database does not
hold yet, added the moment each call finishes. Which of those calls the
database holds is asked by request id, in the same snapshot as the rollup
read, so a call is neither counted twice nor missed between the two.

Enforcement compares the cached figure with the limit: no I/O in the request
path. A call is admitted while its window is under the limit, and its cost is
known only when it ends, so the overshoot of a window is bounded by the cost
of the calls in flight when the limit is crossed, plus what other replicas
spend in one refresh interval (plus one recorder flush) before this replica
sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import asyncpg
import orjson
from aiohttp import web

from gateway import db
from gateway.alerts import Alert, Alerts, alerts_of
from gateway.clock import Clock
from gateway.config import BudgetSettings
from gateway.errors import BudgetExceeded
from gateway.keys import (
    ADMISSION,
    CLOCK,
    DATABASE,
    INSTANCE,
    METRICS,
    RECORDER,
    SETTINGS,
)
from gateway.limits import Limit, configured_limits, level, spent_ratio, window_bounds
from gateway.metrics import Metrics
from gateway.record import UNTAGGED, UsageRecord
from gateway.report import Language, format_usd, render_alert

log = logging.getLogger(__name__)

ALERT_KIND = "budget_alert"
# Calls waiting to be confirmed in the database; past this (a long outage)
# the oldest are forgotten, and the figure runs low until the spool replays.
MAX_PENDING = 100_000

# Longest the first read may hold up startup.
FIRST_READ_TIMEOUT_S = 3.0

# Untagged calls are under '' in the rollup, and a purpose limit names them
# "untagged", as the statistics do.
READ_SPENT = f"""
SELECT day, coalesce(nullif(purpose, ''), '{UNTAGGED}') AS purpose,
    sum(cost_usd) AS cost_usd
FROM llm_usage_daily
WHERE day >= $1 AND day < $2
GROUP BY 1, 2
"""
# A row's identity is its request id and timestamp (a client may reuse ids).
READ_STORED_KEYS = """
SELECT u.request_id, u."timestamp"
FROM llm_usage u
JOIN unnest($1::text[], $2::timestamptz[]) AS k(request_id, "timestamp")
    ON u.request_id = k.request_id AND u."timestamp" = k."timestamp"
"""


@dataclass(frozen=True, slots=True)
class BudgetState:
    limit: Limit
    window_start: datetime
    window_end: datetime
    spent_usd: Decimal

    @property
    def ratio(self) -> float:
        return spent_ratio(self.spent_usd, self.limit.limit_usd) or 0.0

    @property
    def is_exceeded(self) -> bool:
        return self.spent_usd >= self.limit.limit_usd


@dataclass(slots=True)
class Figure:
    """A limit's current window and what it has spent: what admission reads."""

    start: datetime
    end: datetime
    spent_usd: Decimal
    # The spend at which the first alert threshold is crossed.
    first_alert_usd: Decimal

    def holds(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


@dataclass(frozen=True, slots=True)
class Pending:
    day: date
    purpose: str
    cost_usd: Decimal


def covers(limit: Limit, purpose: str) -> bool:
    return limit.purpose is None or limit.purpose == purpose


def alert_scope(state: BudgetState, threshold: float) -> str:
    start = state.window_start.date().isoformat()
    return f"{start}:{state.limit.scope}:{state.limit.window}:{threshold:g}"


class BudgetWatcher:
    """Spent per limit, kept current cheaply; raises alerts and refuses calls."""

    def __init__(
        self,
        settings: BudgetSettings,
        clock: Clock,
        metrics: Metrics,
        alerts: Alerts,
        holder: str,
        language: Language = "en",
    ) -> None:
        self.settings = settings
        self.limits = configured_limits(settings)
        self.clock = clock
        self.metrics = metrics
        self.alerts = alerts
        self.holder = holder
        self.language: Language = language
        self.pool: asyncpg.Pool | None = None
        # (day, purpose) -> cost, as the rollup held it at the last refresh.
        self._stored: dict[tuple[date, str], Decimal] = {}
        # (request id, timestamp) -> cost, of calls not seen stored yet.
        self._pending: dict[tuple[str, datetime], Pending] = {}
        # limit -> its current window's figure: what enforcement compares.
        self._figures: dict[Limit, Figure] = {}
        first = min(settings.alert_thresholds, default=1.0)
        self._first_alert = Decimal(str(first))
        # Alert scopes this process claimed or saw claimed: no second query.
        self._alerted: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._database_ok = True

    @property
    def has_limits(self) -> bool:
        return bool(self.limits)

    # -- the request path ----------------------------------------------------

    def admit(self, tags: dict[str, str | None]) -> None:
        """Refuse (BudgetExceeded) a call whose scope is over an enforced limit."""
        now = self.clock()
        purpose = tags.get("purpose") or UNTAGGED
        for limit in self.limits:
            if not covers(limit, purpose):
                continue
            figure = self.figure(limit, now)
            if figure.spent_usd >= limit.limit_usd:
                raise BudgetExceeded(
                    f"budget {limit.name} exceeded: spent "
                    f"{format_small_usd(figure.spent_usd)} of "
                    f"{format_small_usd(limit.limit_usd)} this {limit.window}; "
                    f"calls are refused until {figure.end.isoformat()}"
                )

    def observe(self, record: UsageRecord) -> None:
        """Add a finished call's cost at once (a recorder observer)."""
        cost = record.total_cost_usd
        if not cost:
            return
        purpose = record.purpose or UNTAGGED
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._pending[(record.request_id, record.timestamp)] = Pending(
            record.timestamp.astimezone(UTC).date(), purpose, cost
        )
        now = self.clock()
        for limit in self.limits:
            if not covers(limit, purpose):
                continue
            figure = self._figures.get(limit)
            if figure is None or not figure.holds(now):
                # Rebuilt from scratch, the call just added included.
                figure = self.figure(limit, now)
            elif figure.holds(record.timestamp):
                figure.spent_usd += cost
            self.metrics.budget_ratio[(limit.name, limit.window)] = float(
                figure.spent_usd / limit.limit_usd
            )
            if figure.spent_usd >= figure.first_alert_usd:
                self.check_thresholds(self.state(limit, now))

    # -- figures -------------------------------------------------------------

    def figure(self, limit: Limit, now: datetime) -> Figure:
        """The cached figure of *limit*'s window holding *now*, rebuilt if stale."""
        figure = self._figures.get(limit)
        if figure is None or not figure.holds(now):
            start, end = window_bounds(limit.window, now)
            spent = self._sum(limit, start.date(), end.date())
            figure = Figure(start, end, spent, limit.limit_usd * self._first_alert)
            self._figures[limit] = figure
        return figure

    def state(self, limit: Limit, now: datetime) -> BudgetState:
        figure = self.figure(limit, now)
        return BudgetState(limit, figure.start, figure.end, figure.spent_usd)

    def states(self) -> list[BudgetState]:
        now = self.clock()
        return [self.state(limit, now) for limit in self.limits]

    def _sum(self, limit: Limit, first: date, end: date) -> Decimal:
        total = Decimal(0)
        for (day, purpose), cost in self._stored.items():
            if first <= day < end and covers(limit, purpose):
                total += cost
        for pending in self._pending.values():
            if first <= pending.day < end and covers(limit, pending.purpose):
                total += pending.cost_usd
        return total

    async def refresh(self) -> None:
        """Re-read the windows from the database; then check every threshold."""
        if self.pool is None or not self.limits:
            return
        now = self.clock()
        first = min(window_bounds(x.window, now)[0] for x in self.limits).date()
        end = max(window_bounds(x.window, now)[1] for x in self.limits).date()
        # One snapshot: a call is either in both the rollup and the rows, or
        # in neither, because the recorder writes both in one statement.
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await conn.fetch(READ_SPENT, first, end)
            # Listed after the snapshot began: a call submitted later cannot
            # be in it, so it stays pending, and none is counted twice.
            asked = list(self._pending)
            stored = (
                await conn.fetch(
                    READ_STORED_KEYS, [k[0] for k in asked], [k[1] for k in asked]
                )
                if asked
                else []
            )
        for row in stored:
            self._pending.pop((row["request_id"], row["timestamp"]), None)
        for key in asked:
            pending = self._pending.get(key)
            if pending is not None and pending.day < first:
                del self._pending[key]
        self._stored = {(r["day"], r["purpose"]): r["cost_usd"] for r in rows}
        self._figures.clear()
        for state in self.states():
            self.metrics.budget_ratio[(state.limit.name, state.limit.window)] = (
                state.ratio
            )
            self.check_thresholds(state)

    async def refresh_quietly(self) -> None:
        """``refresh``, with an unreachable database logged once, not raised."""
        try:
            await self.refresh()
        except (asyncpg.PostgresError, *db.UNREACHABLE):
            if self._database_ok:
                log.warning(
                    "cannot read budget spend; limits use the last figures plus "
                    "this process's calls until the database answers",
                    exc_info=True,
                )
            self._database_ok = False
            return
        self._database_ok = True

    # -- alerts --------------------------------------------------------------

    def check_thresholds(self, state: BudgetState) -> None:
        """Start raising an alert for each threshold the window has crossed."""
        self.metrics.budget_ratio[(state.limit.name, state.limit.window)] = state.ratio
        for threshold in self.settings.alert_thresholds:
            if state.ratio < threshold:
                break
            scope = alert_scope(state, threshold)
            if scope in self._alerted:
                continue
            self._alerted.add(scope)
            task = asyncio.get_running_loop().create_task(
                self.raise_alert(state, threshold, scope), name=f"alert:{scope}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def raise_alert(
        self, state: BudgetState, threshold: float, scope: str
    ) -> None:
        """Claim the alert across replicas; the one that wins sends it."""
        pool = self.pool
        if pool is None:
            self._alerted.discard(scope)
            return
        facts = {
            "budget": state.limit.name,
            "scope": state.limit.scope,
            "window": state.limit.window,
            "window_start": state.window_start.isoformat(),
            "threshold": threshold,
            "spent_usd": money(state.spent_usd),
            "limit_usd": money(state.limit.limit_usd),
        }
        try:
            claimed = await db.claim_once(pool, ALERT_KIND, scope, self.holder, facts)
        except (asyncpg.PostgresError, *db.UNREACHABLE) as exc:
            # Try again at the next check rather than lose the alert.
            log.warning("cannot claim budget alert %s: %s", scope, exc)
            self._alerted.discard(scope)
            return
        if not claimed:
            log.debug("budget alert %s already raised elsewhere", scope)
            return
        enforced = self.settings.enforce
        args = (state.limit, threshold, state.spent_usd, state.window_start, enforced)
        alert = Alert(
            text=render_alert(*args, self.language),
            html=render_alert(*args, self.language, as_html=True),
            facts=facts,
        )

        async def delivered() -> None:
            await db.mark_done(pool, ALERT_KIND, scope)

        self.alerts.send(alert, delivered)

    async def wait_idle(self) -> None:
        """Wait for alert claims under way, then their deliveries (tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.alerts.wait_delivered()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def format_small_usd(value: Decimal) -> str:
    """Dollars to 4 places, or 6 below a cent, so tiny limits still read."""
    return format_usd(value) if abs(value) >= Decimal("0.01") else f"${value:.6f}"


def money(value: Decimal) -> float:
    """Money at the JSON edge: a number, rounded to 6 places."""
    return float(round(value, 6))


BUDGETS = web.AppKey("budgets", BudgetWatcher)


async def get_budget(request: web.Request) -> web.Response:
    watcher = request.app[BUDGETS]
    thresholds = watcher.settings.alert_thresholds
    body = {
        "budgets": [
            {
                "name": s.limit.name,
                "scope": s.limit.scope,
                "window": s.limit.window,
                "limit_usd": money(s.limit.limit_usd),
                "spent_usd": money(s.spent_usd),
                "ratio": round(s.ratio, 6),
                "level": level(s.ratio, thresholds),
                "enforce": watcher.settings.enforce,
                "window_start": s.window_start.isoformat(),
                "window_end": s.window_end.isoformat(),
            }
            for s in watcher.states()
        ]
    }
    return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())


def setup(app: web.Application) -> None:
    settings = app[SETTINGS]
    watcher = BudgetWatcher(
        settings.budgets,
        app[CLOCK],
        app[METRICS],
        alerts_of(app),
        app[INSTANCE],
        settings.telegram.language,
    )
    app[BUDGETS] = watcher
    if settings.budgets.enforce and watcher.has_limits:
        app[ADMISSION].append(watcher.admit)
    app.router.add_get("/api/budget", get_budget)

    refreshing: list[asyncio.Task[None]] = []

    async def context(app: web.Application) -> AsyncIterator[None]:
        watcher.pool = app[DATABASE].pool
        if watcher.has_limits:
            app[RECORDER].observers.append(watcher.observe)
        yield
        for task in refreshing:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await watcher.close()

    # Watching starts once every context is up, so that the first alerts
    # find every channel (the bot's included) in place.
    async def start_watching(app: web.Application) -> None:
        if not watcher.has_limits:
            return
        # Imported here: gateway.app imports this module to wire it.
        from gateway.app import run_every, spawn

        # Read once before the first call is served, so enforcement starts
        # from the stored spend; a database that is away does not hold it up.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watcher.refresh_quietly(), FIRST_READ_TIMEOUT_S)
        interval_s = settings.budgets.refresh_interval_s

        async def keep_fresh() -> None:
            await asyncio.sleep(interval_s)
            await run_every(interval_s, watcher.refresh_quietly, "budget refresh")

        refreshing.append(spawn(app, keep_fresh(), "budget refresh"))

    app.cleanup_ctx.append(context)
    app.on_startup.append(start_watching)
