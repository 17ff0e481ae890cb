"""
The proxy handler: forward a call unchanged, relay its answer, record its usage.

One call, in order:

1. ``admit``: the raw path is checked and split (``routing``), the tag headers
   read (``tags``), the gateway key checked when keys are configured, the body
   read (bounded) and, for the accounted endpoints only, parsed for ``model``
   and ``stream``; routing picks the upstream; the admission checks (budgets)
   run. Anything refused here never reaches an upstream.
2. ``relay``: the request goes out on the upstream's pool (``http1``). A JSON
   answer is read whole and its usage taken from it; an event stream is
   relayed read by read through the ``StreamScanner``, nothing held back.
3. ``forward``'s ``finally``: one ``UsageRecord`` for every accounted call,
   however it ended (answered, refused upstream, cut short, cancelled),
   priced at the call's start and handed to the recorder, which never blocks.

Only ``chat/completions``, ``completions``, ``embeddings`` and ``responses``
are recorded; other ``/v1`` paths (models, files, ...) are relayed the same
way without a row, since they carry no token usage. For the accounted ones
the gateway asks upstream for an uncompressed answer (it must read the usage);
other paths pass ``Accept-Encoding`` through and relay compressed bytes as-is.

The call's ``X-Request-Id`` (the client's, or a new one) is stored, sent
upstream, and returned to the client; the upstream's own ``x-request-id``
comes back as ``X-Upstream-Request-Id``. The client's ``Authorization`` goes
upstream untouched, unless gateway keys are configured: then it must be one of
them, and the upstream's own ``api_key`` is sent instead.

A streamed chat or legacy completion whose client did not set
``stream_options.include_usage`` gets it set upstream, and the scanner removes
the usage-only chunk that this adds, so the client sees what it would have
seen without the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from time import perf_counter
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.calls import (
    NO_OPTIONS,
    Call,
    build_record,
    check_gateway_key,
    read_body,
    read_call_options,
    take_body_usage,
    take_stream_usage,
    take_tail_usage,
)
from gateway.config import Settings
from gateway.errors import GatewayError, UpstreamError
from gateway.http1 import CannotConnect, ClientError, InvalidRequestHeader, Reply
from gateway.keys import ADMISSION, CLOCK, METRICS, PRICES, RECORDER, SETTINGS
from gateway.pricing import PriceBook
from gateway.routing import (
    ACCOUNTED_ENDPOINTS,
    RESPONSES_ENDPOINT,
    Router,
    split_target,
)
from gateway.sse import BodyTail, StreamScanner
from gateway.tags import REQUEST_ID_HEADER, read_request_id, read_tags
from gateway.upstream import (
    Upstream,
    headers_for_client,
    headers_for_upstream,
    open_pools,
    upstream_errors,
)

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
# An accounted JSON answer longer than this is relayed as it comes, not held.
MAX_WHOLE_BYTES = 1 << 20
JSON = "application/json"
# Failures that mean the request never left the gateway.
NEVER_SENT = (CannotConnect, InvalidRequestHeader)
# Recorded for a call whose client left before any status was known (nginx's).
CLIENT_CLOSED = 499
# The status stored for a call the shutdown cut before it had one of its own.
GATEWAY_GONE = 503


class Proxy:
    """What every proxied call shares: routing, upstreams, keys and prices."""

    def __init__(self, settings: Settings, prices: PriceBook) -> None:
        self.router = Router(settings.upstreams, settings.default_upstream)
        self.upstreams = {
            name: Upstream.from_settings(name, upstream)
            for name, upstream in settings.upstreams.items()
        }
        self.prices = prices
        self.max_body_bytes = settings.server.max_body_bytes
        self.gateway_keys = [
            (key.key.get_secret_value().encode(), key.label)
            for key in settings.server.gateway_keys
        ]
        self.drain_timeout_s = settings.server.drain_timeout_s
        # Every call started and not yet answered, behind either door: a
        # shutdown gives them the drain time together (``drain_calls``).
        self.calls: set[asyncio.Task[Any]] = set()
        # Set when the drain time is over: a call cancelled now was cut by the
        # shutdown, not left by its client, and its row says so.
        self.cutting = False

    async def drain_calls(self) -> None:
        """Give the started calls ``drain_timeout_s`` to finish; cancel the rest."""
        if not self.calls:
            return
        _, late = await asyncio.wait(list(self.calls), timeout=self.drain_timeout_s)
        if not late:
            return
        log.warning(
            "%d calls still running after the %g s drain time; cut",
            len(late),
            self.drain_timeout_s,
        )
        self.cutting = True
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    def cut_reason(self) -> str:
        """Why a call's task was cancelled: the shutdown, or its client leaving."""
        return "gateway_shutdown" if self.cutting else "client_disconnected"


