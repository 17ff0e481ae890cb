from __future__ import annotations

import itertools
import logging

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import sse
from gateway.sse import MAX_EVENT_BYTES, StreamScanner
from gateway.usage import Usage, usage_from_body
from tests.fixtures import recorded

STREAMS = {
    "openai_chat_stream_usage_1.sse": (Usage(12, 0, 5, 0, 17), "gpt-4-0613", 8),
    "openai_chat_stream_usage_2.sse": (
        Usage(53, 0, 15, 0, 68),
        "gpt-4o-mini-2024-07-18",
        8,
    ),
    "openai_chat_stream_usage_3.sse": (
        Usage(78, 0, 9, 0, 87),
        "gpt-4o-mini-2024-07-18",
        11,
    ),
    "openai_chat_stream_nousage_1.sse": (None, "gpt-4-0613", 7),
    "deepseek_chat_stream_1.sse": (Usage(12, 0, 28, 0, 40), "deepseek-chat", 30),
    "deepseek_reasoner_stream_1.sse": (
        Usage(6, 0, 212, 198, 218),
        "deepseek-reasoner",
        211,
    ),
    "openai_responses_stream_1.sse": (
        Usage(11, 0, 5, 0, 16),
        "gpt-5.5-2026-04-23",
        9,
    ),
}
# The tier the event with the usage names; the 2023 captures and DeepSeek
# name none. The Responses stream names "auto" (asked for) until its end.
TIERS = {
    "openai_chat_stream_usage_2.sse": "default",
    "openai_chat_stream_usage_3.sse": "default",
    "openai_responses_stream_1.sse": "default",
}
# The streams whose usage rides on an extra chunk with "choices": [].
USAGE_CHUNK_STREAMS = [
    "openai_chat_stream_usage_1.sse",
    "openai_chat_stream_usage_2.sse",
    "openai_chat_stream_usage_3.sse",
]


def scanner_for(name: str, *, hide: bool = False) -> StreamScanner:
    return StreamScanner(responses_api="responses" in name, hide_usage_chunk=hide)


def without_usage_chunk(body: bytes) -> bytes:
    """
    The stream as the client would have had it, cut by hand at LF LF: no
    usage-only chunk, and no ``"usage":null`` on the others.
    """
    events = body.split(b"\n\n")
    kept = [e for e in events if b'"choices":[],"usage":{' not in e]
    assert len(kept) == len(events) - 1
    return b"\n\n".join(e.replace(b',"usage":null', b"") for e in kept)


def relay(scanner: StreamScanner, reads: list[bytes]) -> bytes:
    return b"".join(scanner.feed(read) for read in reads) + scanner.close()


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_recorded_stream_gives_its_usage_model_and_end(name: str) -> None:
    usage, model, chunks = STREAMS[name]
    body = recorded(name)
    scanner = scanner_for(name)

    relayed = scanner.feed(body)

    assert relayed is body
    assert scanner.close() == b""
    assert scanner.usage == usage
    assert scanner.model == model
    assert scanner.service_tier == TIERS.get(name)
    assert scanner.finished
    assert scanner.chunks_seen == chunks


@pytest.mark.parametrize("name", USAGE_CHUNK_STREAMS)
def test_hidden_usage_chunk_is_removed_whole(name: str) -> None:
    body = recorded(name)
    scanner = scanner_for(name, hide=True)

    relayed = relay(scanner, [body])

    assert relayed == without_usage_chunk(body)
    assert scanner.usage == STREAMS[name][0]
    assert scanner.finished


@pytest.mark.parametrize(
    "name",
    [
        "deepseek_chat_stream_1.sse",
        "deepseek_reasoner_stream_1.sse",
        "openai_chat_stream_nousage_1.sse",
        "openai_responses_stream_1.sse",
    ],
)
def test_usage_on_a_chunk_with_choices_is_never_removed(name: str) -> None:
    """DeepSeek's usage rides on the finish_reason chunk: read, not removed."""
    body = recorded(name)
    scanner = scanner_for(name, hide=True)

    relayed = relay(scanner, [body])

    assert relayed == hidden(name, body)
    assert b'"usage":{' in relayed or b'"usage"' not in body
    assert scanner.usage == STREAMS[name][0]


