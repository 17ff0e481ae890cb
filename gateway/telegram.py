"""
The Telegram bot: a Bot API client, long polling, commands, the daily summary.

One replica polls at a time: it holds a lease row in ``gateway_state``, renewed
before each ``getUpdates``, and another replica takes over once it expires.
The update offset lives there too, so a restart does not answer twice. Only
the configured chat is answered; anything else is dropped.

The bot token is part of every request URL, so no URL is ever logged: errors
are described by their class and status, with the token cut out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from gateway import db, report
from gateway.alerts import Alert, DeliveryError, alerts_of
from gateway.clock import Clock
from gateway.config import Settings, TelegramSettings
from gateway.keys import CLOCK, DATABASE, INSTANCE, RECORDER, SETTINGS, STARTED_AT
from gateway.recorder import Recorder

log = logging.getLogger(__name__)

SUMMARY_KIND = "daily_summary"
POLLER_LEASE = "telegram_poller"
# How often a replica without the lease looks whether it expired.
STANDBY_CHECK_S = 15.0
# How often the daily summary's time is checked.
SUMMARY_CHECK_S = 30.0
# Longest wait the bot accepts from a 429, and between network retries.
MAX_RETRY_AFTER_S = 300.0
MAX_BACKOFF_S = 30.0
COMMAND = re.compile(r"^/([A-Za-z0-9_]+)(?:@([A-Za-z0-9_]+))?(?:\s|$)")


class BotApiError(Exception):
    """The Bot API refused a request (its ``error_code`` and ``description``)."""

    def __init__(
        self,
        method: str,
        code: int,
        description: str,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{method} refused: {code} {description}")
        self.code = code
        self.retry_after_s = retry_after_s


class BotApi:
    """A small Bot API client that retries 429s and network errors politely."""

    def __init__(self, api_base: str, token: str, *, max_attempts: int = 5) -> None:
        self.base = f"{api_base.rstrip('/')}/bot{token}"
        self.token = token
        self.max_attempts = max_attempts
        self.session: aiohttp.ClientSession | None = None

    @property
    def bot_id(self) -> str:
        # The part before the colon is the bot's public id, not a secret.
        return self.token.split(":", 1)[0]

    def redact(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    async def call(
        self,
        method: str,
        payload: dict[str, Any],
        timeout_s: float = 30.0,
        attempts: int | None = None,
    ) -> Any:
        """POST *method* and return its ``result``; raise BotApiError when refused."""
        if self.session is None:
            raise DeliveryError("the Telegram client is not started")
        attempts = attempts or self.max_attempts
        delay = 1.0
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                async with self.session.post(
                    f"{self.base}/{method}",
                    json=payload,
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                ) as response:
                    body = await response.json(content_type=None)
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if last:
                    raise DeliveryError(
                        f"{method} failed: {self.describe(exc)}"
                    ) from None
                log.warning(
                    "Telegram %s failed (%s); retrying in %.0f s",
                    method,
                    self.describe(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            if isinstance(body, dict) and body.get("ok"):
                return body.get("result")
            code, description, wait_s = read_error(body, status)
            if code == 429 and not last:
                wait_s = min(wait_s or delay, MAX_RETRY_AFTER_S)
                log.warning(
                    "Telegram %s: too many requests, waiting %.0f s", method, wait_s
                )
                await asyncio.sleep(wait_s)
                continue
            if code >= 500 and not last:
                log.warning(
                    "Telegram %s answered %d; retrying in %.0f s", method, code, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            raise BotApiError(method, code, self.redact(description), wait_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def describe(self, exc: BaseException) -> str:
        # aiohttp's response errors carry the URL, which holds the token.
        if isinstance(exc, aiohttp.ClientResponseError):
            return f"{type(exc).__name__} {exc.status}"
        if isinstance(exc, TimeoutError):
            return "timed out"
        return self.redact(f"{type(exc).__name__}: {exc}")

    async def get_me(self) -> dict[str, Any]:
        return await self.call("getMe", {})

    async def get_updates(self, offset: int, timeout_s: int) -> list[dict[str, Any]]:
        """Long-poll for updates from *offset*; the HTTP timeout outlasts the poll."""
        # One attempt: the poller retries itself, renewing its lease between
        # tries, so a long retry chain cannot outlive the lease.
        return await self.call(
            "getUpdates",
            {"offset": offset, "timeout": timeout_s, "allowed_updates": ["message"]},
            timeout_s=timeout_s + 10,
            attempts=1,
        )

    async def send_message(self, chat_id: str, text: str) -> None:
        await self.call(
            "sendMessage",
            {
                "chat_id": chat_id,
                "text": text,
                "parse_mode": "HTML",
                "disable_web_page_preview": True,
            },
        )


def read_error(body: Any, status: int) -> tuple[int, str, float | None]:
    """(error code, description, retry_after seconds) of a refused call."""
    if not isinstance(body, dict):
        return status, f"HTTP {status}", None
    code = body.get("error_code") or status
    parameters = body.get("parameters") or {}
    retry_after = (
        parameters.get("retry_after") if isinstance(parameters, dict) else None
    )
    wait_s = float(retry_after) if isinstance(retry_after, int | float) else None
    return int(code), str(body.get("description", "")), wait_s


class TelegramChannel:
    """Budget alerts into the configured chat."""

    name = "telegram"

    def __init__(self, api: BotApi, chat_id: str) -> None:
        self.api = api
        self.chat_id = chat_id

    async def deliver(self, alert: Alert) -> None:
        await self.api.send_message(self.chat_id, alert.html)


def parse_command(text: str, username: str | None) -> str | None:
    """The command a message gives this bot (``/tokens@bot`` too), or None."""
    match = COMMAND.match(text.strip())
    if match is None:
        return None
    command, addressee = match[1].lower(), match[2]
    if addressee and username and addressee.lower() != username.lower():
        return None
    return command


def summary_day_due(now: datetime, at: time) -> date:
    """The day whose summary is due at *now*: the last day ended before a send time."""
    today = now.date()
    days_back = 1 if now.time() >= at else 2
    return today - timedelta(days=days_back)


@dataclass(slots=True)
class Lease:
    name: str
    holder: str
    duration_s: float

    async def take(self, pool: asyncpg.Pool) -> bool:
        """Take or renew the lease; False while another holder's is current."""
        taken = await pool.fetchval(
            "INSERT INTO gateway_state (name, value, holder, expires_at)"
            " VALUES ($1, '{}'::jsonb, $2, now() + make_interval(secs => $3))"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
            " expires_at = excluded.expires_at, updated_at = now()"
            " WHERE gateway_state.holder = excluded.holder"
            " OR gateway_state.expires_at IS NULL OR gateway_state.expires_at < now()"
            " RETURNING true",
            self.name,
            self.holder,
            self.duration_s,
        )
        return bool(taken)

    async def release(self, pool: asyncpg.Pool) -> None:
        await pool.execute(
            "UPDATE gateway_state SET expires_at = now(), updated_at = now()"
            " WHERE name = $1 AND holder = $2",
            self.name,
            self.holder,
        )


