"""
What a call cost, in USD, from its usage.

Prices come from two places, in this order:

1. ``[pricing."<model>"]`` in the configuration. The key is matched against the
   model the upstream reported, exactly; failing that, against that name with a
   ``-YYYY-MM-DD`` snapshot suffix removed, so that an override for
   ``gpt-4o-mini`` also prices the ``gpt-4o-mini-2024-07-18`` that OpenAI
   reports back. An override for the dated name wins over the undated one.
2. The price catalog bundled with ``genai-prices``, read offline (the gateway
   never starts its updater). It knows dated snapshots, cached-input rates,
   tiered prices and price changes over time, including DeepSeek's off-peak
   hours, so every call is priced at its own timestamp. With a provider id,
   only that provider's models (and those it resells) are searched; a
   provider id the catalog does not know prices nothing, since a self-hosted
   upstream priced at some cloud's rates would be silently wrong. Without one,
   the catalog picks the provider from the model name.

A call is priced at the service tier the upstream says served it (OpenAI's
``service_tier``: ``flex`` at about half the standard rates, ``priority`` at
more): by the override's ``service_tiers`` entry, or by the catalog's price
for that tier. A tier the prices do not list, and ``default``, costs the
standard rates; a tier the catalog does not list is warned about once.

Cached input tokens are priced at the cached rate and the rest of the input at
the input rate; reasoning tokens are part of the output and priced once. Audio
tokens (part of the input and the output) are priced at the catalog's audio
rates where the model has them (``gpt-audio``: 32 and 64 USD a million against
2.50 and 10 for its text), else at the text rates, as are they by an override.

Some charges are per call, not per token: the built-in tools a Responses call
ran (web search at 10 USD a thousand calls for most OpenAI models, file search
at 2.50), and the per-request fee some catalog models carry (Perplexity's
``sonar``: 12 USD a thousand requests). They are the call's fee, priced at the
catalog's rates or an override's ``web_search`` / ``file_search`` rates (the
catalog's where the override names none).

The arithmetic is Decimal throughout, and each part is rounded to 12 places
(the ``numeric(20,12)`` columns), half to even; the total is the sum of the
rounded parts, so it always equals input plus output plus fee.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as catalog

from gateway.config import ModelPrice, TierPrice
from gateway.usage import MAX_TOKENS, Usage

log = logging.getLogger(__name__)

SOURCE_CONFIG = "config"
SOURCE_CATALOG = "genai-prices"

USD_PLACES = Decimal("1e-12")

# Caches keyed by model name stop growing here: names come from outside.
MAX_CACHED_MODELS = 4096

_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")

# Tiers at the standard rates by definition: "auto" is only ever asked for.
STANDARD_TIERS = frozenset({"default", "auto"})

# Counts are capped at MAX_TOKENS (10 digits) and prices have a handful of
# digits, so 40 digits hold every product exactly.
_CONTEXT = Context(prec=40, rounding=ROUND_HALF_EVEN)
_ZERO = Decimal(0)
# No fee, to the places every stored part has.
_NO_FEE = _ZERO.quantize(USD_PLACES)

# Catalog price keys the gateway prices itself. Any other key that a reported
# usage could touch (a text-only input rate, a separate reasoning rate, a
# per-request fee) sends the call through genai-prices' own calculation.
_FAST_KEYS = frozenset({"input_mtok", "cache_read_mtok", "output_mtok"})
# Parts of the name of a catalog price key that measures something the usage
# never reports (audio, images, cache writes, searches, ...), so it adds nothing.
_UNREPORTED = ("audio", "image", "video", "cache_write", "searches", "executions")


@dataclass(frozen=True, slots=True)
class Cost:
    # Uncached input at the input rate plus cached input at the cached rate.
    input_usd: Decimal
    output_usd: Decimal
    # input_usd + output_usd + fee_usd.
    total_usd: Decimal
    # Which prices were used: SOURCE_CONFIG or SOURCE_CATALOG.
    source: str
    # Charged per call rather than per token: tool calls, request fees.
    fee_usd: Decimal = _NO_FEE


@dataclass(frozen=True, slots=True)
class _CatalogModel:
    provider: catalog.Provider
    model: catalog.ModelInfo
    # True when input, cached input and output rates are all that apply.
    is_simple: bool
    # The service tiers the catalog prices apart from the standard rates.
    tiers: frozenset[str]
    # True when audio tokens have rates of their own.
    prices_audio: bool


class PriceBook:
    """
    The prices of every model, from the configuration and the catalog.

    Catalog matches are cached per (provider, model); the rates themselves are
    resolved at each call's timestamp, which costs a list scan.
    """

    def __init__(self, overrides: Mapping[str, ModelPrice]) -> None:
        self._overrides = dict(overrides)
        self._override_for: dict[str, ModelPrice | None] = {}
        self._catalog_for: dict[tuple[str | None, str], _CatalogModel | None] = {}
        self._snapshot = data_snapshot.get_snapshot()
        self._warned: set[str] = set()
        self._warned_tiers: set[tuple[str, str]] = set()
        self._unknown_providers: set[str] = set()

    def cost(
        self,
        model: str,
        usage: Usage,
        *,
        provider: str | None,
        at: datetime,
        service_tier: str | None = None,
    ) -> Cost | None:
        """
        Return what *usage* of *model* cost at *at*, or None when unpriced.

        *provider* is the catalog's provider id (``openai``, ``deepseek``), or
        None to find it from the model name. A naive *at* is taken as UTC.
        *service_tier* is the tier the upstream named, None when it named none.
        """
        input_tokens, cached_tokens, output_tokens, reasoning_tokens = _counts(usage)
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        tools = usage.web_search_calls > 0 or usage.file_search_calls > 0

        override = self._override(model)
        if override is not None:
            tier_price: TierPrice = override
            if service_tier is not None:
                tier_price = override.service_tiers.get(service_tier, override)
            cached_rate = tier_price.cached_input
            return _price(
                input_tokens - cached_tokens,
                cached_tokens,
                output_tokens,
                tier_price.input,
                tier_price.input if cached_rate is None else cached_rate,
                tier_price.output,
                SOURCE_CONFIG,
                self._override_fee(override, model, provider, at, usage)
                if tools
                else _NO_FEE,
            )

        found = self._catalog_model(provider, model)
        if found is None:
            self._warn_unpriced(model, provider)
            return None
        context = None
        if service_tier is not None:
            if service_tier in found.tiers:
                context = {"service_tier": service_tier}
            elif service_tier not in STANDARD_TIERS:
                self._warn_unpriced_tier(found.model.id, service_tier)
        audio = usage.input_audio_tokens or usage.output_audio_tokens
        if not found.is_simple or (audio and found.prices_audio):
            counts = genai_prices.Usage(
                input_tokens=input_tokens,
                cache_read_tokens=cached_tokens,
                output_tokens=output_tokens,
                output_reasoning_tokens=reasoning_tokens,
            )
            if tools:
                counts.web_searches = usage.web_search_calls
                counts.storage_searches = usage.file_search_calls
            if audio:
                # Audio is part of the input beside the cached text, at most
                # what is left of it: a report that says more is cut down.
                # Chat usage names no cached audio: the cached tokens are text.
                counts.cache_audio_read_tokens = 0
                counts.input_audio_tokens = min(
                    max(usage.input_audio_tokens, 0), input_tokens - cached_tokens
                )
                counts.output_audio_tokens = min(
                    max(usage.output_audio_tokens, 0), output_tokens
                )
            return self._price_by_catalog(found, counts, at, context)

        rates = found.model.get_prices(at, context)
        input_rate = _rate(rates.input_mtok, input_tokens)
        cached_rate = _rate(rates.cache_read_mtok, input_tokens)
        return _price(
            input_tokens - cached_tokens,
            cached_tokens,
            output_tokens,
            input_rate,
            input_rate if cached_rate is None else cached_rate,
            _rate(rates.output_mtok, input_tokens) or _ZERO,
            SOURCE_CATALOG,
            _fee(*_tool_rates(rates), usage) if tools else _NO_FEE,
        )

    def _override_fee(
        self,
        override: ModelPrice,
        model: str,
        provider: str | None,
        at: datetime,
        usage: Usage,
    ) -> Decimal:
        """The tool calls' fee at *override*'s rates, or the catalog's it omits."""
        web_rate, file_rate = override.web_search, override.file_search
        if web_rate is None or file_rate is None:
            found = self._catalog_model(provider, model)
            if found is not None:
                web_catalog, file_catalog = _tool_rates(
                    found.model.get_prices(at, None)
                )
                web_rate = web_catalog if web_rate is None else web_rate
                file_rate = file_catalog if file_rate is None else file_rate
        return _fee(web_rate, file_rate, usage)

    def _override(self, model: str) -> ModelPrice | None:
        try:
            return self._override_for[model]
        except KeyError:
            pass
        price = self._overrides.get(model)
        if price is None:
            undated = _DATE_SUFFIX.sub("", model)
            if undated != model:
                price = self._overrides.get(undated)
        if len(self._override_for) < MAX_CACHED_MODELS:
            self._override_for[model] = price

        return price

    def _catalog_model(self, provider: str | None, model: str) -> _CatalogModel | None:
        key = (provider, model)
        try:
            return self._catalog_for[key]
        except KeyError:
            pass
        found = self._find_in_catalog(provider, model)
        if len(self._catalog_for) < MAX_CACHED_MODELS:
            self._catalog_for[key] = found

        return found

    def _find_in_catalog(
        self, provider: str | None, model: str
    ) -> _CatalogModel | None:
        snapshot = self._snapshot
        if provider is not None:
            try:
                snapshot.find_provider(None, provider, None)
            except LookupError:
                if (
                    provider not in self._unknown_providers
                    and len(self._unknown_providers) < MAX_CACHED_MODELS
                ):
                    self._unknown_providers.add(provider)
                    log.warning(
                        "provider %s is not in the price catalog: set the "
                        "upstream's provider or add [pricing] entries",
                        provider,
                    )
                return None
        try:
            found_provider, found_model = snapshot.find_provider_model(
                model, None, provider, None
            )
        except LookupError:
            return None

        return _CatalogModel(
            found_provider,
            found_model,
            _is_simple(found_model),
            _priced_tiers(found_provider, found_model),
            _prices_audio(found_model),
        )

    def _price_by_catalog(
        self,
        found: _CatalogModel,
        usage: genai_prices.Usage,
        at: datetime,
        context: catalog.PriceContext | None,
    ) -> Cost | None:
        try:
            price = found.model.calc_price(
                usage, found.provider, genai_request_timestamp=at, price_context=context
            )
        except ValueError:
            self._warn_unpriced(found.model.id, found.provider.id)
            return None
        ctx = _CONTEXT
        input_usd = price.input_price.quantize(USD_PLACES, context=ctx)
        output_usd = price.output_price.quantize(USD_PLACES, context=ctx)
        # The catalog gives units without a direction (tool calls, requests)
        # to the total only.
        fee = ctx.subtract(price.total_price, price.input_price + price.output_price)
        fee_usd = fee.quantize(USD_PLACES, context=ctx)
        total_usd = ctx.add(ctx.add(input_usd, output_usd), fee_usd)

        return Cost(input_usd, output_usd, total_usd, SOURCE_CATALOG, fee_usd)

    def _warn_unpriced(self, model: str, provider: str | None) -> None:
        if model in self._warned or len(self._warned) >= MAX_CACHED_MODELS:
            return
        self._warned.add(model)
        log.warning(
            "no price for model %s (provider %s): its calls are recorded without cost",
            model,
            provider or "any",
        )

    def _warn_unpriced_tier(self, model: str, tier: str) -> None:
        key = (model, tier)
        if key in self._warned_tiers or len(self._warned_tiers) >= MAX_CACHED_MODELS:
            return
        self._warned_tiers.add(key)
        log.warning(
            "the price catalog has no %s tier for model %s: its calls at that "
            "tier are priced at the standard rates",
            tier,
            model,
        )


