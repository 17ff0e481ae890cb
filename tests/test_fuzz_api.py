"""
The statistics API fuzzed from its own OpenAPI document (schemathesis).

schemathesis drives its calls synchronously, so the gateway runs in a
thread with its own event loop, served on a loopback port as ``tallygate
serve`` serves it, over the run's real PostgreSQL with a few hundred stored
calls. Every generated request must get an answer the document describes,
and never a 5xx.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from gateway import db, openapi
from gateway.app import create_app
from gateway.config import DatabaseSettings, load_settings
from tests.conftest import TABLES
from tests.seed import make_records, store

schema = schemathesis.openapi.from_dict(openapi.document())


class GatewayThread(threading.Thread):
    """A gateway on its own loop in a daemon thread; ``url`` once it listens."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        super().__init__(name="gateway under fuzz", daemon=True)
        self.database_url = database_url
        self.data_dir = data_dir
        self.url = ""
        self.failure: BaseException | None = None
        self.listening = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stopping: asyncio.Event | None = None

    def run(self) -> None:
        try:
            self.loop.run_until_complete(self.serve())
        except BaseException as exc:  # handed to the test thread
            self.failure = exc
            self.listening.set()
        finally:
            self.loop.close()

    async def seed(self) -> None:
        url = self.database_url
        pool = await db.create_pool(url, DatabaseSettings(url=url))
        try:
            await pool.execute(f"TRUNCATE {', '.join(TABLES)}")
            await store(pool, make_records(300))
        finally:
            await pool.close()

    async def serve(self) -> None:
        self.stopping = asyncio.Event()
        await self.seed()
        settings = load_settings(
            environ={},
            database={"url": self.database_url, "data_dir": str(self.data_dir)},
        )
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            self.listening.set()
            await self.stopping.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        if self.stopping is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.join(timeout=30)


@pytest.fixture(scope="module")
def gateway_url(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    thread = GatewayThread(database_url, tmp_path_factory.mktemp("fuzz"))
    thread.start()
    thread.listening.wait(timeout=60)
    if thread.failure is not None:
        raise thread.failure
    assert thread.url, "the gateway did not start listening"
    try:
        yield thread.url
    finally:
        thread.stop()


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_generated_request_gets_a_documented_answer(
    case: schemathesis.Case, gateway_url: str
) -> None:
    response = case.call(base_url=gateway_url, timeout=30)

    assert response.status_code < 500, response.text[:500]
    # What the document forbids must be refused. Not all it allows is
    # accepted: JSON Schema cannot say "to after from" or "reasoning tokens
    # within output tokens", which the API checks on top.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


def test_the_document_says_filters_must_be_printable() -> None:
    """The API refuses non-printable filters; the document must say so."""
    parameters = openapi.document()["paths"]["/api/token-usage"]["get"]["parameters"]
    (ticker,) = [p["schema"] for p in parameters if p["name"] == "ticker"]

    assert "pattern" in ticker
    assert re.search(ticker["pattern"], "AAPL")
    assert not re.search(ticker["pattern"], "AA\x04PL")


def test_what_post_usage_accepts_the_document_allows(gateway_url: str) -> None:
    """An optional field sent as null is stored, so the document allows null."""
    body = {"model": "gpt-4o-mini", "input_tokens": 1, "output_tokens": 1}
    body["provider"] = None

    response = requests.post(f"{gateway_url}/api/usage", json=body, timeout=30)

    provider = openapi.document()["components"]["schemas"]["UsagePost"]["properties"][
        "provider"
    ]
    if response.status_code in (200, 201):
        assert "null" in provider["type"]
