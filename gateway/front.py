"""
The front door: the gateway reads plain proxied requests itself, aiohttp the rest.

aiohttp's server costs a proxied call about a quarter of the gateway's CPU
(its request and response objects, the router, the middlewares), and a
proxied call needs none of it. Each connection starts with a ``Door``. A
request it finds plain goes straight to ``proxy.forward``:

- ``GET`` or ``POST``, ``HTTP/1.1``, an origin-form target on a proxied path
  (``/v1/...`` or ``/<upstream>/v1/...``) spelt in URI characters;
- well-formed header lines in printable ASCII, a ``Host``, no singleton
  header twice (aiohttp refuses those); no ``Transfer-Encoding``, ``Expect``
  or ``Upgrade``; a ``Content-Length`` within ``server.max_body_bytes``, or
  none; a head of at most ``MAX_HEAD_BYTES`` and ``MAX_HEADERS`` lines.

Any other request (another path or method, HTTP/1.0, a chunked or announced
upload, a head too long or ended by bare line feeds) hands the connection to
aiohttp's ``RequestHandler`` with every byte read so far, and it stays there.
So the door never answers a malformed request itself: aiohttp does, as it
always has.

What the door does is what aiohttp's server does for these calls: keep-alive
and pipelined requests answered in order, ``Connection: close``, TCP
keep-alive, idle connections closed after ``KEEPALIVE_S``, writes that wait
while the client's buffer is full, and a handler that finishes when its client
has gone (its writes fail, and its row says so). On shutdown the listener
closes, idle connections close, and started calls get ``drain_timeout_s`` to
finish before they are cancelled.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import socket
import time
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

from aiohttp import web
from multidict import CIMultiDict

from gateway import access, proxy
from gateway.errors import GatewayError, internal_error, refused
from gateway.keys import SETTINGS

log = logging.getLogger(__name__)

# A longer head, or one with more header lines, goes to aiohttp, which
# applies its own limits (8,190 bytes a line, 128 headers) and answers 400.
MAX_HEAD_BYTES = 8190
MAX_HEADERS = 100
# An idle keep-alive connection is closed after this: aiohttp's run_app
# default, which tallygate serve used before it had a door, for both doors.
KEEPALIVE_S = 75.0
# Bytes read ahead while a call is answered (pipelined requests) before the
# door stops reading from that client.
MAX_READ_AHEAD = 256 * 1024

_REQUEST_LINE = re.compile(rb"(GET|POST) (/[-A-Za-z0-9._~!$&'()*+,;=:@/?%]*) HTTP/1\.1")
# Field lines in printable ASCII (and tabs); anything else goes to aiohttp.
_FIELD_LINES = re.compile(
    rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\t\x20-\x7e]*"
    rb"(?:\r\n[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\t\x20-\x7e]*)*"
)
# Requests with these headers are aiohttp's to read.
_NOT_PLAIN = frozenset({"transfer-encoding", "expect", "upgrade"})
# Headers aiohttp refuses to see twice in a request (RFC 9110's singletons).
_SINGLETONS = frozenset(
    {"content-length", "content-location", "content-range", "content-type", "etag",
     "host", "max-forwards", "server", "user-agent"}
)  # fmt: skip
_WATCHED = _NOT_PLAIN | _SINGLETONS | {"connection"}
# Statuses whose answers have no body.
_NO_BODY = frozenset({204, 304})


class RequestHead:
    """A plain request's head, as the door read it."""

    __slots__ = ("close", "content_length", "headers", "method", "target")

    def __init__(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        content_length: int | None,
        close: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.content_length = content_length
        self.close = close


def parse_request_head(head: bytes, max_body_bytes: int) -> RequestHead | None:
    """
    Return the head (request line and header lines, no blank line) of a
    request the door takes itself, or None for one that is aiohttp's.
    """
    line, _, fields = head.partition(b"\r\n")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None or (fields and _FIELD_LINES.fullmatch(fields) is None):
        return None
    lines = fields.decode("ascii").split("\r\n") if fields else []
    if len(lines) > MAX_HEADERS:
        return None
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    length: int | None = None
    close = False
    for field in lines:
        name, _, value = field.partition(":")
        value = value.strip(" \t")
        pairs.append((name, value))
        lower = name.lower()
        if lower not in _WATCHED:
            continue
        if lower in _NOT_PLAIN or lower in seen:
            return None
        if lower in _SINGLETONS:
            seen.add(lower)
        if lower == "content-length":
            if not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
            if length > max_body_bytes:
                return None
        elif lower == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if "upgrade" in tokens:
                return None
            close = close or "close" in tokens
    # HTTP/1.1 requires Host, and aiohttp refuses a request without it.
    if "host" not in seen:
        return None
    method, target = match.groups()
    return RequestHead(
        method.decode(), target.decode(), CIMultiDict(pairs), length, close
    )


class DoorRequest:
    """
    What ``proxy.forward`` reads of a request the door took. Its call starts
    with the head, as under aiohttp; a body still arriving is awaited by
    ``read`` (the client's time), and one whose client leaves first raises
    ConnectionResetError there.
    """

    __slots__ = (
        "app",
        "arrival",
        "body",
        "content_length",
        "door",
        "headers",
        "method",
        "raw_path"
    )  # fmt: skip

    def __init__(self, door: Door, head: RequestHead) -> None:
        self.app = door.front.app
        self.door = door
        self.method = head.method
        self.raw_path = head.target
        self.headers = head.headers
        self.content_length = head.content_length
        self.body = b""
        self.arrival: asyncio.Future[bytes] | None = None

    @property
    def path(self) -> str:
        return unquote(self.raw_path.partition("?")[0])

    @property
    def body_exists(self) -> bool:
        return bool(self.content_length)

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.door.transport

    async def read(self) -> bytes:
        if self.arrival is not None:
            self.body = await self.arrival
            self.arrival = None
        return self.body

    def stream_answer(
        self, status: int, reason: str, headers: CIMultiDict[str]
    ) -> StreamAnswer:
        return StreamAnswer(self.door, status, reason, headers)


class Front:
    """What every door of one listening socket shares."""

    def __init__(self, app: web.Application, handler_factory: web.Server) -> None:
        settings = app[SETTINGS]
        self.app = app
        self.handler_factory = handler_factory
        self.max_body_bytes = settings.server.max_body_bytes
        # A prefix an admin token or CORS would apply to stays aiohttp's.
        prefixes = ["/v1/"] + [f"/{name}/v1/" for name in settings.upstreams]
        self.prefixes = tuple(p for p in prefixes if not access.is_protected(p))
        self.doors: set[Door] = set()
        # The proxy's: aiohttp's calls are in it too, and drained with these.
        self.calls = app[proxy.PROXY].calls
        self.closing = False

    def __call__(self) -> Door:
        return Door(self)

    def shutdown(self) -> None:
        """
        Take no more calls and close idle connections. Started calls go on:
        the runner gives them the drain time (``Proxy.drain_calls``), and
        each door closes once its call is answered.
        """
        self.closing = True
        for door in list(self.doors):
            if door.call is None:
                door.close()


class Door(asyncio.Protocol):
    """One client connection, until it is handed to aiohttp."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.buffer: bytes | bytearray = b""
        self.call: asyncio.Task[None] | None = None
        # The call whose body is still arriving.
        self.receiving: DoorRequest | None = None
        self.close_after = False
        self.reading_paused = False
        self.writing_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.front.doors.add(self)
        self.idle()

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            if isinstance(self.buffer, bytes):
                self.buffer = bytearray(self.buffer)
            self.buffer += data
        else:
            self.buffer = data
        if self.call is None:
            self.take_request()
        elif self.receiving is not None:
            self.take_body(self.receiving)
        elif len(self.buffer) > MAX_READ_AHEAD and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True

    def eof_received(self) -> None:
        # As aiohttp's handler does: the transport closes.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.doors.discard(self)
        self.transport = None
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.wake_writer()
        arrival = self.receiving.arrival if self.receiving is not None else None
        if arrival is not None and not arrival.done():
            arrival.set_exception(
                ConnectionResetError("the client left during its upload")
            )
            # Marked as seen: read() raises it if the call gets that far. A
            # call that never reads (refused first) has cleared ``receiving``
            # by then on both event loops; this keeps it quiet if not.
            arrival.exception()
        # A call in flight is not cancelled: it finishes, its writes fail,
        # and its row is written, as under aiohttp's server.

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.wake_writer()

    # Reading requests

    def take_request(self) -> None:
        """Start the call whose head the buffer holds, wait for one, or hand off."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
        if end < 0:
            # Too long for the door, or ended by bare line feeds, which only
            # aiohttp's parser judges: either way its answer, not a wait.
            if (
                len(buffer) >= MAX_HEAD_BYTES + 4
                or buffer.find(b"\n\n", 0, MAX_HEAD_BYTES + 2) >= 0
            ):
                self.hand_off()
            return
        if self.front.closing:
            self.close()
            return
        head = parse_request_head(bytes(buffer[:end]), self.front.max_body_bytes)
        if head is None or not head.target.startswith(self.front.prefixes):
            self.hand_off()
            return
        self.close_after = head.close
        request = DoorRequest(self, head)
        if head.content_length:
            self.receiving = request
            self.take_body(request, end + 4)
        else:
            self.buffer = buffer[end + 4 :]
        call = asyncio.get_running_loop().create_task(self.answer(request))
        self.call = call
        self.front.calls.add(call)
        call.add_done_callback(self.front.calls.discard)

    def take_body(self, request: DoorRequest, start: int = 0) -> None:
        """
        Give *request* its body, from *start* in the buffer, once the buffer
        holds all of it: sliced out once, straight after the head.
        """
        stop = start + (request.content_length or 0)
        buffer = self.buffer
        if len(buffer) < stop:
            if request.arrival is None:
                request.arrival = asyncio.get_running_loop().create_future()
            if start:
                self.buffer = buffer[start:]
            return
        body, self.buffer = bytes(buffer[start:stop]), buffer[stop:]
        self.receiving = None
        if request.arrival is None:
            request.body = body
        elif not request.arrival.done():
            request.arrival.set_result(body)

    def hand_off(self) -> None:
        """Give the connection, and what it sent so far, to aiohttp for good."""
        transport = self.transport
        if transport is None:
            return
        self.front.doors.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        handler = self.front.handler_factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.writing_paused:
            handler.pause_writing()
        buffered, self.buffer = bytes(self.buffer), b""
        if buffered:
            handler.data_received(buffered)
        if self.reading_paused:
            transport.resume_reading()
        self.transport = None

    # Answering

    async def answer(self, request: DoorRequest) -> None:
        try:
            try:
                answer = await proxy.forward(request)
            except GatewayError as exc:
                answer = refused(request.method, request.path, exc)
            except (asyncio.CancelledError, ConnectionResetError):
                raise
            except Exception:
                answer = internal_error(request.method, request.path)
            if self.receiving is not None:
                # Answered before its body was read whole (refused, say): the
                # rest of the body cannot be told from the next request.
                self.receiving = None
                self.close_after = True
            if isinstance(answer, web.Response):
                self.send(whole_answer(answer, self.close_after))
            elif not (isinstance(answer, StreamAnswer) and answer.finished):
                # A stream cut short: only closing says it is not whole.
                self.close()
        except asyncio.CancelledError:
            self.close()
            raise
        except ConnectionResetError:
            self.close()
        except Exception:
            # A bug of the door's own: this connection ends, the others go on.
            log.exception("could not answer %s %s", request.method, request.path)
            self.close()
        finally:
            self.call = None
        self.next_request()

    def next_request(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.close_after or self.front.closing:
            self.close()
            return
        if self.reading_paused:
            self.transport.resume_reading()
            self.reading_paused = False
        if self.buffer:
            self.take_request()
        if self.call is None and self.transport is not None:
            self.idle()

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client has gone")
        self.transport.write(data)

    async def drain(self) -> None:
        if not self.writing_paused:
            return
        if self.drained is None:
            self.drained = asyncio.get_running_loop().create_future()
        await self.drained
        if self.transport is None:
            raise ConnectionResetError("the client has gone")

    def wake_writer(self) -> None:
        if self.drained is not None:
            if not self.drained.done():
                self.drained.set_result(None)
            self.drained = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # Idle connections

    def idle(self) -> None:
        loop = asyncio.get_running_loop()
        self.idle_since = loop.time()
        if self.idle_timer is None:
            self.idle_timer = loop.call_later(KEEPALIVE_S, self.close_if_idle)

    def close_if_idle(self) -> None:
        self.idle_timer = None
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        delay = KEEPALIVE_S
        if self.call is None:
            waited = loop.time() - self.idle_since
            if waited >= KEEPALIVE_S:
                self.close()
                return
            delay -= waited
        self.idle_timer = loop.call_later(delay, self.close_if_idle)


class StreamAnswer:
    """
    An answer relayed read by read, as ``proxy.relay_stream`` drives it:
    the head waits for the first bytes (``write(b"")`` sends it alone), then
    chunked framing, or the bytes as they are when the length is known.
    """

    holds_head = True

    def __init__(
        self, door: Door, status: int, reason: str, headers: CIMultiDict[str]
    ) -> None:
        self.door = door
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length: int | None = None
        self.head: bytes | None = None
        self.chunked = False
        self.no_body = status in _NO_BODY
        self.finished = False

    async def prepare(self, request: Any) -> None:
        self.chunked = self.content_length is None and not self.no_body
        framing = (
            [] if self.no_body else
            [("Transfer-Encoding", "chunked")] if self.chunked else
            [("Content-Length", str(self.content_length))]
        )  # fmt: skip
        self.head = encode_head(
            self.status, self.reason, self.headers, framing, self.door.close_after
        )

    def frame(self, data: bytes) -> bytes:
        if self.no_body:
            return b""
        if not self.chunked or not data:
            return data
        return b"%x\r\n%b\r\n" % (len(data), data)

    async def write(self, data: bytes) -> None:
        out = self.frame(data)
        if self.head is not None:
            out, self.head = self.head + out, None
        if out:
            self.door.send(out)
            await self.door.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        out = self.frame(data)
        if self.chunked:
            out += b"0\r\n\r\n"
        if self.head is not None:
            out, self.head = self.head + out, None
        self.door.send(out)
        self.finished = True
        await self.door.drain()


def whole_answer(response: web.Response, close: bool) -> bytes:
    """The bytes of an answer built whole, as aiohttp would send them."""
    body = response.body
    assert body is None or isinstance(body, bytes), "whole answers carry bytes"
    body = body or b""
    status = response.status
    framing: list[tuple[str, str]] = []
    if status in _NO_BODY:
        body = b""
    else:
        framing.append(("Content-Length", str(len(body))))
        if body and "Content-Type" not in response.headers:
            framing.append(("Content-Type", "application/octet-stream"))
    head = encode_head(status, response.reason, response.headers, framing, close)
    return head + body


# The Date header, formatted once a second.
_date: tuple[int, str] = (0, "")


def http_date() -> str:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


def encode_head(
    status: int,
    reason: str,
    headers: CIMultiDict[str],
    framing: list[tuple[str, str]],
    close: bool,
) -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [
        f"{name}: {value}"
        for name, value in headers.items()
        if name.lower() not in _FRAMING
    ]
    lines += [f"{name}: {value}" for name, value in framing]
    if "Date" not in headers:
        lines.append(f"Date: {http_date()}")
    if close:
        lines.append("Connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8")


_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


class FrontSite(web.BaseSite):
    """A listening socket whose connections start at a ``Door``."""

    def __init__(
        self,
        runner: web.AppRunner,
        *,
        host: str | None = None,
        port: int = 0,
        sock: socket.socket | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._sock = sock
        self._front: Front | None = None

    @property
    def front(self) -> Front | None:
        """What the site's doors share, once started."""
        return self._front

    @property
    def name(self) -> str:
        if self._sock is not None:
            host, port = self._sock.getsockname()[:2]
            return f"http://{host}:{port}"
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        runner = self._runner
        assert isinstance(runner, web.AppRunner)
        assert runner.server is not None
        self._front = Front(runner.app, runner.server)
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(
                self._front, sock=self._sock, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                self._front,
                self._host,
                self._port,
                backlog=self._backlog,
                reuse_address=True,
            )

    async def stop(self) -> None:
        """Stop listening and taking calls; the runner drains those started."""
        if self._server is not None:
            self._server.close()
        if self._front is not None:
            self._front.shutdown()
        await super().stop()