def _counts(usage: Usage) -> tuple[int, int, int, int]:
    """The four counts of *usage*, each within 0..MAX_TOKENS and its whole."""
    input_tokens = min(max(usage.input_tokens, 0), MAX_TOKENS)
    output_tokens = min(max(usage.output_tokens, 0), MAX_TOKENS)
    cached_tokens = min(max(usage.cached_input_tokens, 0), input_tokens)
    reasoning_tokens = min(max(usage.reasoning_tokens, 0), output_tokens)
    return input_tokens, cached_tokens, output_tokens, reasoning_tokens


def _price(
    uncached_tokens: int,
    cached_tokens: int,
    output_tokens: int,
    input_rate: Decimal | None,
    cached_rate: Decimal | None,
    output_rate: Decimal,
    source: str,
    fee_usd: Decimal = _NO_FEE,
) -> Cost:
    # Rates are USD per million tokens: multiply, then shift six places.
    ctx = _CONTEXT
    input_usd = ctx.add(
        ctx.multiply(input_rate or _ZERO, uncached_tokens),
        ctx.multiply(cached_rate or _ZERO, cached_tokens),
    )
    input_usd = input_usd.scaleb(-6, ctx).quantize(USD_PLACES, context=ctx)
    output_usd = ctx.multiply(output_rate, output_tokens)
    output_usd = output_usd.scaleb(-6, ctx).quantize(USD_PLACES, context=ctx)
    total_usd = ctx.add(input_usd, output_usd)
    if fee_usd:
        total_usd = ctx.add(total_usd, fee_usd)

    return Cost(input_usd, output_usd, total_usd, source, fee_usd)


