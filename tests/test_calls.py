from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from multidict import CIMultiDict

from gateway.calls import Call, build_record, check_gateway_key, read_call_options
from gateway.config import ModelPrice, UpstreamSettings
from gateway.errors import Unauthorized
from gateway.pricing import PriceBook
from gateway.routing import Target
from gateway.tags import CallTags
from gateway.upstream import Upstream
from gateway.usage import Usage

KEYS = [(b"gk-alpha", "alpha"), (b"gk-beta", "")]


def test_stream_without_usage_option_gets_it_upstream() -> None:
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[]}'

    model, changed, stream = read_call_options("chat/completions", body)

    assert (model, stream) == ("gpt-4o-mini", True)
    assert changed is not None
    assert orjson.loads(changed)["stream_options"] == {"include_usage": True}


def test_explicit_false_is_overridden_and_other_options_kept() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}'

    _, changed, _ = read_call_options("completions", body)

    assert changed is not None
    assert orjson.loads(changed)["stream_options"] == {"include_usage": True, "x": 1}


def test_asking_for_usage_leaves_every_other_byte_as_the_client_sent_it() -> None:
    """Numbers past 64 bits, exponents, escapes and spacing reach the upstream."""
    body = (
        b' {"model": "m", "stream": true, "seed": 123456789012345678901234567890,'
        b' "temperature": 1e0, "top_p": 0.10000000000000001, "user": "\\u00e9"}'
    )

    _, changed, _ = read_call_options("chat/completions", body)

    assert changed == b' {"stream_options":{"include_usage":true},' + body[2:]


def test_options_already_there_keep_the_values_the_client_sent() -> None:
    body = (
        b'{"model":"m","stream":true,"seed":123456789012345678901234567890,'
        b'"stream_options":{"include_usage":false}}'
    )

    _, changed, _ = read_call_options("chat/completions", body)

    assert changed is not None
    sent = json.loads(changed)
    assert sent["seed"] == 123456789012345678901234567890
    assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("rest", "body", "stream"),
    [
        (
            "chat/completions",
            b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}',
            True,
        ),
        ("chat/completions", b'{"model":"m"}', False),
        ("chat/completions", b'{"model":"m","stream":"yes"}', False),
        (
            "chat/completions",
            b'{"model":"m","stream":true,"stream_options":"odd"}',
            True,
        ),
        ("responses", b'{"model":"m","stream":true}', True),
        ("embeddings", b'{"model":"m","input":"x"}', False),
    ],
)
def test_bodies_that_need_nothing_are_forwarded_as_sent(
    rest: str, body: bytes, stream: bool
) -> None:
    assert read_call_options(rest, body) == ("m", None, stream)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_left_alone(body: bytes) -> None:
    assert read_call_options("chat/completions", body) == (None, None, False)


def test_gateway_key_gives_its_label() -> None:
    headers = CIMultiDict({"Authorization": "Bearer gk-alpha"})

    assert check_gateway_key(headers, KEYS) == "alpha"
    assert (
        check_gateway_key(CIMultiDict({"Authorization": "Bearer gk-beta"}), KEYS)
        is None
    )
    assert check_gateway_key(CIMultiDict(), []) is None


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer sk-upstream", "Bearer gk-alph", "Basic gk-alpha", "gk-alpha"],
)
def test_anything_but_a_gateway_key_is_refused(authorization: str | None) -> None:
    headers = CIMultiDict({"Authorization": authorization} if authorization else {})

    with pytest.raises(Unauthorized):
        check_gateway_key(headers, KEYS)


def make_call(**outcome: object) -> Call:
    upstream = Upstream.from_settings(
        "openai", UpstreamSettings(base_url="https://api.openai.com/v1")
    )
    target = Target(
        "openai", "chat/completions", "", "https://api.openai.com/v1/chat/completions"
    )
    call = Call(
        request_id="r1",
        target=target,
        upstream=upstream,
        accounted=True,
        tags=CallTags(purpose="p"),
        gateway_keyed=False,
        key_label=None,
        body=b"x" * 400,
        request_bytes=400,
        requested_model="my-model",
    )
    for name, value in outcome.items():
        setattr(call, name, value)
    return call


def test_record_of_a_cut_call_estimates_tokens_and_prices_them() -> None:
    prices = PriceBook({"my-model": ModelPrice(input=Decimal(1), output=Decimal(2))})
    call = make_call(
        status=200, usage_complete=False, output_estimate=10, error="upstream_reset"
    )

    record = build_record(call, prices, datetime(2026, 1, 1, tzinfo=UTC), 0.5)

    assert (record.input_tokens, record.output_tokens, record.total_tokens) == (
        100,
        10,
        110,
    )
    assert record.usage_estimated
    assert not record.usage_complete
    # 100 input at $1/M, 10 output at $2/M.
    assert record.total_cost_usd == Decimal("0.000120")
    assert record.price_source == "config"
    assert record.response_time_ms == 500


def test_record_takes_the_reported_model_and_exact_usage() -> None:
    call = make_call(
        status=200,
        reported_model="gpt-4o-mini-2024-07-18",
        usage=Usage(10, 0, 5, 0, 15),
    )

    record = build_record(call, PriceBook({}), datetime(2026, 1, 1, tzinfo=UTC), 0.1)

    assert record.model == "gpt-4o-mini-2024-07-18"
    assert not record.usage_estimated
    # 10 input at $0.15/M, 5 output at $0.60/M (genai-prices, gpt-4o-mini).
    assert record.total_cost_usd == Decimal("0.0000045")
