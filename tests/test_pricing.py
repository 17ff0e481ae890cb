"""
Costs checked against the providers' published per-million prices.

Each expected figure is worked out by hand in the test from the rates of the
price pages, which the bundled catalog carries:

- OpenAI gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output;
  gpt-4o: $2.50 / $1.25 / $10; its snapshot gpt-4o-2024-05-13: $5 / none / $15;
  o3-mini: $1.10 / $0.55 / $4.40; gpt-5.5: $5 / $0.50 / $30, and past 272,000
  input tokens $10 / $1 / $45; text-embedding-3-small: $0.02 input.
- DeepSeek deepseek-chat: $0.27 input (cache miss), $0.07 cache hit, $1.10
  output from 00:30 to 16:30 UTC, half that ($0.135 / $0.035 / $0.55) off-peak;
  deepseek-v4-flash before 2026-08-17, off-peak: $0.14 / $0.0028 / $0.28.
- gpt-audio: $2.50 input, $10 output, audio $32 input and $64 output, no
  cached rate; gpt-4o-audio-preview: $2.50 / $10, no audio rates.
- Service tiers, from 2026-10-12 (before that the catalog has none): o3 at
  flex $1 / $0.25 / $4 (standard $2 / $0.50 / $8); gpt-4o-mini at priority
  $0.25 / $0.125 / $1, and no flex price.
- Built-in tools of the Responses API, per thousand calls: web search $10,
  file search $2.50 (gpt-4o-mini, o3 and most OpenAI models); Perplexity's
  sonar: $1 input, $1 output and $12 per thousand requests.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import data_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ModelPrice
from gateway.pricing import SOURCE_CATALOG, SOURCE_CONFIG, USD_PLACES, Cost, PriceBook
from gateway.usage import Usage, usage_from_body
from tests.fixtures import recorded

NOON = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
# After the catalog's service tier prices start.
TIERED_NOON = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def usd(text: str) -> Decimal:
    return Decimal(text).quantize(USD_PLACES)


def catalog_cost(
    model: str,
    usage: Usage,
    provider: str | None = None,
    at: datetime = NOON,
    service_tier: str | None = None,
) -> Cost | None:
    return PriceBook({}).cost(
        model, usage, provider=provider, at=at, service_tier=service_tier
    )


def test_gpt_4o_mini_plain_from_a_recorded_body() -> None:
    usage, model, _ = usage_from_body(recorded("openai_chat_1.json"))
    assert usage is not None
    assert model is not None

    cost = catalog_cost(model, usage, "openai")

    # 12 input x $0.15 = $1.80 per million; 5 output x $0.60 = $3.00 per million.
    assert cost == Cost(
        usd("0.0000018"), usd("0.000003"), usd("0.0000048"), "genai-prices"
    )


def test_gpt_4o_mini_cached_input_at_the_cached_rate() -> None:
    usage = Usage(input_tokens=1000, cached_input_tokens=200, output_tokens=500)

    cost = catalog_cost("gpt-4o-mini-2024-07-18", usage, "openai")

    # 800 x $0.15 = 120, 200 x $0.075 = 15: $135 per million input.
    # 500 x $0.60 = 300: $300 per million output.
    assert cost is not None
    assert cost.input_usd == usd("0.000135")
    assert cost.output_usd == usd("0.0003")
    assert cost.total_usd == usd("0.000435")


def test_reasoning_tokens_are_billed_once_as_output() -> None:
    usage, model, _ = usage_from_body(recorded("openai_chat_reasoning_1.json"))
    assert usage == Usage(7, 0, 87, 64, 94)
    assert model is not None

    cost = catalog_cost(model, usage, "openai")

    # o3-mini: 7 x $1.10 = 7.7; 87 x $4.40 = 382.8 (the 64 reasoning included).
    assert cost is not None
    assert cost.input_usd == usd("0.0000077")
    assert cost.output_usd == usd("0.0003828")
    assert cost.total_usd == usd("0.0003905")


def test_a_dated_snapshot_has_its_own_price() -> None:
    usage = Usage(input_tokens=1000, cached_input_tokens=400, output_tokens=1000)

    dated = catalog_cost("gpt-4o-2024-05-13", usage, "openai")
    current = catalog_cost("gpt-4o", usage, "openai")

    # The snapshot has no cached rate: all 1000 at $5, then 1000 x $15.
    assert dated is not None
    assert (dated.input_usd, dated.output_usd) == (usd("0.005"), usd("0.015"))
    # 600 x $2.50 + 400 x $1.25 = 2000; 1000 x $10 = 10000.
    assert current is not None
    assert (current.input_usd, current.output_usd) == (usd("0.002"), usd("0.01"))


def test_a_call_past_the_tier_start_pays_the_tier_rate_on_every_token() -> None:
    small = Usage(input_tokens=272_000, cached_input_tokens=72_000, output_tokens=1000)
    large = Usage(input_tokens=272_001, cached_input_tokens=72_000, output_tokens=1000)

    below = catalog_cost("gpt-5.5-2026-04-23", small, "openai")
    above = catalog_cost("gpt-5.5-2026-04-23", large, "openai")

    # 200,000 x $5 + 72,000 x $0.50 = 1,036,000; 1000 x $30 = 30,000.
    assert below is not None
    assert (below.input_usd, below.output_usd) == (usd("1.036"), usd("0.03"))
    # 200,001 x $10 + 72,000 x $1 = 2,072,010; 1000 x $45 = 45,000.
    assert above is not None
    assert (above.input_usd, above.output_usd) == (usd("2.07201"), usd("0.045"))


def test_embeddings_price_only_their_input() -> None:
    usage, model, _ = usage_from_body(recorded("openai_embeddings_1.json"))
    assert usage is not None
    assert model is not None

    cost = catalog_cost(model, usage, "openai")

    # 8 x $0.02 = 0.16 per million.
    assert cost is not None
    assert cost.input_usd == usd("0.00000016")
    assert cost.output_usd == 0
    assert cost.total_usd == usd("0.00000016")


def test_deepseek_cache_hits_and_misses_from_a_recorded_body() -> None:
    usage, model, _ = usage_from_body(recorded("deepseek_reasoner_1.json"))
    assert usage == Usage(563, 512, 116, 60, 679)
    assert model == "deepseek-v4-flash"
    at = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)

    cost = catalog_cost(model, usage, "deepseek", at)

    # 51 misses x $0.14 = 7.14, 512 hits x $0.0028 = 1.4336: 8.5736.
    # 116 x $0.28 = 32.48 (the 60 reasoning included).
    assert cost is not None
    assert cost.input_usd == usd("0.0000085736")
    assert cost.output_usd == usd("0.00003248")
    assert cost.total_usd == usd("0.0000410536")


@pytest.mark.parametrize(
    ("at", "input_usd", "output_usd"),
    [
        # 400 x $0.27 + 600 x $0.07 = 150; 100 x $1.10 = 110.
        (datetime(2025, 6, 2, 0, 30, tzinfo=UTC), "0.00015", "0.00011"),
        (datetime(2025, 6, 2, 16, 29, 59, tzinfo=UTC), "0.00015", "0.00011"),
        # 18:00 at UTC+2 is 16:00 UTC: standard hours still.
        (
            datetime(2025, 6, 2, 18, 0, tzinfo=timezone(timedelta(hours=2))),
            "0.00015",
            "0.00011",
        ),
        # Off-peak: 400 x $0.135 + 600 x $0.035 = 75; 100 x $0.55 = 55.
        (datetime(2025, 6, 2, 16, 30, tzinfo=UTC), "0.000075", "0.000055"),
        (datetime(2025, 6, 2, 0, 29, tzinfo=UTC), "0.000075", "0.000055"),
        (datetime(2025, 6, 2, 16, 30), "0.000075", "0.000055"),
    ],
)
def test_deepseek_time_of_day_prices(
    at: datetime, input_usd: str, output_usd: str
) -> None:
    usage = Usage(input_tokens=1000, cached_input_tokens=600, output_tokens=100)

    cost = catalog_cost("deepseek-chat", usage, "deepseek", at)

    assert cost is not None
    assert (cost.input_usd, cost.output_usd) == (usd(input_usd), usd(output_usd))


def test_the_catalog_finds_the_provider_from_the_model_name() -> None:
    usage = Usage(input_tokens=1000, cached_input_tokens=600, output_tokens=100)

    assert catalog_cost("deepseek-chat", usage) == catalog_cost(
        "deepseek-chat", usage, "deepseek"
    )
    assert catalog_cost("gpt-4o-mini", usage) == catalog_cost(
        "gpt-4o-mini", usage, "openai"
    )


def test_a_provider_the_catalog_does_not_know_prices_nothing(caplog) -> None:
    """A self-hosted upstream is not priced at some cloud's rates."""
    book = PriceBook({})
    usage = Usage(input_tokens=1000, output_tokens=100)

    with caplog.at_level(logging.WARNING, logger="gateway.pricing"):
        cost = book.cost("gpt-4o-mini", usage, provider="my_vllm", at=NOON)
        again = book.cost("llama-3-70b", usage, provider="my_vllm", at=NOON)

    assert cost is again is None
    assert "provider my_vllm is not in the price catalog" in caplog.text
    assert caplog.text.count("my_vllm is not in") == 1