def hidden(name: str, body: bytes) -> bytes:
    """What a client that never asked for usage receives of *body*."""
    if name in USAGE_CHUNK_STREAMS:
        return without_usage_chunk(body)
    if "responses" in name:
        return body
    return body.replace(b',"usage":null', b"")


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(STREAMS)),
    hide=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=80_000), max_size=40),
)
def test_any_split_into_reads_gives_the_same_usage_and_bytes(
    name: str, hide: bool, cuts: list[int]
) -> None:
    body = recorded(name)
    expected = hidden(name, body) if hide else body
    scanner = scanner_for(name, hide=hide)

    relayed = relay(scanner, split_at(body, cuts))

    assert relayed == expected
    assert scanner.usage == STREAMS[name][0]
    assert scanner.model == STREAMS[name][1]
    assert scanner.service_tier == TIERS.get(name)
    assert scanner.chunks_seen == STREAMS[name][2]
    assert scanner.finished


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from([*USAGE_CHUNK_STREAMS, "openai_responses_stream_1.sse"]),
    line_end=st.sampled_from([b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=6_000), max_size=30),
)
def test_crlf_and_cr_streams_split_anywhere(
    name: str, line_end: bytes, cuts: list[int]
) -> None:
    body = recorded(name).replace(b"\n", line_end)
    expected = body
    if "responses" not in name:
        blank = line_end * 2
        expected = blank.join(
            e.replace(b',"usage":null', b"")
            for e in body.split(blank)
            if b'"choices":[],"usage":{' not in e
        )
    scanner = scanner_for(name, hide=True)

    relayed = relay(scanner, split_at(body, cuts))

    assert relayed == expected
    assert scanner.usage == STREAMS[name][0]
    assert scanner.finished


def test_comments_event_lines_and_multiline_data_are_understood() -> None:
    body = (
        b": keep-alive\n\n"
        b'event: message\ndata: {"model": "m-1", "choices": [{"delta": {}}],\n'
        b'data:  "usage": null}\n\n'
        b": ping\n"
        b'data: {"choices": [],\n'
        b'data: "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
        b"data:[DONE]\n\n"
    )
    scanner = StreamScanner(hide_usage_chunk=True)

    relayed = relay(scanner, [body])

    assert scanner.usage == Usage(3, 0, 2, 0, 5)
    assert scanner.model == "m-1"
    assert scanner.finished
    assert scanner.chunks_seen == 2
    assert b"prompt_tokens" not in relayed
    assert relayed.endswith(b"data:[DONE]\n\n")


def test_done_inside_content_does_not_end_the_stream() -> None:
    scanner = StreamScanner()

    scanner.feed(b'data: {"choices":[{"delta":{"content":"[DONE]"}}]}\n\n')

    assert not scanner.finished
    assert scanner.chunks_seen == 1


def test_done_without_a_final_blank_line_is_seen_at_close() -> None:
    scanner = StreamScanner(hide_usage_chunk=True)

    relayed = scanner.feed(b"data: [DONE]")

    assert relayed == b""
    assert scanner.close() == b"data: [DONE]"
    assert scanner.finished


def test_only_the_incomplete_trailing_event_is_held_back() -> None:
    scanner = StreamScanner(hide_usage_chunk=True)

    first = scanner.feed(b'data: {"a":1}\n\ndata: {"b"')
    second = scanner.feed(b":2}\n")
    third = scanner.feed(b"\n")

    assert first == b'data: {"a":1}\n\n'
    assert second == b""
    assert third == b'data: {"b":2}\n\n'


def test_a_trailing_cr_waits_for_a_possible_lf() -> None:
    chunk = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\r\n\r'
    scanner = StreamScanner(hide_usage_chunk=True)

    first = scanner.feed(chunk)
    second = scanner.feed(b"\ndata: [DONE]\r\n\r\n")

    assert first == b""
    assert second == b"data: [DONE]\r\n\r\n"
    assert scanner.usage == Usage(1, 0, 0, 0, 1)


def test_a_broken_usage_event_is_relayed_and_ignored() -> None:
    body = b'data: {"choices":[],"usage":{"prompt_tokens":1\n\ndata: [DONE]\n\n'
    scanner = StreamScanner(hide_usage_chunk=True)

    relayed = relay(scanner, [body])

    assert relayed == body
    assert scanner.usage is None
    assert scanner.finished


