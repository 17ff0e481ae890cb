from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.usage import (
    MAX_TOKENS,
    Usage,
    estimate_tokens,
    service_tier_name,
    usage_from_body,
    usage_from_object,
)
from tests.fixtures import recorded


@pytest.mark.parametrize(
    ("name", "model", "expected", "tier"),
    [
        ("openai_chat_1.json", "gpt-4o-mini-2024-07-18", Usage(12, 0, 5, 0, 17), None),
        (
            "openai_chat_2.json",
            "gpt-4o-mini-2024-07-18",
            Usage(8, 0, 9, 0, 17),
            "default",
        ),
        (
            "openai_chat_reasoning_1.json",
            "o3-mini-2025-01-31",
            Usage(7, 0, 87, 64, 94),
            "default",
        ),
        (
            "openai_responses_1.json",
            "gpt-5.5-2026-04-23",
            Usage(11, 0, 5, 0, 16),
            "default",
        ),
        (
            "openai_responses_2.json",
            "gpt-4o-mini-2024-07-18",
            Usage(22, 0, 6, 0, 28),
            "default",
        ),
        (
            "openai_responses_reasoning_1.json",
            "gpt-5.4-2026-03-05",
            Usage(44, 0, 288, 9, 332),
            "default",
        ),
        (
            "openai_embeddings_1.json",
            "text-embedding-3-small",
            Usage(8, 0, 0, 0, 8),
            None,
        ),
        ("deepseek_chat_1.json", "deepseek-chat", Usage(12, 0, 28, 0, 40), None),
        (
            "deepseek_reasoner_1.json",
            "deepseek-v4-flash",
            Usage(563, 512, 116, 60, 679),
            None,
        ),
        (
            "deepseek_reasoner_2.json",
            "deepseek-v4-flash",
            Usage(976, 896, 61, 25, 1037),
            None,
        ),
        (
            "deepseek_reasoner_3.json",
            "deepseek-reasoner",
            Usage(12, 0, 789, 415, 801),
            None,
        ),
    ],
)
def test_recorded_bodies_give_their_usage_model_and_tier(
    name: str, model: str, expected: Usage, tier: str | None
) -> None:
    usage, reported, reported_tier = usage_from_body(recorded(name))

    assert usage == expected
    assert reported == model
    assert reported_tier == tier


@pytest.mark.parametrize(
    "name",
    [
        "openai_error_400_1.json",
        "openai_error_400_2.json",
        "openai_error_400_3.json",
        "openai_error_404_1.json",
        "openai_error_429_1.json",
    ],
)
def test_error_bodies_have_no_usage(name: str) -> None:
    assert usage_from_body(recorded(name)) == (None, None, None)


def test_deepseek_cache_hit_wins_over_details() -> None:
    obj = {
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 10},
        "prompt_cache_hit_tokens": 64,
        "prompt_cache_miss_tokens": 36,
    }

    assert usage_from_object(obj) == Usage(100, 64, 10, 0, 110)


def test_deepseek_hit_and_miss_stand_in_for_missing_prompt_tokens() -> None:
    obj = {"prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}

    assert usage_from_object(obj) == Usage(100, 64, 0, 0, 100)


def test_total_is_input_plus_output_when_not_reported() -> None:
    assert usage_from_object({"input_tokens": 3, "output_tokens": 4}) == Usage(
        3, 0, 4, 0, 7
    )


def test_reported_total_is_kept_as_reported() -> None:
    obj = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 9}

    assert usage_from_object(obj) == Usage(3, 0, 4, 0, 9)


def test_parts_are_cut_down_to_their_whole() -> None:
    obj = {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 50},
        "completion_tokens_details": {"reasoning_tokens": 20},
    }

    assert usage_from_object(obj) == Usage(5, 5, 2, 2, 7)


BAD_COUNTS = [-1, 1.5, "12", True, [12], {"n": 12}, MAX_TOKENS + 1, 10**30]