class TelegramBot:
    """Answers the configured chat, and sends it the daily summary."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        holder: str,
        started_at: datetime,
    ) -> None:
        telegram: TelegramSettings = settings.telegram
        if telegram.bot_token is None or not telegram.chat_id:
            raise ValueError("the bot needs telegram.bot_token and telegram.chat_id")
        self.settings = settings
        self.telegram = telegram
        self.chat_id = telegram.chat_id
        self.language: report.Language = telegram.language
        self.clock = clock
        self.holder = holder
        self.started_at = started_at
        self.api = BotApi(str(telegram.api_base), telegram.bot_token.get_secret_value())
        self.lease = Lease(POLLER_LEASE, holder, telegram.poll_timeout_s + 30.0)
        self.pool: asyncpg.Pool | None = None
        self.recorder: Recorder | None = None
        self.username: str | None = None
        self.offset: int | None = None

    @property
    def offset_name(self) -> str:
        return f"telegram_offset:{self.api.bot_id}"

    # -- polling ---------------------------------------------------------------

    async def poll_forever(self) -> None:
        assert self.pool is not None
        backoff_s = 1.0
        while True:
            try:
                if not await self.lease.take(self.pool):
                    self.offset = None
                    await asyncio.sleep(STANDBY_CHECK_S)
                    continue
                await self.poll_once()
                backoff_s = 1.0
                continue
            except asyncio.CancelledError:
                raise
            except (
                DeliveryError,
                BotApiError,
                asyncpg.PostgresError,
                *db.UNREACHABLE,
            ) as exc:
                # A 429 on getUpdates says how long to wait; wait that long.
                if isinstance(exc, BotApiError) and exc.retry_after_s:
                    wait_s = min(exc.retry_after_s, MAX_RETRY_AFTER_S)
                    backoff_s = max(backoff_s, wait_s)
                log.warning(
                    "Telegram polling failed (%s); again in %.0f s",
                    self.api.redact(str(exc)),
                    backoff_s,
                )
            # The bot must outlive a bug in one update; the offset moved past it.
            except Exception:
                log.exception("Telegram polling failed; again in %.0f s", backoff_s)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)

    async def poll_once(self) -> None:
        """One ``getUpdates``, each update answered and its offset stored."""
        assert self.pool is not None
        if self.username is None:
            me = await self.api.get_me()
            self.username = me.get("username") if isinstance(me, dict) else None
        if self.offset is None:
            self.offset = await self.read_offset()
        updates = await self.api.get_updates(self.offset, self.telegram.poll_timeout_s)
        for update in updates:
            update_id = update.get("update_id")
            if not isinstance(update_id, int):
                continue
            # Stored before answering: a crash in between loses one answer
            # rather than sending it again after the restart.
            self.offset = max(self.offset, update_id + 1)
            await self.store_offset(self.offset)
            try:
                await self.handle(update)
            except (DeliveryError, BotApiError) as exc:
                log.warning("could not answer a Telegram update: %s", exc)

    async def read_offset(self) -> int:
        assert self.pool is not None
        value = await self.pool.fetchval(
            "SELECT value FROM gateway_state WHERE name = $1", self.offset_name
        )
        return int(value.get("offset", 0)) if isinstance(value, dict) else 0

    async def store_offset(self, offset: int) -> None:
        assert self.pool is not None
        await self.pool.execute(
            "INSERT INTO gateway_state (name, value) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
            " updated_at = now()",
            self.offset_name,
            {"offset": offset},
        )

    async def handle(self, update: dict[str, Any]) -> None:
        message = update.get("message")
        if not isinstance(message, dict):
            return
        chat = message.get("chat") or {}
        chat_id = str(chat.get("id", ""))
        if chat_id != self.chat_id:
            log.debug("ignored a message from chat %s", chat_id)
            return
        command = parse_command(str(message.get("text") or ""), self.username)
        if command is None:
            return
        reply = await self.answer(command)
        if reply is not None:
            await self.api.send_message(self.chat_id, reply)

    async def answer(self, command: str) -> str | None:
        if command == "tokens":
            return await self.tokens_text()
        if command == "status":
            return await self.status_text()
        if command in {"help", "start"}:
            return report.render_help(self.language, as_html=True)
        return None

    # -- what the commands say ------------------------------------------------

    async def tokens_text(self) -> str:
        assert self.pool is not None
        try:
            summary = await report.read_tokens_summary(self.pool, self.clock())
        except db.UNREACHABLE as exc:
            log.warning("cannot read figures for /tokens: %s", db.describe_error(exc))
            return report.render_unavailable(self.language, as_html=True)
        return report.render_tokens(summary, self.language, as_html=True)

    async def status_text(self) -> str:
        assert self.pool is not None
        assert self.recorder is not None
        now = self.clock()
        try:
            figures = await asyncio.wait_for(
                report.read_day_figures(self.pool, now.date()), 5
            )
            cost_today = figures.cost_usd
        # Whatever the reason, the status must still be told.
        except Exception:
            cost_today = None
        state = report.GatewayState(
            uptime_s=(now - self.started_at).total_seconds(),
            upstreams=list(self.settings.upstreams),
            database_ok=cost_today is not None,
            queue_depth=self.recorder.queue_depth,
            spool_depth=self.recorder.spool_depth,
            cost_today_usd=cost_today,
        )
        return report.render_status(state, self.language, as_html=True)

    # -- the daily summary ----------------------------------------------------

    async def send_daily_summary_if_due(self) -> bool:
        """Send the summary of the day just ended, once across replicas."""
        assert self.pool is not None
        at = time.fromisoformat(self.telegram.daily_summary_time)
        day = summary_day_due(self.clock(), at)
        scope = day.isoformat()
        if not await db.claim_once(self.pool, SUMMARY_KIND, scope, self.holder):
            return False
        figures = await report.read_day_figures(self.pool, day)
        text = report.render_daily_summary(day, figures, self.language, as_html=True)
        await self.api.send_message(self.chat_id, text)
        await db.mark_done(self.pool, SUMMARY_KIND, scope)
        log.info("sent the daily summary of %s", scope)
        return True

    async def send_daily_summaries(self) -> None:
        while True:
            try:
                await self.send_daily_summary_if_due()
            except asyncio.CancelledError:
                raise
            except (
                DeliveryError,
                BotApiError,
                asyncpg.PostgresError,
                *db.UNREACHABLE,
            ) as exc:
                # The claim is taken: this day's summary is not tried again.
                log.warning("daily summary failed: %s", self.api.redact(str(exc)))
            except Exception:
                log.exception("daily summary failed")
            await asyncio.sleep(SUMMARY_CHECK_S)


TELEGRAM = web.AppKey("telegram", TelegramBot)


def setup(app: web.Application) -> None:
    settings = app[SETTINGS]
    if not settings.telegram.is_configured:
        return
    bot = TelegramBot(settings, app[CLOCK], app[INSTANCE], app[STARTED_AT])
    app[TELEGRAM] = bot
    alerts_of(app).channels.append(TelegramChannel(bot.api, bot.chat_id))

    async def context(app: web.Application) -> AsyncIterator[None]:
        from gateway.app import spawn

        bot.pool = app[DATABASE].pool
        bot.recorder = app[RECORDER]
        bot.api.session = aiohttp.ClientSession()
        tasks = [spawn(app, bot.poll_forever(), "telegram polling")]
        if settings.telegram.daily_summary:
            tasks.append(spawn(app, bot.send_daily_summaries(), "daily summary"))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Let another replica (or the next start) poll at once.
        with contextlib.suppress(asyncpg.PostgresError, *db.UNREACHABLE):
            await bot.lease.release(bot.pool)
        await bot.api.session.close()

    app.cleanup_ctx.append(context)