def test_later_usage_replaces_earlier_and_null_never_clears() -> None:
    scanner = StreamScanner()

    scanner.feed(b'data: {"usage":{"prompt_tokens":1}}\n\n')
    scanner.feed(b'data: {"usage":{"prompt_tokens":2}}\n\n')
    scanner.feed(b'data: {"usage":null}\n\n')

    assert scanner.usage == Usage(2, 0, 0, 0, 2)


@pytest.mark.parametrize("kind", ["response.incomplete", "response.failed"])
def test_responses_stream_ends_on_incomplete_and_failed(kind: str) -> None:
    event = {
        "type": kind,
        "response": {
            "model": "gpt-x",
            "usage": {"input_tokens": 4, "output_tokens": 1},
        },
    }
    scanner = StreamScanner(responses_api=True)

    scanner.feed(
        b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
    )

    assert scanner.finished
    assert scanner.usage == Usage(4, 0, 1, 0, 5)
    assert scanner.model == "gpt-x"


def test_responses_usage_outside_a_final_event_is_not_taken() -> None:
    event = {"type": "response.in_progress", "response": {"usage": {"input_tokens": 4}}}
    scanner = StreamScanner(responses_api=True)

    scanner.feed(b"data: " + orjson.dumps(event) + b"\n\n")

    assert scanner.usage is None
    assert not scanner.finished


def test_events_without_usage_are_never_parsed(monkeypatch) -> None:
    calls = []
    real_loads = orjson.loads

    def counting_loads(data):
        calls.append(data)
        return real_loads(data)

    monkeypatch.setattr(sse.orjson, "loads", counting_loads)
    body = recorded("deepseek_reasoner_stream_1.sse")

    StreamScanner().feed(body)

    assert len(calls) == 1


def test_an_endless_event_is_relayed_unscanned_with_bounded_memory() -> None:
    scanner = StreamScanner(hide_usage_chunk=True)
    piece = b"data: " + b"x" * (64 * 1024 - 6)
    relayed = []

    for _ in range(40):
        relayed.append(scanner.feed(piece))
    after = scanner.feed(
        b'\n\ndata: {"choices":[],"usage":{"prompt_tokens":7}}\n\ndata: [DONE]\n\n'
    )

    held = 40 * len(piece) - sum(map(len, relayed))
    assert held == 0
    assert len(scanner._tail) <= 2
    assert after == b"\n\ndata: [DONE]\n\n"
    assert scanner.usage == Usage(7, 0, 0, 0, 7)


def test_a_usage_event_past_the_cap_is_not_scanned() -> None:
    padding = b" " * (MAX_EVENT_BYTES + 1000)
    event = b'data: {"choices":[],' + padding + b'"usage":{"prompt_tokens":7}}\n\n'
    scanner = StreamScanner(hide_usage_chunk=True)

    relayed = relay(scanner, [event[:-100], event[-100:]])

    assert relayed == event
    assert scanner.usage is None