PROXY = web.AppKey("proxy", Proxy)


class HeadWithFirstBytes(web.StreamResponse):
    """A relayed answer whose head leaves with its first bytes, in one send."""

    # aiohttp's own switch: web.Response turns it off the same way. An aiohttp
    # without it sends the head at prepare(), as for any StreamResponse.
    _send_headers_immediately = False
    holds_head = hasattr(web.StreamResponse, "_send_headers_immediately")


class Incoming(Protocol):
    """
    What the proxy reads of a request: aiohttp's ``web.Request``, or the
    front door's own for the plain calls it reads itself (``front``).
    """

    app: web.Application
    method: str
    raw_path: str
    headers: CIMultiDict[str] | CIMultiDictProxy[str]
    content_length: int | None

    @property
    def path(self) -> str: ...
    @property
    def body_exists(self) -> bool: ...
    @property
    def transport(self) -> asyncio.BaseTransport | None: ...
    async def read(self) -> bytes: ...


class StreamedAnswer(Protocol):
    """What ``relay_stream`` writes a relayed answer to."""

    holds_head: bool
    content_length: int | None

    async def prepare(self, request: Any) -> Any: ...
    async def write(self, data: bytes) -> None: ...
    async def write_eof(self, data: bytes = b"") -> None: ...


def open_stream(
    request: Incoming, status: int, reason: str, headers: CIMultiDict[str]
) -> StreamedAnswer:
    """The answer a stream is relayed into: aiohttp's, or the front door's."""
    if isinstance(request, web.BaseRequest):
        return HeadWithFirstBytes(status=status, reason=reason, headers=headers)
    return request.stream_answer(status, reason, headers)  # type: ignore[attr-defined]


def setup(app: web.Application) -> None:
    """Route ``/v1/...`` and ``/<upstream>/v1/...`` through the proxy."""
    settings = app[SETTINGS]
    # One book per application, whichever concept is set up first makes it.
    if PRICES not in app:
        app[PRICES] = PriceBook(settings.pricing)
    proxy = Proxy(settings, app[PRICES])
    app[PROXY] = proxy

    async def pools(app: web.Application) -> AsyncIterator[None]:
        async with open_pools(proxy.upstreams.values()):
            yield

    async def drain(app: web.Application) -> None:
        await proxy.drain_calls()

    app.cleanup_ctx.append(pools)
    # aiohttp's runner calls this once the listeners are closed, before its
    # own drain of the connections (which would give a call twice the time:
    # a graceful wait, then one more after it stops reading bodies).
    app.on_shutdown.append(drain)
    app.router.add_route("*", "/v1/{rest:.*}", serve)
    for name in settings.upstreams:
        app.router.add_route("*", f"/{name}/v1/{{rest:.*}}", serve)


async def serve(request: web.Request) -> web.StreamResponse:
    """``forward`` as aiohttp's server runs it, held in ``Proxy.calls`` meanwhile."""
    calls = request.app[PROXY].calls
    task = asyncio.current_task()
    assert task is not None
    calls.add(task)
    try:
        return await forward(request)  # type: ignore[return-value]
    finally:
        calls.discard(task)


async def forward(request: Incoming) -> web.StreamResponse | StreamedAnswer:
    """Proxy one call and record it; the handler of every proxied route."""
    started = perf_counter()
    app = request.app
    timestamp = app[CLOCK]()
    try:
        call = await admit(request, app[PROXY])
    except GatewayError as exc:
        app[METRICS].rejected[exc.code] += 1
        raise
    except ConnectionResetError:
        # The client hung up mid-upload: nothing went upstream, nothing is
        # owed. Left to aiohttp, it would be logged as a handler error.
        log.info(
            "%s %s: the client left during its upload", request.method, request.path
        )
        return web.Response(status=CLIENT_CLOSED)
    call.started, call.timestamp = started, timestamp
    try:
        return await relay(request, call)
    except UpstreamError as exc:
        call.status, call.error = exc.status, exc.code
        # Refused connections cost nothing; after sending, the upstream may
        # have done (and billed) the work, so the tokens are estimated.
        call.usage_complete = isinstance(exc.__cause__, NEVER_SENT)
        # The client is told which upstream; the log also says why.
        cause = exc.__cause__
        if cause is None:
            log.warning("%s: %s", call.target.endpoint, exc.message)
        else:
            log.warning("%s: %s (%s)", call.target.endpoint, exc.message, cause)
        return exc.response({REQUEST_ID_HEADER: call.request_id})
    except asyncio.CancelledError:
        # The client hung up before the answer was relayed whole, or the
        # shutdown's drain time ran out.
        proxy = app[PROXY]
        call.error = call.error or proxy.cut_reason()
        if call.usage is None:
            call.usage_complete = False
        if not call.status:
            call.status = GATEWAY_GONE if proxy.cutting else CLIENT_CLOSED
        raise
    finally:
        elapsed_s = perf_counter() - started
        record_call(app, call)
        log.info(
            "%s %s -> %s %d %s %.0f ms",
            request.method,
            call.target.endpoint,
            call.target.upstream,
            call.status,
            call.reported_model or call.requested_model or "-",
            elapsed_s * 1000,
        )