def test_a_reseller_prices_the_models_it_resells() -> None:
    usage = Usage(input_tokens=1000, output_tokens=100)

    cost = catalog_cost("gpt-4o-mini", usage, "azure")

    # Azure's own gpt-4o-mini rates, or OpenAI's where the catalog falls back.
    assert cost is not None
    assert cost.source == SOURCE_CATALOG


def test_audio_tokens_cost_the_audio_rates() -> None:
    usage = Usage(
        input_tokens=1000,
        cached_input_tokens=100,
        output_tokens=100,
        input_audio_tokens=400,
        output_audio_tokens=50,
    )

    cost = catalog_cost("gpt-audio", usage, "openai", TIERED_NOON)

    # 600 text x $2.50 (the 100 cached too: no cached rate) + 400 x $32
    # = $14,300 per million; 50 x $10 + 50 x $64 = $3,700.
    assert cost == Cost(usd("0.0143"), usd("0.0037"), usd("0.018"), SOURCE_CATALOG)


def test_audio_tokens_of_a_model_without_audio_rates_cost_the_text_rates() -> None:
    audio = Usage(1000, 0, 100, 0, 1100, input_audio_tokens=400, output_audio_tokens=50)

    cost = catalog_cost("gpt-4o-audio-preview", audio, "openai", TIERED_NOON)

    assert cost == catalog_cost(
        "gpt-4o-audio-preview", Usage(1000, 0, 100, 0, 1100), "openai", TIERED_NOON
    )
    # 1,000 x $2.50; 100 x $10.
    assert cost == Cost(usd("0.0025"), usd("0.001"), usd("0.0035"), SOURCE_CATALOG)


