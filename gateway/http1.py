"""
The HTTP/1.1 client the proxy talks to its upstreams with.

It does what a relay needs and no more: one keep-alive pool per upstream, a
request written in one send, the answer's head parsed once, its body handed
on as it arrives (``Content-Length``, chunked, or until the upstream closes),
a connect timeout, a deadline for the answer's head and a limit on the
upstream's silence while its body comes, and errors that say whether the
request ever left. Bytes are never decoded or decompressed.

Through an HTTP proxy (``ForwardProxy``), an https upstream is reached by a tunnel
(``CONNECT host:port``, then TLS with the upstream inside it) and an http one
by requests in absolute form, both with the proxy's ``Proxy-Authorization``
when its URL holds a user. A tunnel lives as long as its keep-alive connection.

aiohttp's ``ClientSession`` does all this and much more (cookies, redirects,
proxies, tracing, multipart), and paid for it on every call: a bare relay
spent 2.3 times the CPU per call with it than with a client like this one
(``benchmarks/NOTES.md``), which made it the largest cost of the gateway.

Errors, all ``ClientError``:

    ClientError
    ├── CannotConnect         nothing was sent
    │   └── ConnectTimeout    (also TimeoutError)
    ├── Disconnected          the upstream closed the connection mid-answer
    ├── BadResponse           not an HTTP/1.x answer that can be relayed
    ├── InvalidRequestHeader  a header that cannot be sent (a line break)
    └── ResponseTimeout       no head by the deadline, or silent that long
                              mid-body (TimeoutError)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from time import monotonic
from urllib.parse import unquote, urlsplit

# Past this, an answer's head is refused: no real upstream sends one so big.
MAX_HEAD_BYTES = 64 * 1024
# A chunk-size line, extensions included.
MAX_CHUNK_LINE_BYTES = 4096
# Past this a read goes chunk by chunk: splitting it would scan its data.
MAX_WHOLE_CHUNKS_READ = 64 * 1024
# Unread body past this pauses reading from the upstream until it is read.
PAUSE_BYTES = 256 * 1024
# Idle connections older than this are closed instead of reused: servers drop
# theirs after a while, and a request sent on a dropped one fails.
IDLE_TIMEOUT_S = 15.0
# Methods whose request carries Content-Length even when the body is empty.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# "HTTP/1.x NNN reason": the reason may be empty, and may hold any visible byte.
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n\x00]*))?")
# Header lines: a token name (RFC 9110 5.6.2), a colon, a value without line
# breaks or NUL; no leading whitespace, so no obsolete line folding.
_FIELD_LINES = re.compile(
    rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\r\n\x00]*"
    rb"(?:\r\n[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\r\n\x00]*)*"
)
HEX_DIGITS = b"0123456789abcdefABCDEF"
# The headers that decide how the body is framed and the connection kept.
_FRAMING_NAMES = frozenset(
    {"content-length", "transfer-encoding", "content-type", "connection"}
)
# Answers that never have a body (RFC 9112 6.3).
NO_BODY_STATUSES = frozenset({204, 304})


class ClientError(Exception):
    """An upstream call failed; the subclass says how far it got."""


class CannotConnect(ClientError):
    """No connection could be made: the request was never sent."""


class ConnectTimeout(CannotConnect, TimeoutError):
    """The connection was not made in time: the request was never sent."""


class Disconnected(ClientError):
    """The upstream closed the connection before its answer was whole."""


class BadResponse(ClientError):
    """The upstream's bytes are not an HTTP/1.x answer that can be relayed."""


class InvalidRequestHeader(ClientError):
    """A request header holds a line break, so it cannot be sent."""


class ResponseTimeout(ClientError, TimeoutError):
    """The call ran past its whole-call deadline."""


@dataclass(slots=True)
class Head:
    """What an answer's head says, as ``parse_head`` read it."""

    status: int
    reason: str
    # Every header as sent, names in their case, in order.
    headers: list[tuple[str, str]]
    # The media type, lower case and without parameters ("" when absent).
    content_type: str = ""
    content_length: int | None = None
    chunked: bool = False
    # A Transfer-Encoding whose last coding is not chunked: read until close.
    other_encoding: bool = False
    # Lower-case tokens of the Connection header(s).
    connection: frozenset[str] = frozenset()
    http10: bool = False

    @property
    def keep_alive(self) -> bool:
        if self.http10:
            return "keep-alive" in self.connection
        return "close" not in self.connection