async def admit(request: Incoming, proxy: Proxy) -> Call:
    """Check and read the request; return the call, or raise why it is refused."""
    path = split_target(request.raw_path)
    headers = request.headers
    # First: every refusal after this answers with the id (a bad one, none).
    request_id = read_request_id(headers)
    try:
        tags = read_tags(headers)
        key_label = check_gateway_key(headers, proxy.gateway_keys)
        reading = perf_counter()
        body = await read_body(request, proxy.max_body_bytes)
        # The upload is the client's time, not the gateway's overhead.
        read_s = perf_counter() - reading

        # A GET on an accounted path (none exists today) is relayed without a row.
        accounted = request.method == "POST" and path.rest in ACCOUNTED_ENDPOINTS
        options = NO_OPTIONS
        if accounted and body:
            options = read_call_options(path.rest, body)
            if options.changed is not None:
                body = options.changed
        target = proxy.router.resolve(path, options.model)

        if accounted:
            for check in request.app[ADMISSION]:
                check(tags.admission_view())
    except GatewayError as exc:
        exc.request_id = request_id
        raise
    return Call(
        request_id=request_id,
        target=target,
        upstream=proxy.upstreams[target.upstream],
        accounted=accounted,
        tags=tags,
        gateway_keyed=bool(proxy.gateway_keys),
        key_label=key_label,
        body=body,
        request_bytes=request.content_length or len(body),
        requested_model=options.model,
        stream_asked=options.stream,
        hide_usage_chunk=options.changed is not None,
        client_s=read_s,
    )


async def relay(request: Incoming, call: Call) -> web.StreamResponse | StreamedAnswer:
    """Send *call* upstream and relay its answer to the client."""
    upstream = call.upstream
    assert upstream.pool is not None, "upstream pools open on startup"
    headers = headers_for_upstream(
        request.headers,
        request_id=call.request_id,
        drop_authorization=call.gateway_keyed,
        identity_encoding=call.accounted,
        authorization=upstream.authorization,
    )

    sent = perf_counter()
    with upstream_errors(upstream.name):
        reply = await upstream.pool.request(
            request.method, call.target.url, headers, call.body
        )
    call.upstream_s = perf_counter() - sent
    call.status = reply.status
    try:
        answer_headers = headers_for_client(reply.headers, reply.connection)
        answer_headers[REQUEST_ID_HEADER] = call.request_id
        # Only an accounted JSON answer is read whole (its usage is at the
        # end), and only up to MAX_WHOLE_BYTES; everything else flows through
        # as it arrives.
        if call.accounted and reads_whole(call, reply):
            length = reply.content_length
            if length is not None and length > MAX_WHOLE_BYTES:
                # Held whole, 60 MB of vectors would cost 120 MB (pieces, joined).
                return await relay_stream(
                    request, call, reply, answer_headers, sent, BodyTail()
                )
            return await relay_whole(call, reply, answer_headers)
        return await relay_stream(request, call, reply, answer_headers, sent)
    finally:
        reply.release()


def reads_whole(call: Call, reply: Reply) -> bool:
    """Whether an accounted answer is one body to read whole, not a stream."""
    kind = reply.content_type
    if kind == EVENT_STREAM:
        return False
    # A success asked for as a stream is one, whatever its label (some
    # upstreams say text/plain), unless it is JSON: the stream was ignored.
    return not (
        call.stream_asked
        and 200 <= reply.status < 300
        and kind != JSON
        and not kind.endswith("+json")
    )


async def relay_whole(
    call: Call, reply: Reply, headers: CIMultiDict[str]
) -> web.Response:
    """Read a whole answer, take its usage, and return it as it came."""
    waited = perf_counter()
    with upstream_errors(call.upstream.name):
        body = await reply.read()
    call.upstream_s += perf_counter() - waited
    take_body_usage(call, body)

    return web.Response(
        status=reply.status, reason=reply.reason, body=body, headers=headers
    )