def with_image_in_final_event(body: bytes, image_bytes: int) -> bytes:
    """The recorded Responses stream, its completed event carrying an image."""
    head, marker, rest = body.rpartition(b'"output":[')
    assert b"response.completed" in head[head.rfind(b"\n\n") :]
    item = orjson.dumps(
        {
            "id": "ig_1",
            "type": "image_generation_call",
            "status": "completed",
            "result": "QUJD" * (image_bytes // 4),
        }
    )
    return head + marker + item + b"," + rest


@pytest.mark.parametrize("read_size", [None, 64 * 1024, 1_000_003])
def test_a_final_response_event_past_the_cap_still_gives_its_usage(
    read_size: int | None,
) -> None:
    """
    The completed event repeats the whole output, a generated image's base64
    included: however large, its usage and tier are read, from a window
    at its end, and it is relayed as it came.
    """
    name = "openai_responses_stream_1.sse"
    body = with_image_in_final_event(recorded(name), 3 * MAX_EVENT_BYTES)
    reads = (
        [body]
        if read_size is None
        else split_at(body, list(range(0, len(body), read_size)))
    )
    scanner = scanner_for(name)
    held = []

    relayed = b""
    for read in reads:
        relayed += scanner.feed(read)
        held.append(len(scanner._tail))
    relayed += scanner.close()

    assert relayed == body
    assert (scanner.usage, scanner.model, scanner.chunks_seen) == STREAMS[name]
    assert scanner.service_tier == TIERS[name]
    assert scanner.finished
    assert max(held) <= MAX_EVENT_BYTES + (read_size or len(body))


def test_a_final_response_event_past_the_cap_without_an_end_is_read_at_close() -> None:
    name = "openai_responses_stream_1.sse"
    body = with_image_in_final_event(recorded(name), 2 * MAX_EVENT_BYTES)
    cut = body.rfind(b"response.completed")
    body = body[: body.find(b"\n\n", cut)]
    scanner = scanner_for(name)

    relayed = relay(scanner, split_at(body, list(range(0, len(body), 300_000))))

    assert relayed == body
    assert scanner.usage == STREAMS[name][0]
    assert scanner.finished


def test_a_large_event_that_is_not_final_gives_no_usage() -> None:
    """Only the final response.* events carry the call's usage."""
    event = {
        "type": "response.output_item.done",
        "item": {"result": "QUJD" * MAX_EVENT_BYTES},
        "usage": {"input_tokens": 4, "output_tokens": 1},
    }
    scanner = StreamScanner(responses_api=True)
    body = b"data: " + orjson.dumps(event) + b"\n\n"

    relayed = relay(scanner, split_at(body, list(range(0, len(body), 65536))))

    assert relayed == body
    assert scanner.usage is None
    assert not scanner.finished


def test_feed_after_close_passes_through() -> None:
    scanner = StreamScanner(hide_usage_chunk=True)
    scanner.close()
    data = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n'

    assert scanner.feed(data) is data
    assert scanner.close() == b""


def test_a_scanner_bug_never_reaches_the_relay(monkeypatch, caplog) -> None:
    def broken(*args):
        raise RuntimeError("bug")

    scanner = StreamScanner(hide_usage_chunk=True)
    held = scanner.feed(b"data: {")
    monkeypatch.setattr(StreamScanner, "_scan", broken)

    with caplog.at_level(logging.ERROR, logger="gateway.sse"):
        relayed = scanner.feed(b"}\n\ndata: {}\n\n")

    assert held + relayed + scanner.close() == b"data: {}\n\ndata: {}\n\n"
    assert scanner.feed(b"more") == b"more"
    assert "stream scanner failed" in caplog.text


def test_empty_reads_are_returned_as_they_are() -> None:
    scanner = StreamScanner(hide_usage_chunk=True)

    assert scanner.feed(b"") == b""


fragments = st.sampled_from(
    [
        b"data: ",
        b"data:",
        b"event: x",
        b": c",
        b"\n",
        b"\r",
        b"\r\n",
        b"[DONE]",
        b'"usage"',
        b'"usage":{',
        b'"usage": {"prompt_tokens": 5}',
        b'"choices":[]',
        b'"model":"',
        b'"model": "m"',
        b"{",
        b"}",
        b",",
        b'"response.completed"',
        b'"type":"response.failed"',
        b"\\",
        b"\xff",
    ]
)
garbage = st.lists(fragments | st.binary(max_size=6), max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    body=garbage | st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=10),
    hide=st.booleans(),
    responses_api=st.booleans(),
)
def test_arbitrary_bytes_never_raise_and_lose_nothing(
    body: bytes, cuts: list[int], hide: bool, responses_api: bool
) -> None:
    scanner = StreamScanner(responses_api=responses_api, hide_usage_chunk=hide)
    reads = split_at(body, cuts)

    relayed = [scanner.feed(read) for read in reads]
    relayed.append(scanner.close())

    if not scanner.hide_usage_chunk:
        assert all(out is read for out, read in zip(relayed, reads, strict=False))
    joined = b"".join(relayed)
    if scanner.usage is None:
        # Hiding cuts the trace include_usage leaves; nothing else changes.
        expected = (
            body.replace(b',"usage":null', b"") if scanner.hide_usage_chunk else body
        )
        assert joined == expected
    assert len(joined) <= len(body)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(USAGE_CHUNK_STREAMS),
    where=st.lists(st.integers(min_value=0, max_value=12), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=9_000), max_size=20),
)
def test_keep_alives_between_events_pass_through(
    name: str, where: list[int], cuts: list[int]
) -> None:
    events = recorded(name).split(b"\n\n")
    for at in sorted(where, reverse=True):
        events.insert(min(at, len(events) - 1), b": keep-alive")
    body = b"\n\n".join(events)
    scanner = scanner_for(name, hide=True)

    relayed = relay(scanner, split_at(body, cuts))

    assert relayed == without_usage_chunk(body)
    assert relayed.count(b": keep-alive\n\n") == len(where)
    assert scanner.usage == STREAMS[name][0]
    assert scanner.chunks_seen == STREAMS[name][2]


