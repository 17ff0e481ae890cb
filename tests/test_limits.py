from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gateway.config import BudgetSettings
from gateway.limits import configured_limits, level, window_bounds


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [(None, "green"), (0.0, "green"), (0.79, "green"), (0.8, "yellow"),
     (0.999, "yellow"), (1.0, "red"), (3.0, "red")],
)  # fmt: skip
def test_level_follows_the_first_threshold_and_the_limit(
    ratio: float | None, expected: str
) -> None:
    assert level(ratio, [0.8, 1.0]) == expected


def test_configured_limits_lists_global_then_purposes() -> None:
    budgets = BudgetSettings(
        daily_usd=Decimal(5),
        purposes={"news": {"monthly_usd": Decimal(2)}},
    )

    limits = configured_limits(budgets)

    assert [(x.name, x.window, x.limit_usd) for x in limits] == [
        ("daily", "day", Decimal(5)),
        ("monthly:news", "month", Decimal(2)),
    ]


def test_window_bounds_are_utc_days_and_months() -> None:
    now = datetime(2030, 12, 31, 23, 59, tzinfo=UTC)

    assert window_bounds("day", now) == (
        datetime(2030, 12, 31, tzinfo=UTC),
        datetime(2031, 1, 1, tzinfo=UTC),
    )
    assert window_bounds("month", now) == (
        datetime(2030, 12, 1, tzinfo=UTC),
        datetime(2031, 1, 1, tzinfo=UTC),
    )