async def relay_stream(
    request: Incoming,
    call: Call,
    reply: Reply,
    headers: CIMultiDict[str],
    sent: float,
    tail: BodyTail | None = None,
) -> StreamedAnswer:
    """
    Relay an answer read by read; an accounted one is an event stream,
    watched for its usage on the way, or a JSON answer too large to hold,
    whose *tail* is watched.
    """
    # The answer's head waits for the first bytes that came with it (from a
    # fast upstream, nearly always): one send to the client instead of two.
    # It never waits for the upstream (below).
    response = open_stream(request, reply.status, reply.reason, headers)
    head_held = response.holds_head
    scanner: StreamScanner | None = None
    watch = None
    if tail is not None:
        watch = tail.feed
    elif call.accounted:
        call.streamed = True
        scanner = StreamScanner(
            responses_api=call.target.rest == RESPONSES_ENDPOINT,
            hide_usage_chunk=call.hide_usage_chunk,
        )
        watch = scanner.feed
    if scanner is None and reply.content_length is not None:
        # The bytes go through unchanged, so the upstream's length holds.
        response.content_length = reply.content_length
    last = b""
    try:
        waited = perf_counter()
        await response.prepare(request)
        call.client_s += perf_counter() - waited
        while True:
            if head_held and not reply.ready:
                # Nothing more has come, or nothing went out with what had
                # (the scanner holds an unfinished event): the head goes now,
                # so that the client sees it while the upstream works.
                await response.write(b"")
                head_held = False
            waited = perf_counter()
            try:
                data = await reply.readany()
            except ClientError as exc:
                call.error = (
                    "upstream_timeout"
                    if isinstance(exc, TimeoutError)
                    else "upstream_reset"
                )
                log.warning(
                    "%s: stream from %s cut: %r",
                    call.target.endpoint,
                    call.upstream.name,
                    exc,
                )
                # Mirror the cut: the client must not take this for a full answer.
                if request.transport is not None:
                    request.transport.close()
                return response
            now = perf_counter()
            call.upstream_s += now - waited
            if call.first_byte_s is None:
                call.first_byte_s = now - sent
            if not data:
                break
            out = watch(data) if watch is not None else data
            if reply.at_eof:
                # The last read: it goes out with the end of the answer, in
                # one send (the whole answer, when it came in one read).
                last = out
                break
            if out:
                waited = perf_counter()
                await response.write(out)
                call.client_s += perf_counter() - waited
                head_held = False
        if scanner is not None:
            last += scanner.close()
            take_stream_usage(call, scanner)
            scanner = None
            # Recorded before the client sees the end, so that a client that
            # reads the stream to its end and then asks the API finds the row.
            record_call(request.app, call)
        elif tail is not None:
            take_tail_usage(call, tail)
            tail = None
            record_call(request.app, call)
        waited = perf_counter()
        await response.write_eof(last)
        call.client_s += perf_counter() - waited
    except ConnectionResetError:
        call.error = "client_disconnected"
        reply.close()
    except asyncio.CancelledError:
        # aiohttp cancels the handler of a client that hung up (when
        # handler_cancellation is on), and a shutdown the calls it cannot
        # wait for; the row is still written by forward.
        call.error = request.app[PROXY].cut_reason()
        reply.close()
        raise
    finally:
        if scanner is not None:
            take_stream_usage(call, scanner)
        elif tail is not None:
            take_tail_usage(call, tail)

    return response


def record_call(app: web.Application, call: Call) -> None:
    """Submit the record of an accounted call, once, however the call ended."""
    if not call.accounted or call.recorded:
        return
    call.recorded = True
    assert call.timestamp is not None
    try:
        submit_record(app, call, call.timestamp, perf_counter() - call.started)
    # A bug in accounting must not cost the client its answer.
    except Exception:
        log.exception("could not record call %s", call.request_id)


def submit_record(
    app: web.Application, call: Call, timestamp: datetime, elapsed_s: float
) -> None:
    """Hand the call's one record to the recorder and its timings to the metrics."""
    upstream = call.upstream
    app[RECORDER].submit(build_record(call, app[PRICES], timestamp, elapsed_s))
    overhead_s = max(0.0, elapsed_s - call.upstream_s - call.client_s)
    app[METRICS].observe_latency(
        upstream.name, call.upstream_s, overhead_s, call.first_byte_s
    )
