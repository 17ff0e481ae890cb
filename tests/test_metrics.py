from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.keys import RECORDER
from gateway.metrics import CONTENT_TYPE, MAX_LABEL_VALUES, OTHER, Metrics
from gateway.record import UsageRecord
from tests.fake_upstream import FakeUpstream

NOW = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
PRICING = {"house-model": {"input": "1", "output": "4"}}


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeUpstream:
    upstream = FakeUpstream()
    upstream.prompt_tokens = 100
    upstream.cached_tokens = 40
    upstream.reasoning_tokens = 3
    upstream.answer = "one two three four five"
    server = await aiohttp_server(upstream.app)
    upstream.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return upstream


@pytest.fixture
async def client(
    aiohttp_client: Any, make_settings: Any, db_pool: asyncpg.Pool, fake: FakeUpstream
) -> Any:
    base = fake.base_url  # type: ignore[attr-defined]
    settings = make_settings(
        pricing=PRICING,
        upstreams={
            "openai": {"base_url": base, "default": True},
            "deepseek": {"base_url": base, "models": ["deepseek-*"]},
        },
    )
    return await aiohttp_client(create_app(settings, clock=lambda: NOW))


async def scrape(client: Any) -> dict[str, list[Any]]:
    """Every sample of /metrics by sample name."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE
    samples: dict[str, list[Any]] = defaultdict(list)
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[sample.name].append(sample)
    return samples


def total(samples: list[Any], **labels: str) -> float:
    return sum(
        s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())
    )


async def send_traffic(client: Any, fake: FakeUpstream) -> None:
    """Four proxied calls (one failing) and three ingested ones."""
    chat = "/v1/chat/completions"
    tagged = {"X-Purpose": "trading_decision", "X-Ticker": "AAPL", "X-Cycle-Id": "c9"}
    for _ in range(2):
        resp = await client.post(
            chat,
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            headers=tagged,
        )
        assert resp.status == 200
    resp = await client.post(
        chat,
        json={
            "model": "deepseek-chat",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    await resp.read()
    fake.fail_next(500)
    resp = await client.post(
        chat, json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.status == 500
    for body in (
        {"model": "house-model", "input_tokens": 1000, "output_tokens": 500},
        {"model": "house-model", "input_tokens": 3000, "output_tokens": 0},
    ):
        resp = await client.post(
            "/api/usage",
            json={
                **body,
                "purpose": "news_summary",
                "ticker": "MSFT",
                "cycle_id": "c1",
            },
        )
        assert resp.status == 201
    resp = await client.post(
        "/api/usage", json={"model": "made-up", "input_tokens": 5, "output_tokens": 5}
    )
    assert resp.status == 201
    await client.app[RECORDER].flush()


async def test_metrics_count_the_traffic_sent(client: Any, fake: FakeUpstream) -> None:
    await send_traffic(client, fake)

    samples = await scrape(client)

    requests = samples["tallygate_requests_total"]
    assert total(requests) == 7
    assert total(requests, endpoint="ingest", upstream="external") == 3
    assert total(requests, model="gpt-4o", upstream="openai", status_class="2xx") == 2
    assert total(requests, status_class="5xx") == 1
    assert total(requests, model="deepseek-chat", upstream="deepseek") == 1

    def tokens(kind: str, model: str, purpose: str) -> float:
        return total(
            samples[f"tallygate_{kind}_tokens_total"], model=model, purpose=purpose
        )

    assert tokens("input", "gpt-4o", "trading_decision") == 200
    assert tokens("cached_input", "gpt-4o", "trading_decision") == 80
    assert tokens("output", "gpt-4o", "trading_decision") == 16
    assert tokens("reasoning", "gpt-4o", "trading_decision") == 6
    assert tokens("input", "deepseek-chat", "untagged") == 100
    assert tokens("output", "deepseek-chat", "untagged") == 8
    assert tokens("input", "house-model", "news_summary") == 4000
    assert tokens("output", "house-model", "news_summary") == 500
    # 4000 input at 1 and 500 output at 4 per million tokens.
    cost = total(
        samples["tallygate_cost_usd_total"], model="house-model", purpose="news_summary"
    )
    assert Decimal(str(cost)) == Decimal("0.006")
    assert total(samples["tallygate_unpriced_calls_total"], model="made-up") == 1


async def test_metrics_show_latency_and_the_recorder(
    client: Any, fake: FakeUpstream
) -> None:
    await send_traffic(client, fake)

    samples = await scrape(client)

    proxied = 4
    assert total(samples["tallygate_upstream_latency_seconds_count"]) == proxied
    assert total(samples["tallygate_gateway_overhead_seconds_count"]) == proxied
    ttfb = samples["tallygate_time_to_first_byte_seconds_count"]
    assert total(ttfb, upstream="deepseek") == 1
    assert total(samples["tallygate_recorder_rows_written_total"]) == 7
    assert total(samples["tallygate_recorder_write_errors_total"]) == 0
    assert total(samples["tallygate_recorder_queue_depth"]) == 0
    assert total(samples["tallygate_recorder_spool_depth"]) == 0


async def test_metrics_carry_no_ticker_cycle_or_request_labels(
    client: Any, fake: FakeUpstream
) -> None:
    await send_traffic(client, fake)

    samples = await scrape(client)

    names = {name for series in samples.values() for s in series for name in s.labels}
    values = {
        v for series in samples.values() for s in series for v in s.labels.values()
    }
    assert names.isdisjoint({"ticker", "cycle_id", "cycle", "request_id"})
    assert values.isdisjoint({"AAPL", "MSFT", "c1", "c9"})


def test_labels_from_any_client_stay_bounded() -> None:
    """Ingested calls name any upstream, model and purpose they like."""
    metrics = Metrics()
    for n in range(MAX_LABEL_VALUES + 50):
        metrics.count_call(
            UsageRecord(
                request_id=f"r{n}",
                timestamp=NOW,
                model=f"model-{n}",
                upstream=f"upstream-{n}",
                endpoint="ingest",
                purpose=f"purpose-{n}",
                input_tokens=1,
                total_cost_usd=Decimal(1),
            )
        )

    families = text_string_to_metric_families(metrics.render().decode())
    samples = [s for f in families for s in f.samples]
    for label in ("upstream", "model", "purpose"):
        values = {s.labels[label] for s in samples if label in s.labels}
        assert len(values) == MAX_LABEL_VALUES + 1, label
        assert OTHER in values, label
