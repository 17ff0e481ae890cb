from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.alerts import Alert, Alerts, WebhookChannel, check_webhook_url
from gateway.config import AlertSettings
from gateway.errors import ConfigError
from gateway.metrics import Metrics


class Receiver:
    """A webhook receiver that answers the statuses it is given, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[Any] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status == 200 else "no")


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def start_receiver(aiohttp_server: Any, receiver: Receiver) -> str:
    app = web.Application()
    app.router.add_post("/hooks/T000/B000/secret-part", receiver.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/hooks/T000/B000/secret-part"))


ALERT = Alert(
    text="⚠️ Budget alert\n\ndaily budget reached 80%",
    html="⚠️ Budget alert\n\ndaily budget reached 80%",
    facts={"budget": "daily", "threshold": 0.8},
)


async def test_webhook_gets_slack_compatible_json_after_a_500(
    aiohttp_server: Any, session: aiohttp.ClientSession
) -> None:
    receiver = Receiver([500])
    url = await start_receiver(aiohttp_server, receiver)
    metrics = Metrics()
    alerts = Alerts(AlertSettings(retry_initial_s=0.05, retry_max_s=10), metrics)
    alerts.channels.append(WebhookChannel(session, url))

    alerts.send(ALERT)
    await alerts.wait_delivered()

    assert len(receiver.bodies) == 2
    assert receiver.bodies[-1] == {
        "text": ALERT.text,
        "budget": "daily",
        "threshold": 0.8,
    }
    assert metrics.alerts_sent == {"webhook": 1}
    assert metrics.alert_failures == {}


async def test_a_channel_that_keeps_failing_is_counted_and_logged_without_its_url(
    aiohttp_server: Any,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = Receiver([500] * 1000)
    url = await start_receiver(aiohttp_server, receiver)
    metrics = Metrics()
    alerts = Alerts(AlertSettings(retry_initial_s=0.02, retry_max_s=0.2), metrics)
    alerts.channels.append(WebhookChannel(session, url))

    with caplog.at_level(logging.WARNING, logger="gateway.alerts"):
        alerts.send(ALERT)
        await alerts.wait_delivered()

    assert len(receiver.bodies) >= 2
    assert metrics.alert_failures == {"webhook": 1}
    assert metrics.alerts_sent == {}
    assert "giving up" in caplog.text
    assert "secret-part" not in caplog.text


async def test_send_returns_before_a_slow_channel_answers() -> None:
    release = asyncio.Event()

    class Slow:
        name = "slow"
        delivered = 0

        async def deliver(self, alert: Alert) -> None:
            await release.wait()
            Slow.delivered += 1

    alerts = Alerts(AlertSettings(), Metrics())
    alerts.channels.append(Slow())

    alerts.send(ALERT)

    assert Slow.delivered == 0
    release.set()
    await alerts.wait_delivered()
    assert Slow.delivered == 1


async def test_close_cancels_deliveries_under_way() -> None:
    class Stuck:
        name = "stuck"

        async def deliver(self, alert: Alert) -> None:
            await asyncio.Event().wait()

    alerts = Alerts(AlertSettings(), Metrics())
    alerts.channels.append(Stuck())
    alerts.send(ALERT)

    await alerts.close()

    async with asyncio.timeout(5):
        await alerts.wait_delivered()


@pytest.mark.parametrize(
    "url", ["ftp://hooks.example/secret-part", "hooks.example/secret-part", "http://"]
)
def test_a_webhook_url_that_is_not_http_stops_startup_without_showing_it(
    url: str,
) -> None:
    with pytest.raises(ConfigError) as refused:
        check_webhook_url(url)

    assert "secret-part" not in str(refused.value)
