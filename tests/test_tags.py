from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.errors import BadTagHeader
from gateway.tags import MAX_TAGS, CallTags, read_request_id, read_tags


def test_named_and_free_tags_are_read_with_lower_case_names() -> None:
    headers = CIMultiDict(
        {
            "X-Purpose": "signal",
            "x-ticker": " AAPL ",
            "X-Cycle-Id": "c-42",
            "X-Tag-Strategy": "momentum",
            "X-Tag-run_ID": "7",
            "Authorization": "Bearer sk-x",
        }
    )

    tags = read_tags(headers)

    assert tags == CallTags(
        purpose="signal",
        ticker="AAPL",
        cycle_id="c-42",
        tags={"strategy": "momentum", "run_id": "7"},
    )


def test_utf8_text_is_printable() -> None:
    assert read_tags(CIMultiDict({"X-Purpose": "résumé €"})).purpose == "résumé €"


def test_empty_value_is_absent() -> None:
    assert read_tags(CIMultiDict({"X-Purpose": "  "})).purpose is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Purpose", "a" * 129),
        ("X-Ticker", "AA\x07PL"),
        ("X-Cycle-Id", "line\tbreak"),
        ("X-Tag-Note", "bytes \udcff"),
        ("X-Tag-" + "n" * 65, "v"),
        ("X-Tag-bad.name", "v"),
    ],
)
def test_a_bad_tag_header_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(BadTagHeader) as caught:
        read_tags(CIMultiDict({name: value}))

    assert caught.value.param == name
    assert caught.value.status == 400


def test_a_repeated_tag_header_is_refused() -> None:
    headers = CIMultiDict([("X-Purpose", "a"), ("x-purpose", "b")])

    with pytest.raises(BadTagHeader):
        read_tags(headers)


def test_too_many_free_tags_are_refused() -> None:
    headers = CIMultiDict({f"X-Tag-t{i}": "v" for i in range(MAX_TAGS + 1)})

    with pytest.raises(BadTagHeader) as caught:
        read_tags(headers)

    assert caught.value.param == f"X-Tag-t{MAX_TAGS}"


def test_client_request_id_is_kept_and_a_missing_one_generated() -> None:
    given = read_request_id(CIMultiDict({"x-request-id": "trade-1"}))
    generated = read_request_id(CIMultiDict())

    assert given == "trade-1"
    assert generated.startswith("tg-")
    assert generated != read_request_id(CIMultiDict())


@pytest.mark.parametrize("value", ["a" * 129, "two words", "é"])
def test_a_bad_request_id_is_refused(value: str) -> None:
    with pytest.raises(BadTagHeader) as caught:
        read_request_id(CIMultiDict({"X-Request-Id": value}))

    assert caught.value.param == "X-Request-Id"


@given(st.text(max_size=200), st.sampled_from(["X-Purpose", "X-Tag-Note", "X-Other"]))
def test_any_header_value_is_read_or_refused_cleanly(value: str, name: str) -> None:
    try:
        tags = read_tags(CIMultiDict({name: value}))
    except BadTagHeader as exc:
        refused_param = exc.param
        assert refused_param == name
        return

    stored = [tags.purpose, *tags.tags.values()]
    assert all(v is None or (v.isprintable() and len(v) <= 128) for v in stored)
