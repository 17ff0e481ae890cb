"""
Token usage as the upstreams report it, read into one shape.

Three dialects of the ``usage`` object are understood:

- chat and legacy completions, embeddings: ``prompt_tokens``,
  ``completion_tokens``, ``total_tokens``, ``prompt_tokens_details.cached_tokens``,
  ``completion_tokens_details.reasoning_tokens``, and the ``audio_tokens`` of
  both details objects (audio models price them apart);
- DeepSeek, the same plus ``prompt_cache_hit_tokens`` (which wins over
  ``prompt_tokens_details.cached_tokens``) and ``prompt_cache_miss_tokens``;
- the Responses API: ``input_tokens``, ``output_tokens``,
  ``input_tokens_details.cached_tokens``, ``output_tokens_details.reasoning_tokens``.

A Responses answer also lists the built-in tools the upstream ran for the call
among its ``output`` items (``web_search_call``, ``file_search_call``); each
is billed per call besides the tokens, so they are counted into the usage.

Bodies come from outside, so nothing here trusts them. A count is a whole
number from 0 to ``MAX_TOKENS`` (``12.0`` included); an input or output
count that is anything else (a string, negative, absurdly large), or a total
without its parts, makes the usage unreadable, so the call is estimated and
says so rather than being priced as nothing. A total or a detail that is not
a count is ignored, and bad JSON yields no usage instead of an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

# A count above this is garbage, not a call (no model reads a billion tokens
# at once). Two of them still sum to less than 2**31, so every count, and the
# total, fits the rows' integer columns; every cost fits numeric(20,12).
MAX_TOKENS = 10**9

# Longest model name taken from a body; anything longer is not a model name.
MAX_MODEL_CHARS = 256

# A service tier is a short word ("default", "flex", "priority", "scale").
_SERVICE_TIER = re.compile(r"[a-z0-9_-]{1,32}")

# Stands for a details object that is absent or not an object; never written.
_NO_DETAILS: dict[str, Any] = {}

# Rule of thumb for text in the common tokenizers (cl100k, o200k, DeepSeek's):
# about four bytes of UTF-8 per token for English and code.
BYTES_PER_TOKEN = 4


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    # Part of input_tokens, priced at the cached rate.
    cached_input_tokens: int = 0
    output_tokens: int = 0
    # Part of output_tokens; never added twice.
    reasoning_tokens: int = 0
    total_tokens: int = 0
    # Parts of input_tokens and output_tokens that were audio.
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    # Built-in tool calls the upstream ran, each billed per call.
    web_search_calls: int = 0
    file_search_calls: int = 0
    # The upstream reported usage, but not in counts that can be priced; the
    # other fields are then 0 and mean nothing.
    unreadable: bool = False


def usage_from_object(obj: object) -> Usage | None:
    """
    Return the usage a ``usage`` JSON object of any dialect reports, or None.

    None means the object reports no count at all (or is not an object).
    """
    # What orjson gives for a JSON object; an exact check is cheaper than an ABC's.
    if not isinstance(obj, dict):
        return None
    input_tokens = _count(obj.get("prompt_tokens"))
    if input_tokens is None:
        input_tokens = _count(obj.get("input_tokens"))
    output_tokens = _count(obj.get("completion_tokens"))
    if output_tokens is None:
        output_tokens = _count(obj.get("output_tokens"))
    total_tokens = _count(obj.get("total_tokens"))

    # The chat dialect's details, each read once for its two or three counts.
    prompt = obj.get("prompt_tokens_details")
    if not isinstance(prompt, dict):
        prompt = _NO_DETAILS
    completion = obj.get("completion_tokens_details")
    if not isinstance(completion, dict):
        completion = _NO_DETAILS

    cache_hit = _count(obj.get("prompt_cache_hit_tokens"))
    cached_tokens = cache_hit
    if cached_tokens is None:
        cached_tokens = _count(prompt.get("cached_tokens"))
    if cached_tokens is None:
        cached_tokens = _detail(obj, "input_tokens_details", "cached_tokens")
    reasoning_tokens = _count(completion.get("reasoning_tokens"))
    if reasoning_tokens is None:
        reasoning_tokens = _detail(obj, "output_tokens_details", "reasoning_tokens")
    input_audio = _count(prompt.get("audio_tokens"))
    output_audio = _count(completion.get("audio_tokens"))

    if input_tokens is None and cache_hit is not None:
        cache_miss = _count(obj.get("prompt_cache_miss_tokens"))
        if cache_miss is not None:
            input_tokens = cache_hit + cache_miss
    if input_tokens is None or output_tokens is None:
        # A part sent as anything but a count or null cannot be priced, nor
        # can a total without its parts.
        unreadable = (
            input_tokens is None and _sent(obj, "prompt_tokens", "input_tokens")
        ) or (
            output_tokens is None and _sent(obj, "completion_tokens", "output_tokens")
        )
        if input_tokens is None and output_tokens is None and not unreadable:
            if obj.get("total_tokens") is None:
                return None
            unreadable = True
        if unreadable:
            return Usage(unreadable=True)

    input_tokens = input_tokens or 0
    output_tokens = output_tokens or 0
    if total_tokens is None:
        total_tokens = input_tokens + output_tokens

    return Usage(
        input_tokens=input_tokens,
        # A part can never exceed its whole; a report that says so is cut down.
        cached_input_tokens=min(cached_tokens or 0, input_tokens),
        output_tokens=output_tokens,
        reasoning_tokens=min(reasoning_tokens or 0, output_tokens),
        total_tokens=total_tokens,
        # Most calls have no audio: no min() for them.
        input_audio_tokens=min(input_audio, input_tokens) if input_audio else 0,
        output_audio_tokens=min(output_audio, output_tokens) if output_audio else 0,
    )


def usage_from_body(body: bytes) -> tuple[Usage | None, str | None, str | None]:
    """
    Return the usage, model and service tier a whole, non-streamed JSON body reports.

    Any may be None: an error body has none of them, an embeddings body from
    some upstreams has usage but no model, and only OpenAI names a tier.
    """
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(obj, dict):
        return None, None, None

    usage = usage_from_object(obj.get("usage"))
    if usage is not None:
        count_tool_calls(usage, obj.get("output"))

    return (
        usage,
        model_name(obj.get("model")),
        service_tier_name(obj.get("service_tier")),
    )


def count_tool_calls(usage: Usage, output: object) -> None:
    """
    Count into *usage* the built-in tool calls that a Responses answer's
    ``output`` list reports; anything else (a chat answer has no
    ``output``) counts nothing.
    """
    if type(output) is not list:
        return
    for item in output:
        if type(item) is dict:
            kind = item.get("type")
            if kind == "web_search_call":
                usage.web_search_calls += 1
            elif kind == "file_search_call":
                usage.file_search_calls += 1


def model_name(value: Any) -> str | None:
    """Return *value* if it can be a model name, else None."""
    if isinstance(value, str) and 0 < len(value) <= MAX_MODEL_CHARS:
        return value
    return None


def service_tier_name(value: Any) -> str | None:
    """Return *value* if it can be the name of a service tier, else None."""
    if isinstance(value, str) and _SERVICE_TIER.fullmatch(value):
        return value
    return None


def estimate_tokens(n_bytes: int) -> int:
    """
    Return an estimate of the tokens in *n_bytes* bytes of text, rounded up.

    Used when a call ends before its usage arrives: the request body gives the
    input, and a stream cut short gives its output as about one token per
    content chunk (``StreamScanner.chunks_seen``), since the upstreams send one
    token per chunk.
    """
    if n_bytes <= 0:
        return 0
    return -(-n_bytes // BYTES_PER_TOKEN)


def _count(value: Any) -> int | None:
    # Exact type checks: bool is an int, and is not a count.
    if type(value) is int:
        return value if 0 <= value <= MAX_TOKENS else None
    # JSON has numbers, not integers: 12.0 is twelve.
    if type(value) is float and value.is_integer() and 0 <= value <= MAX_TOKENS:
        return int(value)
    return None


def _sent(obj: dict[str, Any], *keys: str) -> bool:
    """Whether any of *keys* holds something other than null."""
    return any(obj.get(key) is not None for key in keys)


def _detail(obj: dict[str, Any], details: str, key: str) -> int | None:
    inner = obj.get(details)
    if isinstance(inner, dict):
        return _count(inner.get(key))
    return None
