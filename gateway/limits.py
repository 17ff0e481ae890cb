"""
Budget limits as the settings declare them, and how full each one is.

Pure logic shared by the statistics API, the budget watcher and the bot: a
``Limit`` names a scope (everything, or one purpose) and a window (a UTC day
or month); ``level`` turns spent over limit into the colour users see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from gateway.config import BudgetSettings

Window = Literal["day", "month"]
Level = Literal["green", "yellow", "red"]


@dataclass(frozen=True, slots=True)
class Limit:
    # "global" or "purpose:<name>"
    scope: str
    window: Window
    limit_usd: Decimal

    @property
    def purpose(self) -> str | None:
        return self.scope.removeprefix("purpose:") if self.scope != "global" else None

    @property
    def name(self) -> str:
        kind = "daily" if self.window == "day" else "monthly"
        return kind if self.scope == "global" else f"{kind}:{self.purpose}"


def configured_limits(budgets: BudgetSettings) -> list[Limit]:
    """Every limit the settings set, global ones first."""
    limits = []
    for scope, daily, monthly in [
        ("global", budgets.daily_usd, budgets.monthly_usd),
        *(
            (f"purpose:{name}", p.daily_usd, p.monthly_usd)
            for name, p in sorted(budgets.purposes.items())
        ),
    ]:
        if daily is not None:
            limits.append(Limit(scope, "day", daily))
        if monthly is not None:
            limits.append(Limit(scope, "month", monthly))
    return limits


def window_bounds(window: Window, now: datetime) -> tuple[datetime, datetime]:
    """The UTC start of the window holding *now*, and the start of the next."""
    today = now.astimezone(UTC).date()
    if window == "day":
        start = today
        end = today + timedelta(days=1)
    else:
        start = today.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    return midnight(start), midnight(end)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def spent_ratio(spent_usd: Decimal, limit_usd: Decimal | None) -> float | None:
    if limit_usd is None:
        return None
    return float(spent_usd / limit_usd)


def level(ratio: float | None, thresholds: list[float]) -> Level:
    """Green below the first alert threshold, yellow up to the limit, red at it."""
    if ratio is None:
        return "green"
    if ratio >= 1.0:
        return "red"
    first = min(thresholds, default=1.0)
    return "yellow" if ratio >= first else "green"