@given(cuts=st.lists(st.integers(min_value=0, max_value=9_000), max_size=20))
def test_without_hiding_every_read_is_returned_as_it_came(cuts: list[int]) -> None:
    body = recorded("openai_chat_stream_usage_2.sse")
    reads = split_at(body, cuts)
    scanner = StreamScanner()

    relayed = [scanner.feed(read) for read in reads]

    assert all(out is read for out, read in zip(relayed, reads, strict=True))
    assert scanner.usage == STREAMS["openai_chat_stream_usage_2.sse"][0]


class FullPathScanner(StreamScanner):
    """The scanner with its shortcuts off: every event is scanned by itself."""

    __slots__ = ()

    def _one_event(self, data: bytes) -> None:
        return None

    def _skip_plain_events(self, buf, pos: int, start: int) -> int:
        return pos

    def _whole_events(self, data: bytes) -> None:
        return None


def relay_each(scanner: StreamScanner, reads: list[bytes]) -> list[bytes]:
    return [scanner.feed(read) for read in reads] + [scanner.close()]


def assert_same_reading(reads: list[bytes], *, responses_api: bool, hide: bool):
    fast = StreamScanner(responses_api=responses_api, hide_usage_chunk=hide)
    full = FullPathScanner(responses_api=responses_api, hide_usage_chunk=hide)

    fast_out = relay_each(fast, reads)
    full_out = relay_each(full, reads)

    assert fast_out == full_out
    if not fast.hide_usage_chunk:
        assert all(out is read for out, read in zip(fast_out, reads, strict=False))
    assert fast.usage == full.usage
    assert fast.model == full.model
    assert fast.finished == full.finished
    assert fast.chunks_seen == full.chunks_seen


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(STREAMS)),
    hide=st.booleans(),
    one_read_per_event=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=80_000), max_size=40),
)
def test_the_plain_event_shortcut_reads_recorded_streams_as_the_full_path_does(
    name: str, hide: bool, one_read_per_event: bool, cuts: list[int]
) -> None:
    body = recorded(name)
    if one_read_per_event:
        reads = [event + b"\n\n" for event in body.split(b"\n\n") if event]
    else:
        reads = split_at(body, cuts)

    assert_same_reading(reads, responses_api="responses" in name, hide=hide)


# Events that are plain, and ones near enough to plain to trip a shortcut.
EVENT_LINES = [
    b'data: {"model":"m-1","choices":[{"delta":{"content":"a"}}]}',
    b'data: {"model":"m-2","choices":[{"delta":{}}],"usage":null}',
    b'data: {"choices":[{"delta":{"content":"[DONE]"}}],"usage":null}',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
    b'data: {"choices":[{"delta":{}}],"usage": {"prompt_tokens":2}}',
    b'data: {"choices":[],"usage" :\t{"prompt_tokens":4}}',
    b'data: {"choices":[],"usage"usage":{"prompt_tokens":5}}',
    b'data: {"usage":nullx,"model":null}',
    b'data: {"model":"esc\\"aped"}',
    b'data:{"choices":[{"delta":{"content":"b"}}]}',
    b"data: [DONE]",
    b"data:[DONE]",
    b"data: [DONE] ",
    b"data: x\ndata: [DONE]",
    b'data: {"choices":\ndata: [{"delta":{}}],"usage":null}',
    b"event: response.output_text.delta",
    b'event: x\ndata: {"type":"response.output_text.delta","delta":"c"}',
    b'event: x\ndata: {"type":"response.completed","response":'
    b'{"model":"r-1","usage":{"input_tokens":2,"output_tokens":1}}}',
    b'data: {"type":"response.failed","response":{"usage":{"input_tokens":1}}}',
    b": keep-alive",
    b"",
    b"\n",
    b"datum: 1",
    b"id: 7\ndata: {}",
    b'data: {"choices":[{"delta":{"content":"[DONE]"}}]}\ndata: [DONE]',
    b'data: {"choices":[],"usage":{"prompt_tokens":6}}\ndata: [DONE]',
    b'data: {"model":"m-3","choices":[],"usage":{"prompt_tokens":7}}',
    b'data: {"usage":{"prompt_tokens":8},"usage":{"prompt_tokens":9}}',
]


