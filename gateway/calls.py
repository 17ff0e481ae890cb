"""
A proxied call as data: what the client asked for, and what became of it.

The proxy fills a ``Call`` in as the call goes (status, usage, timings, how it
ended) and turns it into exactly one ``UsageRecord`` at the end. The request
side is read here too: the gateway key, the bounded body, and the few options
of an accounted body that the gateway must see (``model``, ``stream``,
``stream_options``).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

import orjson
from aiohttp import web

from gateway.errors import BodyTooLarge, Unauthorized
from gateway.pricing import PriceBook
from gateway.record import UsageRecord
from gateway.routing import USAGE_OPTION_ENDPOINTS, Target
from gateway.sse import BodyTail, StreamScanner
from gateway.tags import CallTags
from gateway.upstream import Upstream
from gateway.usage import Usage, estimate_tokens, model_name, usage_from_body

if TYPE_CHECKING:
    from gateway.proxy import Incoming

log = logging.getLogger(__name__)

UNKNOWN_MODEL = "unknown"
# A Responses answer whose work has not begun (``background: true``).
_NOT_STARTED = re.compile(rb'"status"\s*:\s*"(?:queued|in_progress)"')
# Put first in a streamed body that does not ask for usage.
INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


@dataclass(slots=True, eq=False)
class Call:
    """One proxied call, filled in as it goes; the record is built from it."""

    request_id: str
    target: Target
    upstream: Upstream
    # A POST to an accounted endpoint: priced and recorded.
    accounted: bool
    tags: CallTags
    # True when the client presented a gateway key, not an upstream key.
    gateway_keyed: bool
    key_label: str | None
    body: bytes
    # The size of the body the client sent, for estimates.
    request_bytes: int
    requested_model: str | None = None
    # The body asked for ``stream: true``.
    stream_asked: bool = False
    hide_usage_chunk: bool = False
    # Outcome, as far as it got.
    status: int = 0
    streamed: bool = False
    usage: Usage | None = None
    reported_model: str | None = None
    # The tier the upstream says served the call ("flex", "priority", ...).
    service_tier: str | None = None
    usage_complete: bool = True
    usage_estimated: bool = False
    # Output tokens to estimate when usage never came (stream chunks seen).
    output_estimate: int = 0
    error: str | None = None
    # Seconds spent waiting on the upstream and on the client.
    upstream_s: float = 0.0
    client_s: float = 0.0
    first_byte_s: float | None = None
    # When the handler started (perf_counter) and the call's wall-clock time.
    started: float = 0.0
    timestamp: datetime | None = None
    # Set once the record went to the recorder: a call has one row.
    recorded: bool = False


def check_gateway_key(
    headers: Mapping[str, str], keys: list[tuple[bytes, str]]
) -> str | None:
    """
    Return the label of the gateway key presented; None when keys are off.

    Raise Unauthorized when keys are configured and none of them was sent.
    """
    if not keys:
        return None
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    presented = token.strip().encode()
    matched = False
    label = ""
    # Every key is compared, each in constant time, so timing tells nothing.
    for key, key_label in keys:
        if hmac.compare_digest(presented, key):
            matched, label = True, key_label
    if not matched or scheme.lower() != "bearer":
        raise Unauthorized(
            "a valid gateway key is required: Authorization: Bearer <key>"
        )
    return label or None


async def read_body(request: Incoming, max_bytes: int) -> bytes:
    """Return the whole request body; raise BodyTooLarge past *max_bytes*."""
    size = request.content_length
    if size is not None and size > max_bytes:
        raise BodyTooLarge(f"the request body is over {max_bytes} bytes")
    if not request.body_exists:
        return b""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BodyTooLarge(f"the request body is over {max_bytes} bytes") from exc


class CallOptions(NamedTuple):
    """What a call's body asks for, as far as the gateway cares."""

    model: str | None
    # The body to send instead, when usage must be asked for; else None.
    changed: bytes | None
    stream: bool


NO_OPTIONS = CallOptions(None, None, False)


def read_call_options(rest: str, body: bytes) -> CallOptions:
    """
    Return the requested model, whether a stream is asked for and, when usage
    must be asked for, the new body.

    A body that is not a JSON object is forwarded as it is: the upstream
    answers it the way it would without the gateway.
    """
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return NO_OPTIONS
    if not isinstance(obj, dict):
        return NO_OPTIONS
    model = model_name(obj.get("model"))
    stream = obj.get("stream") is True
    if not stream or rest not in USAGE_OPTION_ENDPOINTS:
        return CallOptions(model, None, stream)
    if "stream_options" not in obj:
        # The usual case: one key put first, every byte the client sent kept
        # (orjson would turn an integer past 64 bits into a float).
        start = body.index(b"{") + 1
        return CallOptions(model, body[:start] + INCLUDE_USAGE + body[start:], True)
    options = obj["stream_options"]
    if options is None:
        options = {}
    elif not isinstance(options, dict) or options.get("include_usage") is True:
        # Already asked for, or not ours to fix: the upstream judges it.
        return CallOptions(model, None, True)
    # Rewritten whole, by the standard library, which keeps every integer and
    # every number's value (its spelling may change: 1e0 becomes 1.0).
    exact = json.loads(body)
    exact["stream_options"] = {**options, "include_usage": True}

    changed = json.dumps(exact, ensure_ascii=False, separators=(",", ":"))
    return CallOptions(model, changed.encode(), True)