def test_audio_reported_past_the_uncached_input_is_cut_down() -> None:
    usage = Usage(1000, 900, 100, 0, 1100, input_audio_tokens=400)

    cost = catalog_cost("gpt-audio", usage, "openai", TIERED_NOON)

    # At most the 100 uncached tokens are audio: 900 x $2.50 + 100 x $32.
    assert cost is not None
    assert cost.input_usd == usd("0.00545")


def test_a_flex_call_costs_the_flex_rates() -> None:
    usage = Usage(input_tokens=10_000, cached_input_tokens=4_000, output_tokens=2_000)

    flex = catalog_cost("o3-2025-04-16", usage, "openai", TIERED_NOON, "flex")
    standard = catalog_cost("o3-2025-04-16", usage, "openai", TIERED_NOON, "default")

    # 6,000 x $1 + 4,000 x $0.25 = $7,000 per million; 2,000 x $4 = $8,000.
    assert flex == Cost(usd("0.007"), usd("0.008"), usd("0.015"), SOURCE_CATALOG)
    # 6,000 x $2 + 4,000 x $0.50 = $14,000; 2,000 x $8 = $16,000.
    assert standard == Cost(usd("0.014"), usd("0.016"), usd("0.03"), SOURCE_CATALOG)


def test_a_priority_call_costs_the_priority_rates() -> None:
    usage = Usage(input_tokens=1000, cached_input_tokens=200, output_tokens=500)

    cost = catalog_cost("gpt-4o-mini", usage, "openai", TIERED_NOON, "priority")

    # 800 x $0.25 + 200 x $0.125 = $225 per million; 500 x $1 = $500.
    assert cost == Cost(usd("0.000225"), usd("0.0005"), usd("0.000725"), SOURCE_CATALOG)


def test_a_tier_costs_the_standard_rates_before_its_price_starts() -> None:
    usage = Usage(input_tokens=10_000, output_tokens=2_000)
    before = datetime(2026, 10, 11, 12, tzinfo=UTC)

    assert catalog_cost("o3", usage, "openai", before, "flex") == catalog_cost(
        "o3", usage, "openai", before
    )