@pytest.mark.parametrize("bad", BAD_COUNTS)
@pytest.mark.parametrize(
    "obj",
    [
        {"prompt_tokens": "BAD", "completion_tokens": 4, "total_tokens": 4},
        {"prompt_tokens": 3, "completion_tokens": "BAD"},
        {"input_tokens": "BAD", "output_tokens": 4},
        {"input_tokens": 3, "output_tokens": "BAD", "total_tokens": 7},
        {"prompt_tokens": "BAD"},
        {"total_tokens": "BAD"},
    ],
)
def test_a_count_that_is_not_a_count_makes_the_usage_unreadable(
    obj: dict[str, object], bad: object
) -> None:
    """Taken as 0, it would be priced as nothing and stored as reported."""
    sent = {key: bad if value == "BAD" else value for key, value in obj.items()}

    assert usage_from_object(sent) == Usage(unreadable=True)


def test_a_total_without_its_parts_is_unreadable() -> None:
    assert usage_from_object({"total_tokens": 50}) == Usage(unreadable=True)


@pytest.mark.parametrize("bad", [*BAD_COUNTS, None])
def test_a_total_that_is_not_a_count_is_the_sum_of_its_parts(bad: object) -> None:
    obj = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": bad}

    assert usage_from_object(obj) == Usage(3, 0, 4, 0, 7)


@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_a_detail_that_is_not_a_count_is_taken_as_none(bad: object) -> None:
    """Cached input then costs the full input rate: never less than it did."""
    obj = {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": bad},
        "completion_tokens_details": {"reasoning_tokens": bad},
    }

    assert usage_from_object(obj) == Usage(5, 0, 2, 0, 7)


def test_a_null_count_is_not_reported() -> None:
    obj = {"prompt_tokens": 3, "completion_tokens": None, "total_tokens": None}

    assert usage_from_object(obj) == Usage(3, 0, 0, 0, 3)


@pytest.mark.parametrize(("value", "count"), [(12.0, 12), (0.0, 0), (1e3, 1000)])
def test_a_whole_number_written_as_a_float_is_a_count(value: float, count: int) -> None:
    obj = {"prompt_tokens": value, "completion_tokens": value, "total_tokens": value}

    assert usage_from_object(obj) == Usage(count, 0, count, 0, count)


@pytest.mark.parametrize(
    "obj", [None, [], "usage", 12, {}, {"unrelated": 1}, {"prompt_tokens": None}]
)
def test_no_count_means_no_usage(obj: object) -> None:
    assert usage_from_object(obj) is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"usage"',
        b"null",
        b'{"usage": [1]}',
        b'{"usage": {"prompt_tokens": 1e999}}',
        b"\xff\xfe",
    ],
)
def test_garbage_bodies_give_nothing(body: bytes) -> None:
    assert usage_from_body(body) == (None, None, None)


def test_a_model_that_is_not_a_string_is_not_reported() -> None:
    body = b'{"model": 12, "usage": {"prompt_tokens": 1}}'

    assert usage_from_body(body) == (Usage(1, 0, 0, 0, 1), None, None)


def test_huge_integers_in_a_body_make_its_usage_unreadable() -> None:
    body = b'{"usage": {"prompt_tokens": 1234567890123456789012345, "total_tokens": 2}}'

    assert usage_from_body(body) == (Usage(unreadable=True), None, None)


@pytest.mark.parametrize(
    ("n_bytes", "tokens"), [(-5, 0), (0, 0), (1, 1), (4, 1), (5, 2), (4000, 1000)]
)
def test_estimate_tokens_is_a_quarter_of_the_bytes_rounded_up(
    n_bytes: int, tokens: int
) -> None:
    assert estimate_tokens(n_bytes) == tokens


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
usage_keys = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "prompt_cache_hit_tokens",
        "prompt_cache_miss_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens_details",
        "output_tokens_details",
        "cached_tokens",
        "reasoning_tokens",
    ]
)
usage_like = st.recursive(
    st.none() | st.integers(min_value=-10, max_value=2**63 - 1) | st.text(max_size=3),
    lambda children: st.dictionaries(usage_keys, children, max_size=8),
    max_leaves=30,
)