def _tool_rates(rates: catalog.ModelPrice) -> tuple[Decimal | None, Decimal | None]:
    """The catalog's web search and file search rates, USD per thousand calls."""
    return (
        _rate(rates.web_searches_kcount, 0),
        _rate(rates.storage_searches_kcount, 0),
    )


def _fee(web_rate: Decimal | None, file_rate: Decimal | None, usage: Usage) -> Decimal:
    """What *usage*'s tool calls cost at these rates, USD per thousand calls."""
    ctx = _CONTEXT
    web_calls = min(max(usage.web_search_calls, 0), MAX_TOKENS)
    file_calls = min(max(usage.file_search_calls, 0), MAX_TOKENS)
    fee = ctx.add(
        ctx.multiply(web_rate or _ZERO, web_calls),
        ctx.multiply(file_rate or _ZERO, file_calls),
    )
    return fee.scaleb(-3, ctx).quantize(USD_PLACES, context=ctx)


def _rate(price: object, input_tokens: int) -> Decimal | None:
    """The per-million rate of one catalog price for a call of *input_tokens*."""
    if isinstance(price, catalog.TieredPrices):
        # The catalog's tiers are cliffs: past a tier's start, every token of
        # the call is priced at that tier's rate.
        for tier in reversed(price.tiers):
            if input_tokens > tier.start:
                return tier.price
        return price.base
    if isinstance(price, Decimal):
        return price
    return None