def take_body_usage(call: Call, body: bytes) -> None:
    """Take the usage and model of a whole answer *body* into *call*."""
    usage, model, tier = usage_from_body(body)
    deferred = (
        usage is None
        and call.target.rest == "responses"
        and _NOT_STARTED.search(body) is not None
    )
    take_answer_usage(call, usage, model, tier, len(body), deferred=deferred)


def take_tail_usage(call: Call, tail: BodyTail) -> None:
    """Take what the ends of an answer too large to hold report into *call*."""
    usage, model, tier = tail.read()
    take_answer_usage(call, usage, model, tier, tail.size)


def take_answer_usage(
    call: Call,
    usage: Usage | None,
    model: str | None,
    tier: str | None,
    size: int,
    *,
    deferred: bool = False,
) -> None:
    """
    Take an answer's usage, model and tier into *call*; *size* is how many of
    its bytes were read, and *deferred* says its usage comes later.
    """
    call.reported_model = model
    call.service_tier = tier
    unreadable = usage is not None and usage.unreadable
    call.usage = None if unreadable else usage
    if call.usage is not None or not 200 <= call.status < 300:
        return
    call.usage_complete = False
    if deferred:
        # A background response, answered before any work: its usage goes to
        # whoever retrieves it later, so there is nothing here to estimate.
        call.usage = Usage()
        call.error = "usage_deferred"
        return
    # A success without usage: bill what the sizes suggest, say so. An
    # embedding has no output tokens: its answer is vectors, not text.
    if call.target.rest != "embeddings":
        call.output_estimate = estimate_tokens(size)
    if call.error is not None:
        # Cut short (a read failed, the client left): that is the error.
        return
    if unreadable:
        name_unreadable(call)
    else:
        call.error = "no_usage"


def take_stream_usage(call: Call, scanner: StreamScanner) -> None:
    """Take what *scanner* saw of a stream, however it ended, into *call*."""
    call.reported_model = scanner.model
    call.service_tier = scanner.service_tier
    usage = scanner.usage
    unreadable = usage is not None and usage.unreadable
    call.usage = None if unreadable else usage
    if call.usage is None:
        call.usage_complete = False
        call.output_estimate = scanner.chunks_seen
        # A read that failed has named the cut already; here the stream ended
        # cleanly, with its end marker but no usage, or without the marker.
        if call.error is None and 200 <= call.status < 300:
            if not scanner.finished:
                call.error = "stream_incomplete"
            elif unreadable:
                name_unreadable(call)
            else:
                call.error = "no_usage"


def name_unreadable(call: Call) -> None:
    """Mark a call whose usage came in counts that cannot be priced; log it."""
    call.error = "usage_unreadable"
    log.warning(
        "%s: the usage %s reported is not in counts that can be priced;"
        " its tokens are estimated",
        call.target.endpoint,
        call.upstream.name,
    )


def build_record(
    call: Call, prices: PriceBook, timestamp: datetime, elapsed_s: float
) -> UsageRecord:
    """Return the one record of *call*, priced at *timestamp*."""
    usage = call.usage
    if usage is None:
        usage = Usage()
        if not call.usage_complete:
            # Never silently zero: what was sent and seen, marked as estimated.
            usage.input_tokens = estimate_tokens(call.request_bytes)
            usage.output_tokens = call.output_estimate
            usage.total_tokens = usage.input_tokens + usage.output_tokens
            call.usage_estimated = True
    model = call.reported_model or call.requested_model or UNKNOWN_MODEL
    upstream = call.upstream
    cost = prices.cost(
        model,
        usage,
        provider=upstream.provider,
        at=timestamp,
        service_tier=call.service_tier,
    )
    tags = call.tags
    return UsageRecord(
        request_id=call.request_id,
        timestamp=timestamp,
        model=model,
        upstream=upstream.name,
        endpoint=call.target.endpoint,
        status=call.status,
        streamed=call.streamed,
        input_tokens=usage.input_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        total_tokens=usage.total_tokens,
        input_cost_usd=cost.input_usd if cost else None,
        output_cost_usd=cost.output_usd if cost else None,
        total_cost_usd=cost.total_usd if cost else None,
        fee_cost_usd=cost.fee_usd if cost else None,
        web_search_calls=usage.web_search_calls,
        file_search_calls=usage.file_search_calls,
        price_source=cost.source if cost else None,
        service_tier=call.service_tier,
        usage_complete=call.usage_complete,
        usage_estimated=call.usage_estimated,
        purpose=tags.purpose,
        ticker=tags.ticker,
        cycle_id=tags.cycle_id,
        tags=tags.tags,
        response_time_ms=elapsed_s * 1000,
        key_label=call.key_label,
        error=call.error,
    )