def test_a_tier_the_catalog_does_not_price_costs_the_standard_rates(caplog) -> None:
    usage = Usage(input_tokens=1000, output_tokens=500)
    book = PriceBook({})
    standard = book.cost("gpt-4o-mini", usage, provider="openai", at=TIERED_NOON)

    with caplog.at_level(logging.WARNING, logger="gateway.pricing"):
        costs = [
            book.cost(
                "gpt-4o-mini",
                usage,
                provider="openai",
                at=TIERED_NOON,
                service_tier=tier,
            )
            for tier in ("flex", "flex", "scale", "default", "auto")
        ]

    assert costs == [standard] * 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "the price catalog has no flex tier for model gpt-4o-mini: its calls at "
        "that tier are priced at the standard rates",
        "the price catalog has no scale tier for model gpt-4o-mini: its calls at "
        "that tier are priced at the standard rates",
    ]


def test_an_override_prices_a_tier_by_its_own_table_or_its_base_rates() -> None:
    book = PriceBook(
        {
            "my-model": ModelPrice(
                input="2",
                output="8",
                service_tiers={
                    "flex": {"input": "1", "cached_input": "0.1", "output": "4"}
                },
            )
        }
    )
    usage = Usage(input_tokens=1000, cached_input_tokens=500, output_tokens=100)

    def cost(tier: str | None) -> Cost | None:
        return book.cost("my-model", usage, provider=None, at=NOON, service_tier=tier)

    # 500 x $1 + 500 x $0.10 = $550 per million; 100 x $4 = $400.
    assert cost("flex") == Cost(usd("0.00055"), usd("0.0004"), usd("0.00095"), "config")
    # No cached rate: all 1,000 input at $2; 100 x $8.
    standard = Cost(usd("0.002"), usd("0.0008"), usd("0.0028"), "config")
    assert cost(None) == cost("default") == cost("priority") == standard


def test_an_override_wins_over_the_catalog() -> None:
    book = PriceBook(
        {"gpt-4o-mini": ModelPrice(input="1", cached_input="0.5", output="2")}
    )
    usage = Usage(input_tokens=1000, cached_input_tokens=200, output_tokens=500)

    cost = book.cost("gpt-4o-mini", usage, provider="openai", at=NOON)

    # 800 x $1 + 200 x $0.50 = 900; 500 x $2 = 1000.
    assert cost == Cost(usd("0.0009"), usd("0.001"), usd("0.0019"), SOURCE_CONFIG)


def test_an_override_also_prices_the_dated_name_the_upstream_reports() -> None:
    book = PriceBook({"local-llm": ModelPrice(input="3", output="4")})
    usage = Usage(input_tokens=100, cached_input_tokens=100, output_tokens=10)

    cost = book.cost("local-llm-2025-01-31", usage, provider=None, at=NOON)

    # No cached rate: cached input at the input rate, 100 x $3; 10 x $4.
    assert cost == Cost(usd("0.0003"), usd("0.00004"), usd("0.00034"), SOURCE_CONFIG)


def test_an_override_for_the_dated_name_wins_over_the_undated_one() -> None:
    book = PriceBook(
        {
            "m": ModelPrice(input="1", output="1"),
            "m-2025-01-31": ModelPrice(input="2", output="2"),
        }
    )
    usage = Usage(input_tokens=1_000_000)

    cost = book.cost("m-2025-01-31", usage, provider=None, at=NOON)

    assert cost is not None
    assert cost.total_usd == 2


def test_an_unknown_model_is_unpriced_and_warned_about_once(caplog) -> None:
    book = PriceBook({})
    usage = Usage(input_tokens=10, output_tokens=10)

    with caplog.at_level(logging.WARNING, logger="gateway.pricing"):
        first = book.cost("my-finetune", usage, provider="openai", at=NOON)
        second = book.cost("my-finetune", usage, provider="openai", at=NOON)
        other = book.cost("nobody-prices-this", usage, provider=None, at=NOON)

    assert first is second is other is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.args[0] for r in warnings] == ["my-finetune", "nobody-prices-this"]


def test_empty_usage_costs_nothing() -> None:
    cost = catalog_cost("gpt-4o-mini", Usage(), "openai")

    assert cost == Cost(usd("0"), usd("0"), usd("0"), SOURCE_CATALOG)


def test_inconsistent_counts_are_cut_down_before_pricing() -> None:
    usage = Usage(input_tokens=100, cached_input_tokens=500, output_tokens=-5)

    cost = catalog_cost("gpt-4o-mini", usage, "openai")

    # All 100 input tokens cached at $0.075; no output.
    assert cost == Cost(usd("0.0000075"), usd("0"), usd("0.0000075"), SOURCE_CATALOG)