def streams_of(lines: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(lines), max_size=30).map(
        lambda events: b"".join(event + b"\n\n" for event in events)
    )


synthetic_streams = streams_of(EVENT_LINES)
# Every event opens with its data line, as chat streams do: whole reads of
# these are what the whole-read shortcut takes.
data_streams = streams_of([line for line in EVENT_LINES if line.startswith(b"data")])


@settings(max_examples=400, deadline=None)
@given(
    body=synthetic_streams | data_streams | garbage,
    cuts=st.lists(st.integers(min_value=0, max_value=3_000), max_size=12),
    hide=st.booleans(),
    responses_api=st.booleans(),
    model_first=st.booleans(),
)
def test_the_plain_event_shortcut_reads_any_stream_as_the_full_path_does(
    body: bytes, cuts: list[int], hide: bool, responses_api: bool, model_first: bool
) -> None:
    # The shortcut starts once the model is known: name it in a read of its own.
    first = [b'data: {"model":"m-0"}\n\n'] if model_first else []

    reads = first + split_at(body, cuts)

    assert_same_reading(reads, responses_api=responses_api, hide=hide)


def test_plain_events_are_counted_without_being_scanned(monkeypatch) -> None:
    scanned = []
    real_scan = StreamScanner._scan

    def counting_scan(self, buf, start, end):
        scanned.append(bytes(buf[start:end]))
        return real_scan(self, buf, start, end)

    monkeypatch.setattr(StreamScanner, "_scan", counting_scan)
    body = recorded("openai_chat_stream_usage_3.sse")
    scanner = StreamScanner(hide_usage_chunk=True)

    relay(scanner, [event + b"\n\n" for event in body.split(b"\n\n") if event])

    # The first chunk (it names the model), the usage chunk and [DONE].
    assert len(scanned) == 3
    assert scanner.chunks_seen == STREAMS["openai_chat_stream_usage_3.sse"][2]


@pytest.fixture
def general_path_reads(monkeypatch) -> list[bytes]:
    """The reads that reach the scanner's general path, ``_feed``."""
    fed = []
    real_feed = StreamScanner._feed

    def counting_feed(self, data):
        fed.append(data)
        return real_feed(self, data)

    monkeypatch.setattr(StreamScanner, "_feed", counting_feed)
    return fed


def test_a_read_of_one_whole_event_skips_the_general_path(general_path_reads) -> None:
    name = "openai_chat_stream_usage_3.sse"
    body = recorded(name)
    scanner = StreamScanner(hide_usage_chunk=True)

    relayed = relay(
        scanner, [event + b"\n\n" for event in body.split(b"\n\n") if event]
    )

    assert general_path_reads == []
    assert b'"usage":{' not in relayed
    assert (scanner.usage, scanner.model, scanner.chunks_seen) == STREAMS[name]
    assert scanner.finished


@pytest.mark.parametrize("hide", [False, True])
def test_a_whole_stream_in_one_read_skips_the_general_path(
    general_path_reads, hide
) -> None:
    name = "openai_chat_stream_usage_3.sse"
    body = recorded(name)
    scanner = StreamScanner(hide_usage_chunk=hide)

    relayed = relay(scanner, [body])

    assert general_path_reads == []
    assert relayed == (hidden(name, body) if hide else body)
    assert (scanner.usage, scanner.model, scanner.chunks_seen) == STREAMS[name]
    assert scanner.finished


@pytest.mark.parametrize(
    "name", ["openai_chat_stream_usage_2.sse", "openai_responses_stream_1.sse"]
)
def test_a_stream_served_at_another_tier_names_it(name: str) -> None:
    body = recorded(name).replace(b'"service_tier":"default"', b'"service_tier":"flex"')
    scanner = scanner_for(name, hide=True)

    relay(scanner, [body])

    assert scanner.service_tier == "flex"
    assert scanner.usage == STREAMS[name][0]


