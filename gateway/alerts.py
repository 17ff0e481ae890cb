"""
Alert channels: Telegram and a generic JSON webhook.

``Alerts.send`` returns at once; each channel delivers in a task of its own,
retrying with doubling delays until ``alerts.retry_max_s`` has passed, so a
slow or failing channel never holds up a proxied call or another channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from gateway.config import AlertSettings
from gateway.errors import ConfigError
from gateway.keys import METRICS, SETTINGS
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

# How long one webhook POST may take.
WEBHOOK_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Alert:
    # Plain text, and the same escaped for Telegram's HTML mode.
    text: str
    html: str
    # Machine-readable facts, sent along in the webhook body.
    facts: dict[str, Any] = field(default_factory=dict)


class Channel(Protocol):
    name: str

    async def deliver(self, alert: Alert) -> None:
        """Deliver once; raise on failure (the caller retries)."""


class DeliveryError(Exception):
    """A channel answered, but not with success."""


class WebhookChannel:
    """A JSON POST with a ``text`` field, which Slack-compatible receivers show."""

    name = "webhook"

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def deliver(self, alert: Alert) -> None:
        body = orjson.dumps({"text": alert.text, **alert.facts})
        try:
            async with self.session.post(
                self.url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S),
            ) as response:
                status = response.status
        # The URL may hold a secret (Slack's does): never say it.
        except aiohttp.ClientError as exc:
            text = describe(exc).replace(self.url, "(webhook url)")
            raise DeliveryError(f"webhook failed: {text}") from None
        if status >= 300:
            raise DeliveryError(f"webhook answered {status}")


@dataclass(slots=True)
class RetryPolicy:
    initial_s: float
    max_total_s: float
    # Longest single wait, so a late recovery is noticed soon enough.
    max_delay_s: float = 60.0


async def deliver_with_retry(
    channel: Channel,
    alert: Alert,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """Deliver *alert* on *channel*, retrying with backoff; True once delivered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.max_total_s
    delay = policy.initial_s
    attempt = 1
    while True:
        try:
            await channel.deliver(alert)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            left = deadline - loop.time()
            if left <= 0:
                log.error(
                    "alert to %s failed %d times, giving up: %s",
                    channel.name,
                    attempt,
                    describe(exc),
                )
                return False
            log.warning(
                "alert to %s failed (%s); retrying in %.1f s",
                channel.name,
                describe(exc),
                min(delay, left),
            )
        await sleep(min(delay, left))
        delay = min(delay * 2, policy.max_delay_s)
        attempt += 1


def describe(exc: BaseException) -> str:
    """The exception's class and message, without any URL aiohttp put in it."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__} {exc.status}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Alerts:
    """Every configured channel, and the deliveries under way."""

    def __init__(self, settings: AlertSettings, metrics: Metrics) -> None:
        self.channels: list[Channel] = []
        self.metrics = metrics
        self.policy = RetryPolicy(settings.retry_initial_s, settings.retry_max_s)
        self._deliveries: set[asyncio.Task[bool]] = set()

    @property
    def is_configured(self) -> bool:
        return bool(self.channels)

    def send(
        self, alert: Alert, on_delivered: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Start delivering *alert* on every channel; never waits."""
        log.info("alert: %s", alert.text.replace("\n", " "))
        for channel in self.channels:
            task = asyncio.create_task(
                self._deliver(channel, alert, on_delivered),
                name=f"alert:{channel.name}",
            )
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(
        self,
        channel: Channel,
        alert: Alert,
        on_delivered: Callable[[], Awaitable[None]] | None,
    ) -> bool:
        delivered = await deliver_with_retry(channel, alert, self.policy)
        if not delivered:
            self.metrics.alert_failures[channel.name] += 1
            return False
        self.metrics.alerts_sent[channel.name] += 1
        if on_delivered is not None:
            try:
                await on_delivered()
            except Exception:
                log.warning("could not record delivery of an alert", exc_info=True)
        return True

    async def wait_delivered(self) -> None:
        """Wait for the deliveries under way (tests, shutdown)."""
        while self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._deliveries):
            task.cancel()
        for task in list(self._deliveries):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


ALERTS = web.AppKey("alerts", Alerts)


def alerts_of(app: web.Application) -> Alerts:
    """The application's alerts, created (with the webhook, if set) on first use."""
    if ALERTS not in app:
        setup(app)
    return app[ALERTS]


def check_webhook_url(url: str) -> str:
    """*url* if it is an http(s) URL with a host; ConfigError (url not shown) if not."""
    try:
        parsed = URL(url)
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in {"http", "https"} or not parsed.host:
        raise ConfigError("alerts.webhook_url must be an http:// or https:// URL")
    return url


def setup(app: web.Application) -> None:
    settings = app[SETTINGS].alerts
    alerts = Alerts(settings, app[METRICS])
    app[ALERTS] = alerts
    url = settings.webhook_url
    if url is not None:
        check_webhook_url(url.get_secret_value())

    async def context(app: web.Application) -> AsyncIterator[None]:
        session: aiohttp.ClientSession | None = None
        if url is not None:
            session = aiohttp.ClientSession()
            alerts.channels.append(WebhookChannel(session, url.get_secret_value()))
        yield
        await alerts.close()
        if session is not None:
            await session.close()

    app.cleanup_ctx.append(context)