def test_built_in_tool_calls_are_a_fee_per_call() -> None:
    usage = Usage(
        input_tokens=1000, output_tokens=500, web_search_calls=2, file_search_calls=1
    )

    cost = catalog_cost("gpt-4o-mini-2024-07-18", usage, "openai", TIERED_NOON)

    # 1,000 x $0.15 and 500 x $0.60 per million; 2 x $10 + 1 x $2.50 per thousand.
    assert cost == Cost(
        usd("0.00015"), usd("0.0003"), usd("0.02295"), SOURCE_CATALOG, usd("0.0225")
    )


def test_a_tier_prices_the_tokens_and_leaves_the_tool_fee() -> None:
    usage = Usage(input_tokens=10_000, output_tokens=2_000, web_search_calls=1)

    cost = catalog_cost("o3", usage, "openai", TIERED_NOON, "flex")

    # 10,000 x $1 and 2,000 x $4 per million, and one search at $10 a thousand.
    assert cost == Cost(
        usd("0.01"), usd("0.008"), usd("0.028"), SOURCE_CATALOG, usd("0.01")
    )


def test_a_per_request_fee_is_charged_on_every_call() -> None:
    usage = Usage(input_tokens=1000, output_tokens=100)

    cost = catalog_cost("sonar", usage, "perplexity", TIERED_NOON)

    # 1,000 x $1 and 100 x $1 per million, and $12 per thousand requests.
    assert cost == Cost(
        usd("0.001"), usd("0.0001"), usd("0.0131"), SOURCE_CATALOG, usd("0.012")
    )


def test_an_override_prices_tool_calls_at_its_rates_or_the_catalogs() -> None:
    usage = Usage(
        input_tokens=1000, output_tokens=100, web_search_calls=4, file_search_calls=2
    )
    book = PriceBook(
        {
            "gpt-4o-mini": ModelPrice(input="1", output="2", web_search="25"),
            "in-house": ModelPrice(input="1", output="2"),
        }
    )

    named = book.cost("gpt-4o-mini", usage, provider="openai", at=TIERED_NOON)
    unknown = book.cost("in-house", usage, provider=None, at=TIERED_NOON)

    # 4 x $25 at the override's rate, 2 x $2.50 at the catalog's.
    assert named == Cost(
        usd("0.001"), usd("0.0002"), usd("0.1062"), SOURCE_CONFIG, usd("0.105")
    )
    # Neither the override nor the catalog prices a search of this model.
    assert unknown == Cost(usd("0.001"), usd("0.0002"), usd("0.0012"), SOURCE_CONFIG)


def catalog_models() -> list[tuple[str, str]]:
    snapshot = data_snapshot.get_snapshot()
    return [
        (provider.id, model.id)
        for provider in snapshot.providers
        if provider.id in ("openai", "deepseek")
        for model in provider.models
        # A few ids are not names a model is called by (ft:gpt-4o wants a suffix).
        if model.is_match(model.id)
    ]


@pytest.mark.parametrize(("provider", "model"), catalog_models())
def test_every_catalog_model_costs_what_genai_prices_computes(
    provider: str, model: str
) -> None:
    """The gateway's own arithmetic agrees with the catalog's, to the digit."""
    usage = Usage(
        input_tokens=300_123,
        cached_input_tokens=45_678,
        output_tokens=9_876,
        web_search_calls=7,
        file_search_calls=3,
    )
    book = PriceBook({})
    reference = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens,
        web_searches=usage.web_search_calls,
        storage_searches=usage.file_search_calls,
    )

    for at, tier in (
        (datetime(2024, 1, 1, 3, tzinfo=UTC), None),
        (datetime(2025, 6, 2, 12, tzinfo=UTC), None),
        (datetime(2026, 9, 20, 20, tzinfo=UTC), None),
        (TIERED_NOON, "default"),
        (TIERED_NOON, "flex"),
        (TIERED_NOON, "priority"),
        (TIERED_NOON, "fast"),
    ):
        context = {"service_tier": tier} if tier else None
        expected = genai_prices.calc_price(
            reference,
            model,
            provider_id=provider,
            genai_request_timestamp=at,
            price_context=context,
        )
        cost = book.cost(model, usage, provider=provider, at=at, service_tier=tier)

        fee = expected.total_price - expected.input_price - expected.output_price

        assert cost is not None
        assert cost.input_usd == expected.input_price.quantize(USD_PLACES)
        assert cost.output_usd == expected.output_price.quantize(USD_PLACES)
        assert cost.fee_usd == fee.quantize(USD_PLACES)