def test_a_tier_on_chunks_without_usage_is_not_taken() -> None:
    """Only the event that reports usage is parsed; a plain chunk's tier is not read."""
    body = recorded("openai_chat_stream_usage_2.sse")
    usage_at = body.index(b'"choices":[],"usage":{')
    cut = body.rindex(b"data: ", 0, usage_at)
    scanner = scanner_for("openai_chat_stream_usage_2.sse")

    relay(scanner, [body[:cut]])

    assert scanner.usage is None
    assert scanner.service_tier is None


# -- a JSON answer too large to hold whole ---------------------------------


def large_answer(kind: str, padding: int, tier: str | None) -> bytes:
    """A chat or embeddings answer made *padding* bytes larger by its content."""
    usage = {"prompt_tokens": 1200, "completion_tokens": 34, "total_tokens": 1234}
    if kind == "chat":
        content = "usage " * (padding // 6)
        answer: dict[str, object] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"content": content}}],
            "usage": {**usage, "prompt_tokens_details": {"cached_tokens": 1024}},
        }
    else:
        vector = [0.015625] * (padding // 10)
        answer = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 1200, "total_tokens": 1200},
        }
    if tier is not None:
        answer["service_tier"] = tier
    return orjson.dumps(answer, option=orjson.OPT_INDENT_2)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["chat", "embeddings"]),
    padding=st.sampled_from([0, 5_000, 300_000, 1_500_000]),
    tier=st.sampled_from([None, "default", "flex"]),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=6),
)
def test_a_large_answer_read_in_any_pieces_gives_what_the_whole_gives(
    kind: str, padding: int, tier: str | None, cuts: list[float]
) -> None:
    body = large_answer(kind, padding, tier)
    points = sorted({0, len(body), *(int(c * len(body)) for c in cuts)})
    watcher = sse.BodyTail()

    relayed = b"".join(watcher.feed(body[a:b]) for a, b in itertools.pairwise(points))

    assert relayed == body
    assert watcher.size == len(body)
    assert watcher.read() == usage_from_body(body)
    assert watcher.read()[0] is not None


def test_a_large_answer_without_usage_gives_none() -> None:
    watcher = sse.BodyTail()
    watcher.feed(b'{"model": "m", "data": "' + b"x" * 600_000 + b'"}')

    assert watcher.read() == (None, "m", None)


# -- built-in tool calls of a Responses stream ------------------------------


def with_searches_in_final_event(body: bytes, web: int, files: int) -> bytes:
    """The recorded Responses stream, its completed event listing searches."""
    head, marker, rest = body.rpartition(b'"output":[')
    assert b"response.completed" in head[head.rfind(b"\n\n") :]
    items = [
        {"id": f"ws_{i}", "type": "web_search_call", "status": "completed"}
        for i in range(web)
    ] + [
        {"id": f"fs_{i}", "type": "file_search_call", "status": "completed"}
        for i in range(files)
    ]
    # Each search is also announced by an event of its own while it runs.
    announced = b"".join(
        b"event: response.output_item.done\ndata: "
        + orjson.dumps({"type": "response.output_item.done", "item": item})
        + b"\n\n"
        for item in items
    )
    start = head.rfind(b"\n\n") + 2
    listed = b"".join(orjson.dumps(item) + b"," for item in items)
    return head[:start] + announced + head[start:] + marker + listed + rest


@settings(max_examples=60, deadline=None)
@given(
    web=st.integers(min_value=0, max_value=4),
    files=st.integers(min_value=0, max_value=3),
    cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=8),
)
def test_a_responses_stream_counts_the_searches_its_end_lists(
    web: int, files: int, cuts: list[int]
) -> None:
    name = "openai_responses_stream_1.sse"
    body = with_searches_in_final_event(recorded(name), web, files)
    scanner = scanner_for(name)

    relayed = relay(scanner, split_at(body, cuts))

    assert relayed == body
    assert scanner.usage == Usage(
        11, 0, 5, 0, 16, web_search_calls=web, file_search_calls=files
    )