@given(usage_like | json_values)
def test_any_object_gives_a_consistent_usage_or_none(obj: object) -> None:
    usage = usage_from_object(obj)

    if usage is not None:
        assert not usage.unreadable or usage == Usage(unreadable=True)
        assert 0 <= usage.cached_input_tokens <= usage.input_tokens <= MAX_TOKENS
        assert 0 <= usage.reasoning_tokens <= usage.output_tokens <= MAX_TOKENS
        assert usage.total_tokens >= 0


@given(st.binary(max_size=200))
def test_any_bytes_never_raise(body: bytes) -> None:
    usage_from_body(body)


@given(usage_like)
def test_any_json_body_never_raises(obj: object) -> None:
    body = orjson.dumps({"model": "m", "usage": obj}, option=orjson.OPT_NON_STR_KEYS)

    usage, model, tier = usage_from_body(body)

    assert model == "m"
    assert tier is None
    assert usage == usage_from_object(orjson.loads(body)["usage"])


def test_audio_tokens_are_read_as_parts_of_their_wholes() -> None:
    obj = {
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 400},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 500},
    }

    usage = usage_from_object(obj)

    assert usage == Usage(1000, 0, 100, 0, 1100, 400, 100)


@pytest.mark.parametrize("tier", ["default", "flex", "priority", "scale", "tier_2"])
def test_a_body_names_its_service_tier(tier: str) -> None:
    body = orjson.dumps({"model": "o3", "service_tier": tier, "usage": {}})

    assert usage_from_body(body)[2] == tier


@pytest.mark.parametrize(
    "value", [None, "", 3, True, ["flex"], {"tier": "flex"}, "Flex", "fl ex", "f" * 33]
)
def test_a_service_tier_that_is_not_a_short_word_is_not_reported(value: object) -> None:
    body = orjson.dumps({"model": "o3", "service_tier": value, "usage": {}})

    assert usage_from_body(body)[2] is None


@given(st.text(max_size=40))
def test_a_service_tier_name_is_a_lower_case_word_or_nothing(value: str) -> None:
    tier = service_tier_name(value)

    assert tier is None or (
        tier == value
        and 0 < len(tier) <= 32
        and tier.isascii()
        and tier == tier.lower()
    )


def with_tool_calls(items: list[object]) -> bytes:
    """The recorded Responses answer with *items* before its message."""
    answer = orjson.loads(recorded("openai_responses_1.json"))
    answer["output"] = [*items, *answer["output"]]
    return orjson.dumps(answer)


WEB_SEARCH = {
    "id": "ws_1",
    "type": "web_search_call",
    "status": "completed",
    "action": {"type": "search", "query": "AAPL earnings"},
}
FILE_SEARCH = {"id": "fs_1", "type": "file_search_call", "status": "completed"}


def test_a_responses_answer_counts_its_built_in_tool_calls() -> None:
    body = with_tool_calls([WEB_SEARCH, WEB_SEARCH, FILE_SEARCH])

    usage, _, _ = usage_from_body(body)

    assert usage == Usage(11, 0, 5, 0, 16, web_search_calls=2, file_search_calls=1)


@pytest.mark.parametrize(
    "output",
    [
        None,
        "web_search_call",
        {"type": "web_search_call"},
        [None, 3, "web_search_call", {"type": ["web_search_call"]}, {"kind": "x"}],
        [{"type": "function_call"}, {"type": "message"}, {"type": "reasoning"}],
    ],
)
def test_anything_else_in_output_counts_no_tool_call(output: object) -> None:
    answer = orjson.loads(recorded("openai_responses_1.json"))
    answer["output"] = output

    usage, _, _ = usage_from_body(orjson.dumps(answer))

    assert usage == Usage(11, 0, 5, 0, 16)


def test_tool_calls_without_usage_are_not_counted() -> None:
    body = orjson.dumps({"output": [WEB_SEARCH], "status": "in_progress"})

    assert usage_from_body(body) == (None, None, None)
