"""
The application: state, storage lifecycle, and the one error shape.

Each concept registers its own routes through a ``setup(app)`` function; this
module only wires them together and owns what every route shares.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

import orjson
from aiohttp import web

from gateway import __version__, api, budgets, dashboard, db, proxy, telegram
from gateway.clock import Clock, utc_now
from gateway.config import Settings
from gateway.errors import (
    GatewayError,
    error_body,
    internal_error,
    json_error,
    refused,
)
from gateway.keys import (
    ADMISSION,
    CLOCK,
    DATABASE,
    INSTANCE,
    METRICS,
    RECORDER,
    SETTINGS,
    STARTED_AT,
    TASKS,
)
from gateway.metrics import Metrics
from gateway.recorder import Recorder, gauges

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# HTTP errors aiohttp raises itself, in the OpenAI vocabulary.
HTTP_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Render every error as ``{"error": {...}}``, each refusal logged once."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return refused(request.method, request.path, exc)
    except web.HTTPException as exc:
        if exc.status < 400 or request.path.startswith("/dashboard"):
            raise
        type_, code = HTTP_CODES.get(
            exc.status, ("invalid_request_error", "http_error")
        )
        message = exc.reason if exc.text is None else exc.text
        log.info(
            "%s %s refused: %s", request.method, request.path, message,
            extra={"status": exc.status, "code": code},
        )  # fmt: skip
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return json_error(exc.status, error_body(message, type_, code), headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        return internal_error(request.method, request.path)


def spawn(
    app: web.Application, coro: Coroutine[Any, Any, Any], name: str
) -> asyncio.Task[Any]:
    """Start a background task the application holds and cancels on cleanup."""
    task = asyncio.create_task(coro, name=name)
    app[TASKS].add(task)
    task.add_done_callback(app[TASKS].discard)
    return task


async def run_every(
    interval_s: float, work: Callable[[], Awaitable[None]], what: str
) -> None:
    """Run *work* now and then every *interval_s*; a failure waits for the next turn."""
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; trying again in %.0f s", what, interval_s)
        await asyncio.sleep(interval_s)


def storage_context(
    database: db.Database | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """
    Open the database and the recorder on startup, flush and close on cleanup.

    A database at a URL that does not answer yet does not stop startup: calls
    are served and their rows spooled while the schema is prepared in the
    background. One that answers and refuses (or an embedded server that
    will not start) stops the process with one line and exit status 2.
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        try:
            opened = database or await db.open_database(
                settings.database, tolerate_outage=True, now=app[CLOCK]
            )
        except db.DatabaseRefused as exc:
            log.error("%s", exc.message)
            # Exits like a bad setting does; no traceback, it is not a bug.
            raise SystemExit(2) from None
        app[DATABASE] = opened
        recorder = Recorder(
            opened.pool,
            settings.recorder,
            settings.database.data_dir / "spool",
            app[METRICS],
            schema_ready=opened.ready,
        )
        recorder.observers.append(app[METRICS].count_call)
        gauges(app[METRICS], recorder)
        app[RECORDER] = recorder
        await recorder.start()
        log.info(
            "data directory %s; usage stored in %s",
            settings.database.data_dir,
            opened.description,
        )

        async def prepare() -> None:
            await db.prepare_when_reachable(
                opened,
                app[CLOCK],
                settings.recorder.retry_initial_s,
                settings.recorder.retry_max_s,
            )
            recorder.wake()

        if not opened.ready.is_set():
            spawn(app, prepare(), "prepare database")

        async def maintain() -> None:
            await opened.ready.wait()
            await db.run_maintenance(
                opened.pool, app[CLOCK](), settings.retention.months, app[INSTANCE]
            )

        spawn(
            app,
            run_every(timedelta(hours=6).total_seconds(), maintain, "maintenance"),
            "maintenance",
        )
        try:
            yield
        finally:
            # Background work first (it may still submit), then every record
            # waiting is written or spooled, and only then the pool closes.
            tasks = list(app[TASKS])
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await recorder.close()
            if database is None:
                await opened.close()

    return context


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__}, dumps=dumps)


async def readyz(request: web.Request) -> web.Response:
    """
    Ready when the database answers, its schema is in place and the
    recorder's last write went in (a full disk answers reads and refuses
    writes); the recorder's backlog is in the body either way.
    """
    recorder = request.app[RECORDER]
    database = request.app[DATABASE]
    try:
        await asyncio.wait_for(database.pool.fetchval("SELECT 1"), 2)
        state = "ok" if database.ready.is_set() else "unreachable"
    # Whatever the reason, an unanswered query means not ready.
    except Exception:
        state = "unreachable"
    if state == "ok" and not recorder.database_ok:
        state = "not writable"
    database_ok = state == "ok"
    body = {
        "status": "ready" if database_ok else "degraded",
        "database": state,
        "recorder_queue_depth": recorder.queue_depth,
        "spool_depth": recorder.spool_depth,
    }
    return web.json_response(body, status=200 if database_ok else 503, dumps=dumps)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def create_app(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    database: db.Database | None = None,
) -> web.Application:
    """
    Build the gateway. With *database* given, the app uses (and leaves open)
    that database instead of opening its own.
    """
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[error_middleware],
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[METRICS] = Metrics()
    app[STARTED_AT] = clock()
    app[INSTANCE] = instance_name()
    app[TASKS] = set()
    app[ADMISSION] = []
    app.cleanup_ctx.append(storage_context(database))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    # Each concept adds its routes and background work here.
    proxy.setup(app)
    budgets.setup(app)
    telegram.setup(app)
    api.setup(app)
    dashboard.setup(app)
    return app
