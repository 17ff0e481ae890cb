"""Typed keys for the state the application holds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.clock import Clock
from gateway.config import Settings
from gateway.db import Database
from gateway.metrics import Metrics
from gateway.pricing import PriceBook
from gateway.recorder import Recorder

SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
METRICS = web.AppKey("metrics", Metrics)
DATABASE = web.AppKey("database", Database)
RECORDER = web.AppKey("recorder", Recorder)
# When this process started serving: the start of the ``session`` period.
STARTED_AT = web.AppKey("started_at", datetime)
# A name for this process in claims and leases: host, pid and a random part.
INSTANCE = web.AppKey("instance", str)
# Background tasks the application owns and cancels on cleanup.
TASKS = web.AppKey("tasks", set[Any])
# Checks a proxied call must pass before it goes upstream, called with its
# tags (purpose, ticker, cycle); a check refuses by raising a GatewayError.
ADMISSION = web.AppKey("admission", list[Callable[[dict[str, str | None]], None]])
# The prices of every model, shared by everything that prices a call.
PRICES = web.AppKey("prices", PriceBook)