def _priced_tiers(
    provider: catalog.Provider, model: catalog.ModelInfo
) -> frozenset[str]:
    """The service tiers *model* has prices of its own for at *provider*."""
    # genai-prices applies a model's variants only at the provider that lists
    # it, not at one that resells it.
    if not any(own is model for own in provider.models):
        return frozenset()
    return frozenset(
        variant.when["service_tier"]
        for variant in model.price_variants or ()
        if variant.when.keys() == {"service_tier"}
        and any(value is not None for value in vars(variant.prices).values())
    )


def _all_prices(model: catalog.ModelInfo) -> list[catalog.ModelPrice]:
    """Every set of prices *model* has: over time, and by request variant."""
    if isinstance(model.prices, catalog.ModelPrice):
        prices = [model.prices]
    else:
        prices = [conditional.prices for conditional in model.prices]
    return prices + [variant.prices for variant in model.price_variants or ()]


def _prices_audio(model: catalog.ModelInfo) -> bool:
    """Whether any price of *model* has an audio token rate."""
    return any(
        price.input_audio_mtok is not None or price.output_audio_mtok is not None
        for price in _all_prices(model)
    )


def _is_simple(model: catalog.ModelInfo) -> bool:
    """Whether every price of *model* is made of rates the gateway applies itself."""
    for price in _all_prices(model):
        for key, value in vars(price).items():
            if value is None or key in _FAST_KEYS:
                continue
            if not any(part in key for part in _UNREPORTED):
                return False
    return True