def parse_head(head: bytes) -> Head:
    """
    Return the parsed head of an answer (status line and headers, no blank line).

    Raise BadResponse for anything that is not a plain HTTP/1.x head: a bad
    status line, a header without a name or colon, folded lines, stray line
    breaks or NUL bytes, and Content-Length values that disagree.
    """
    status_line, _, fields = head.partition(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise BadResponse(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    # One pass checks every header line; then they are only split.
    if fields and _FIELD_LINES.fullmatch(fields) is None:
        raise BadResponse(f"malformed header lines: {fields[:80]!r}")
    version, code, reason = match.groups()
    parsed = Head(
        status=int(code),
        reason=reason.decode("latin-1") if reason else "",
        headers=[],
        http10=version == b"0",
    )
    if not fields:
        return parsed
    headers = parsed.headers
    lengths: set[str] = set()
    connection: list[str] = []
    for line in fields.decode("utf-8", "replace").split("\r\n"):
        name, _, value = line.partition(":")
        value = value.strip(" \t")
        headers.append((name, value))
        lower = name.lower()
        if lower not in _FRAMING_NAMES:
            continue
        if lower == "content-length":
            lengths.update(part.strip(" \t") for part in value.split(","))
        elif lower == "transfer-encoding":
            codings = [c.strip().lower() for c in value.split(",") if c.strip()]
            parsed.chunked = bool(codings) and codings[-1] == "chunked"
            parsed.other_encoding = not parsed.chunked
        elif lower == "content-type":
            parsed.content_type = value.partition(";")[0].strip().lower()
        else:
            connection.extend(t.strip().lower() for t in value.split(","))
    if lengths:
        if len(lengths) != 1:
            raise BadResponse("Content-Length values disagree")
        (length,) = lengths
        if not (length.isascii() and length.isdigit()):
            raise BadResponse(f"Content-Length is not a number: {length[:40]!r}")
        parsed.content_length = int(length)
    if connection:
        parsed.connection = frozenset(connection)

    return parsed


# Chunk lines already read, and their sizes. An event stream's chunks come in
# a few hundred sizes at most, so a read of a chunk line is mostly one lookup
# (0.1 against 1.4 us here); past the bound, lines are checked every time.
# Only short lines are kept, so that an upstream's chunk extensions cannot
# make the store hold more than a few tens of KiB.
_CHUNK_SIZES: dict[bytes, int] = {}
MAX_CACHED_CHUNK_LINES = 1024
MAX_CACHED_CHUNK_LINE_BYTES = 24


def chunk_size(line: bytes) -> int:
    """Return the size a chunk line gives; raise BadResponse unless it is hex."""
    size = _CHUNK_SIZES.get(line)
    if size is not None:
        return size
    digits = line.partition(b";")[0].rstrip(b" \t") if b";" in line else line
    # int() alone would take "0x1f", "+1f", "1_f" and spaces.
    if not digits or len(digits) > 16 or digits.translate(None, HEX_DIGITS):
        raise BadResponse(f"bad chunk size: {line[:40]!r}")
    size = int(digits, 16)
    if (
        len(line) <= MAX_CACHED_CHUNK_LINE_BYTES
        and len(_CHUNK_SIZES) < MAX_CACHED_CHUNK_LINES
    ):
        _CHUNK_SIZES[line] = size
    return size


# How an answer's body is framed.
NO_BODY, BY_LENGTH, CHUNKED, UNTIL_CLOSE = range(4)
# Where the chunked decoder is.
SIZE_LINE, CHUNK_DATA, CHUNK_END, TRAILERS = range(4)


class Reply:
    """An upstream's answer: its head at once, its body as it arrives."""

    __slots__ = (
        "_conn",
        "_done",
        "_error",
        "_pieces",
        "_released",
        "_size",
        "_waiter",
        "_whole",
        "connection",
        "content_length",
        "content_type",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, conn: Connection, head: Head) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.content_type = head.content_type
        self.content_length = head.content_length
        self.connection = head.connection
        self._conn = conn
        self._pieces: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        # Read whole: reading never pauses, there is one reader waiting for all.
        self._whole = False

    @property
    def at_eof(self) -> bool:
        """Whether the whole body has arrived and been read."""
        return self._done and not self._pieces

    @property
    def ready(self) -> bool:
        """Whether ``readany`` gives bytes or the end at once: no wait, no error."""
        return bool(self._pieces) or self._done

    async def readany(self) -> bytes:
        """Return the body bytes that arrived since the last read; b"" at the end."""
        while not self._pieces:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            await self._wait()
        pieces = self._pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._size = 0
        self._conn.resume()

        return data

    async def read(self) -> bytes:
        """Return the whole body, once it has all arrived."""
        self._whole = True
        self._conn.resume()
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        if self._error is not None:
            raise self._error
        data = b"".join(self._pieces)
        self._pieces.clear()
        self._size = 0

        return data

    def release(self) -> None:
        """Give the connection back: to the pool when the answer was read whole."""
        if self._released:
            return
        self._released = True
        self._conn.release(reusable=self._done and self._error is None)

    def close(self) -> None:
        """Drop the connection, whatever is left of the answer."""
        if not self._released:
            self._released = True
            self._conn.release(reusable=False)

    async def _wait(self) -> None:
        waiter = self._conn.loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _push(self, data: bytes) -> None:
        self._pieces.append(data)
        self._size += len(data)
        if self._size > PAUSE_BYTES and not self._whole:
            self._conn.pause()
        self._wake()

    def _end(self, error: BaseException | None = None) -> None:
        if self._done or self._error is not None:
            return
        if error is None:
            self._done = True
        else:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream; one call on it at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        # A head not yet whole; the tail of a chunk line not yet whole.
        self.head_buffer = bytearray()
        self.pending = b""
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0
        self.paused = False
        # The call in flight: waiting for its head, then reading its body.
        self.head_waiter: asyncio.Future[Reply] | None = None
        self.reply: Reply | None = None
        self.head_request = False
        self.deadline: asyncio.TimerHandle | None = None
        # When the upstream last sent a byte (or was last let send again).
        self.heard = 0.0
        self.framing = NO_BODY
        self.remaining = 0
        self.chunk_state = SIZE_LINE

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.heard = self.loop.time()
        if self.head_waiter is None and (self.reply is None or self.reply._done):
            # Bytes nobody asked for: the connection is not in a known state.
            self.keep_alive = False
            self.abort()
            return
        try:
            if self.head_waiter is not None:
                rest = self.read_head(data)
                if rest is None:
                    return
                data = rest
            self.read_body(data)
        except BadResponse as exc:
            self.fail(exc)

    def eof_received(self) -> bool:
        # Returning False closes the transport; connection_lost does the rest.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stop_deadline()
        reply = self.reply
        if self.framing == UNTIL_CLOSE and self.head_waiter is None and reply:
            reply._end()
        else:
            self.fail(Disconnected("the upstream closed the connection"), abort=False)
        self.pool.lost(self)

    # One call

    async def send(self, data: bytes, *, head_request: bool, deadline: float) -> Reply:
        """Write one request and return its answer once the head has arrived."""
        assert self.transport is not None
        self.head_request = head_request
        self.reply = None
        self.framing, self.chunk_state, self.pending = NO_BODY, SIZE_LINE, b""
        waiter: asyncio.Future[Reply] = self.loop.create_future()
        self.head_waiter = waiter
        self.deadline = self.loop.call_at(deadline, self.expire)
        self.transport.write(data)
        return await waiter

    def read_head(self, data: bytes) -> bytes | None:
        """Parse the head once it is whole; return the bytes after it, or None."""
        buffer = self.head_buffer
        # Where the blank line may start: a head that drips in is not rescanned.
        scan_from = max(0, len(buffer) - 3)
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n", scan_from)
            if end < 0 or end > MAX_HEAD_BYTES:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise BadResponse("the answer's head is too large")
                return None
            head = parse_head(bytes(buffer[:end]))
            del buffer[: end + 4]
            if head.status == 101:
                raise BadResponse("the upstream switched protocols")
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            if head.status >= 200:
                break
            scan_from = 0
        rest = bytes(buffer)
        buffer.clear()
        self.keep_alive = head.keep_alive
        if self.head_request or head.status in NO_BODY_STATUSES:
            self.framing = NO_BODY
        elif head.chunked:
            self.framing = CHUNKED
            # Both framings at once is how requests are smuggled: never reuse.
            if head.content_length is not None:
                self.keep_alive = False
        elif head.other_encoding or head.content_length is None:
            self.framing, self.keep_alive = UNTIL_CLOSE, False
        else:
            self.framing, self.remaining = BY_LENGTH, head.content_length
        reply = self.reply = Reply(self, head)
        waiter, self.head_waiter = self.head_waiter, None
        assert waiter is not None
        if not waiter.done():
            waiter.set_result(reply)

        return rest

    def read_body(self, data: bytes) -> None:
        """Hand on what *data* holds of the body; end the reply when whole."""
        reply = self.reply
        assert reply is not None
        framing = self.framing
        if framing == BY_LENGTH:
            remaining = self.remaining
            if len(data) > remaining:
                self.keep_alive = False  # bytes past the answer's end
                data = data[:remaining]
            if data:
                self.remaining = remaining = remaining - len(data)
                reply._push(data)
            if not remaining:
                self.finish()
        elif framing == CHUNKED:
            self.read_chunks(reply, data)
        elif framing == UNTIL_CLOSE:
            if data:
                reply._push(data)
        else:
            if data:
                self.keep_alive = False
            self.finish()

    def read_chunks(self, reply: Reply, data: bytes) -> None:
        """Decode what *data* holds of a chunked body (RFC 9112 7.1)."""
        if self.pending:
            # Never more than a chunk line: chunk data is handed on as it comes.
            data, self.pending = self.pending + data, b""
        if self.chunk_state == SIZE_LINE and self.whole_chunks(reply, data):
            return
        pos, size = 0, len(data)
        state, remaining = self.chunk_state, self.remaining
        out: list[bytes] = []
        while pos < size:
            if state == CHUNK_DATA:
                stop = pos + remaining
                if stop <= size:
                    out.append(data[pos:stop])
                    pos, remaining, state = stop, 0, CHUNK_END
                else:
                    out.append(data[pos:])
                    remaining -= size - pos
                    pos = size
            elif state == CHUNK_END:
                if size - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise BadResponse("a chunk does not end in CRLF")
                pos += 2
                state = SIZE_LINE
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if size - pos > MAX_CHUNK_LINE_BYTES:
                        raise BadResponse("a chunk line is too long")
                    break
                line = data[pos:eol]
                pos = eol + 2
                if state == SIZE_LINE:
                    remaining = chunk_size(line)
                    state = CHUNK_DATA if remaining else TRAILERS
                elif not line:
                    # The blank line after the last chunk and its trailers.
                    if out:
                        reply._push(out[0] if len(out) == 1 else b"".join(out))
                    if pos < size:
                        self.keep_alive = False  # bytes past the answer's end
                    self.finish()
                    return
        self.chunk_state, self.remaining = state, remaining
        if pos < size:
            self.pending = data[pos:]
        if out:
            reply._push(out[0] if len(out) == 1 else b"".join(out))

    def whole_chunks(self, reply: Reply, data: bytes) -> bool:
        """
        Decode a read of whole chunks in a few C passes; False if it is not one.

        A stream's read is mostly whole chunks, each a known size line, its
        data and CRLF. Split at every CRLF, such a read alternates size lines
        and data; when every size line gives the length of the part after it,
        the parts are the chunks that ``read_chunks`` would find one by one.
        Anything else (a chunk cut by the read, data holding a CRLF, a size
        line not seen before, trailers, bytes past the last chunk) is left to
        ``read_chunks``.
        """
        if len(data) > MAX_WHOLE_CHUNKS_READ:
            return False
        parts = data.split(b"\r\n")
        if not len(parts) & 1 or parts[-1]:
            return False
        pieces = parts[1::2]
        sizes = list(map(_CHUNK_SIZES.get, parts[:-1:2]))
        if sizes != list(map(len, pieces)):
            return False
        if 0 in sizes:
            # The last chunk: only as the read's last, with no trailers.
            if sizes.index(0) != len(sizes) - 1:
                return False
            body = b"".join(pieces)
            if body:
                reply._push(body)
            self.finish()
            return True
        if pieces:
            reply._push(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        return True

    def finish(self) -> None:
        """The answer is whole: stop its clock, and tell its reader."""
        self.stop_deadline()
        self.pending = b""
        assert self.reply is not None
        self.reply._end()

    def fail(self, error: ClientError, *, abort: bool = True) -> None:
        """End the call in flight with *error*, and drop the connection."""
        self.keep_alive = False
        self.stop_deadline()
        waiter, self.head_waiter = self.head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        elif self.reply is not None:
            self.reply._end(error)
        if abort:
            self.abort()

    def expire(self) -> None:
        # Once the head is in, the limit is on silence, as the openai client's
        # read timeout is: a stream that keeps talking runs as long as it
        # talks, and while the reader holds it paused the clock waits too.
        limit = self.pool.timeout_s
        if self.head_waiter is None and self.reply is not None:
            now = self.loop.time()
            due = (now if self.paused else self.heard) + limit
            if due > now:
                self.deadline = self.loop.call_at(due, self.expire)
                return
            error = ResponseTimeout(f"the upstream went silent for {limit:g} s")
        else:
            error = ResponseTimeout(f"the upstream did not answer in {limit:g} s")
        self.deadline = None
        self.fail(error)

    def stop_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    # Flow control and the pool

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.heard = self.loop.time()
            self.transport.resume_reading()

    def release(self, *, reusable: bool) -> None:
        """The call is over: back to the pool if it can carry another."""
        self.stop_deadline()
        self.resume()
        self.reply = None
        if reusable and self.keep_alive and not self.closed:
            self.pool.put_back(self)
        else:
            self.keep_alive = False
            self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


@dataclass(frozen=True, slots=True)
class ForwardProxy:
    """An HTTP proxy that a pool reaches its upstream through."""

    host: str
    port: int
    # "Basic <base64 of user:password>" from the URL's user info, or None.
    authorization: str | None = None

    @classmethod
    def from_url(cls, url: str) -> ForwardProxy:
        """Read ``http://[user:password@]host[:port]``; raise ValueError otherwise."""
        # The messages never quote the URL: it may hold a password.
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError("the proxy URL is not a URL") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("a proxy URL is http://[user:password@]host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("a proxy URL has no path, query or fragment")
        authorization = None
        if parts.username is not None:
            user_info = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(user_info.encode()).decode()
            authorization = f"Basic {token}"
        return cls(parts.hostname, port or 80, authorization)


class _TunnelOpening(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT; after it the bytes are TLS's."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[Head] = loop.create_future()
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end == -1:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._refuse("an answer to CONNECT over the head limit")
            return
        try:
            head = parse_head(bytes(self.buffer[:end]))
        except BadResponse as exc:
            self._refuse(f"an answer to CONNECT that is not HTTP: {exc}")
            return
        if 200 <= head.status < 300 and end + 4 != len(self.buffer):
            # The upstream speaks only once asked: nothing can follow yet.
            self._refuse("bytes after its answer to CONNECT")
            return
        self.answer.set_result(head)

    def connection_lost(self, exc: Exception | None) -> None:
        self._refuse("no answer to CONNECT before it closed the connection")

    def _refuse(self, what: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(CannotConnect(f"the proxy sent {what}"))


class Pool:
    """The keep-alive connections to one upstream, at most *max_connections*."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        connect_timeout_s: float,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        proxy: ForwardProxy | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.origin = f"{url.scheme}://{url.netloc}"
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        # The Host header: the URL's authority without any user info.
        self.host_header = url.netloc.rpartition("@")[2]
        self.ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self.ssl = ssl_context or ssl.create_default_context()
        self.proxy = proxy
        # Where a connection goes: the upstream, or the proxy in front of it.
        self.dial = (
            (self.host, self.port) if proxy is None else (proxy.host, proxy.port)
        )
        # An http upstream behind a proxy is asked in absolute form
        # ("POST http://host/v1/..."), with the proxy's credentials.
        self.absolute_form = proxy is not None and self.ssl is None
        self.proxy_lines: list[str] = []
        if proxy is not None and proxy.authorization is not None:
            self.proxy_lines.append(f"Proxy-Authorization: {proxy.authorization}")
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.idle: list[Connection] = []
        self.open_count = 0
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        self.closing = False
        self.loop = asyncio.get_running_loop()

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes = b"",
    ) -> Reply:
        """
        Send one request to *url* (on this pool's origin) and return its answer.

        The answer's head has arrived; its body is read from the reply, which
        must be released (or closed) when done with.
        """
        deadline = self.loop.time() + self.timeout_s
        data = self.encode(method, url, headers, body)
        conn = await self.acquire(deadline)
        try:
            reply = await conn.send(
                data, head_request=method == "HEAD", deadline=deadline
            )
        except BaseException:
            conn.release(reusable=False)
            raise
        if self.absolute_form and reply.status == 407:
            # The proxy's answer, not the upstream's: the request went no further.
            reply.close()
            raise CannotConnect(
                f"{self.describe()}: the proxy refused the request: 407 {reply.reason}"
            )
        return reply

    def encode(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> bytes:
        """Return the request's bytes: request line, headers, blank line, body."""
        if not url.startswith(self.origin):
            raise ValueError(f"{url!r} is not on {self.origin}")
        target = url[len(self.origin) :] or "/"
        if self.absolute_form:
            target = f"{self.origin}{target}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        if self.absolute_form:
            lines += self.proxy_lines
        lines += [f"{name}: {value}" for name, value in headers]
        if body or method in BODY_METHODS:
            lines.append(f"Content-Length: {len(body)}")
        text = "\r\n".join(lines)
        if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
            raise InvalidRequestHeader("a request header holds a line break")
        lines.append("\r\n")
        # Header values arrived as bytes decoded with surrogateescape (aiohttp's
        # parser does so); encoding them back the same way sends them unchanged.
        data = "\r\n".join(lines).encode("utf-8", "surrogateescape")

        return data + body if body else data

    async def acquire(self, deadline: float) -> Connection:
        """Return an idle connection, a new one, or the next one released."""
        now = monotonic()
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_TIMEOUT_S:
                return conn
            conn.abort()
        if self.closing:
            raise CannotConnect("the upstream pool is closed")
        if self.open_count < self.max_connections:
            return await self.connect(deadline)
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                conn = await waiter
        except BaseException as exc:
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled():
                # Handed a connection (or room for one) just as this call
                # gave up: pass it on rather than lose it.
                given = waiter.result()
                if given is not None:
                    self.put_back(given)
                else:
                    self.wake_one()
            if isinstance(exc, TimeoutError):
                raise ResponseTimeout(
                    "no upstream connection came free in time"
                ) from None
            raise
        # None: a connection closed and left room for a new one.
        return conn if conn is not None else await self.connect(deadline)

    async def connect(self, deadline: float) -> Connection:
        self.open_count += 1
        connect_by = min(deadline, self.loop.time() + self.connect_timeout_s)
        try:
            async with asyncio.timeout_at(connect_by):
                if self.proxy is not None and self.ssl is not None:
                    transport, conn = await self.open_tunnel(self.ssl)
                else:
                    transport, conn = await self.loop.create_connection(
                        lambda: Connection(self),
                        *self.dial,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl else None,
                    )
        except TimeoutError:
            self.forget()
            raise ConnectTimeout(
                f"no connection to {self.describe()} in {self.connect_timeout_s} s"
            ) from None
        except OSError as exc:
            self.forget()
            raise CannotConnect(f"cannot connect to {self.describe()}: {exc}") from exc
        except CannotConnect as exc:
            self.forget()
            raise CannotConnect(f"{self.describe()}: {exc}") from None
        except BaseException:
            self.forget()
            raise
        # uvloop may call connection_made only after this returns.
        conn.transport = transport
        return conn

    async def open_tunnel(
        self, context: ssl.SSLContext
    ) -> tuple[asyncio.BaseTransport, Connection]:
        """Ask the proxy for a tunnel to the upstream and start TLS inside it."""
        opening = _TunnelOpening(self.loop)
        transport, _ = await self.loop.create_connection(lambda: opening, *self.dial)
        try:
            host = f"[{self.host}]" if ":" in self.host else self.host
            authority = f"{host}:{self.port}"
            lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
            lines += self.proxy_lines
            transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            answer = await opening.answer
            if not 200 <= answer.status < 300:
                raise CannotConnect(
                    f"the proxy refused the tunnel: {answer.status} {answer.reason}"
                )
            conn = Connection(self)
            tls = await self.loop.start_tls(
                transport,  # type: ignore[arg-type]
                conn,
                context,
                server_hostname=self.host,
                ssl_handshake_timeout=self.connect_timeout_s,
            )
        except BaseException:
            transport.abort()  # type: ignore[attr-defined]
            raise
        if tls is None:
            raise CannotConnect("the tunnel closed during the TLS handshake")
        return tls, conn

    def describe(self) -> str:
        """The upstream's authority, and the proxy's when there is one."""
        if self.proxy is None:
            return self.host_header
        host, port = self.dial
        return f"{self.host_header} by way of proxy {host}:{port}"

    def put_back(self, conn: Connection) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if self.closing:
            conn.abort()
            return
        conn.idle_since = monotonic()
        self.idle.append(conn)

    def lost(self, conn: Connection) -> None:
        """A connection closed: its place in the pool is free again."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self.forget()

    def forget(self) -> None:
        self.open_count -= 1
        self.wake_one()

    def wake_one(self) -> None:
        """Tell the longest waiter there is room for a new connection."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Drop every idle connection; calls in flight finish on their own."""
        self.closing = True
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.abort()