@pytest.mark.parametrize(
    ("provider", "model"), [*catalog_models(), ("openai", "gpt-audio")]
)
def test_every_catalog_model_prices_audio_as_genai_prices_does(
    provider: str, model: str
) -> None:
    usage = Usage(
        input_tokens=300_123,
        cached_input_tokens=45_678,
        output_tokens=9_876,
        input_audio_tokens=100_000,
        output_audio_tokens=3_000,
    )
    reference = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens,
        input_audio_tokens=usage.input_audio_tokens,
        # Chat usage names no cached audio: its cached tokens are text.
        cache_audio_read_tokens=0,
        output_audio_tokens=usage.output_audio_tokens,
    )

    expected = genai_prices.calc_price(
        reference, model, provider_id=provider, genai_request_timestamp=TIERED_NOON
    )
    cost = PriceBook({}).cost(model, usage, provider=provider, at=TIERED_NOON)

    assert cost is not None
    assert cost.input_usd == expected.input_price.quantize(USD_PLACES)
    assert cost.output_usd == expected.output_price.quantize(USD_PLACES)


counts = st.integers(min_value=0, max_value=10**9)
models = st.sampled_from(
    [
        ("gpt-4o-mini", "openai"),
        ("gpt-4o-2024-05-13", "openai"),
        ("o3-mini", "openai"),
        ("gpt-5.5", "openai"),
        ("text-embedding-3-small", "openai"),
        ("deepseek-chat", "deepseek"),
        ("deepseek-v4-pro", "deepseek"),
        ("priced-here", None),
        ("searched-here", None),
        ("sonar", "perplexity"),
    ]
)
moments = st.datetimes(
    min_value=datetime(2023, 1, 1),
    max_value=datetime(2027, 12, 31),
    timezones=st.just(UTC),
)
BOOK = PriceBook(
    {
        "priced-here": ModelPrice(input="0.3", cached_input="0.03", output="1.7"),
        "searched-here": ModelPrice(
            input="0.3", output="1.7", web_search="25", file_search="2.5"
        ),
    }
)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    input_tokens = draw(counts)
    output_tokens = draw(counts)
    return Usage(
        input_tokens=input_tokens,
        cached_input_tokens=draw(st.integers(min_value=0, max_value=input_tokens)),
        output_tokens=output_tokens,
        reasoning_tokens=draw(st.integers(min_value=0, max_value=output_tokens)),
        total_tokens=input_tokens + output_tokens,
        web_search_calls=draw(st.integers(min_value=0, max_value=1000)),
        file_search_calls=draw(st.integers(min_value=0, max_value=1000)),
    )


@settings(max_examples=200, deadline=None)
@given(model=models, usage=usages(), at=moments)
def test_costs_are_decimal_and_total_is_input_plus_output_plus_fee(
    model: tuple[str, str | None], usage: Usage, at: datetime
) -> None:
    cost = BOOK.cost(model[0], usage, provider=model[1], at=at)

    assert cost is not None
    for part in (cost.input_usd, cost.output_usd, cost.fee_usd, cost.total_usd):
        assert type(part) is Decimal
        assert part.as_tuple().exponent == -12
        assert part >= 0
    assert cost.total_usd == cost.input_usd + cost.output_usd + cost.fee_usd


@settings(max_examples=200, deadline=None)
@given(
    model=models,
    usage=usages(),
    at=moments,
    field=st.sampled_from(
        [
            "input_tokens",
            "output_tokens",
            "reasoning_tokens",
            "web_search_calls",
            "file_search_calls",
        ]
    ),
    more=st.integers(min_value=1, max_value=10**6),
)
def test_cost_never_falls_when_tokens_grow(
    model: tuple[str, str | None], usage: Usage, at: datetime, field: str, more: int
) -> None:
    """More tokens of a kind never cost less (reasoning, being output, adds 0)."""
    bigger = Usage(
        input_tokens=usage.input_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        web_search_calls=usage.web_search_calls,
        file_search_calls=usage.file_search_calls,
    )
    setattr(bigger, field, getattr(bigger, field) + more)
    if field == "reasoning_tokens":
        bigger.output_tokens = max(bigger.output_tokens, bigger.reasoning_tokens)

    before = BOOK.cost(model[0], usage, provider=model[1], at=at)
    after = BOOK.cost(model[0], bigger, provider=model[1], at=at)

    assert before is not None
    assert after is not None
    assert after.total_usd >= before.total_usd
    assert after.input_usd >= before.input_usd
