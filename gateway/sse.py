"""
The incremental scanner that reads usage out of a relayed event stream.

The proxy hands every read of an upstream ``text/event-stream`` body to
``StreamScanner.feed`` and relays what it returns. The scanner splits the bytes
into events at blank lines (``\\n``, ``\\r\\n`` or ``\\r`` line ends, as the SSE
format allows) without copying them, and looks at each event with ``bytes.find``
only. An event is JSON-parsed only when those checks say it can carry usage:
a ``"usage"`` key followed by an object (chat and legacy completions), or a
final ``response.*`` event (the Responses API). A stream of a few hundred chunks
is therefore parsed once or twice.

Most reads need less even than that. Once the model is known, a read with LF
line ends only is looked at whole: the events before its first ``[DONE]`` or
usage token are plain chunks, so they are counted (blank lines and data lines,
with ``bytes.count``) instead of split and scanned one by one. A read that is
one whole event on one ``data:`` line, when nothing is held, skips the
general path's setup: a plain chunk needs the usage search alone, and any
other (the first, the usage chunk, ``[DONE]``) is scanned as it is. A read
of whole chat events, nothing held (a fast upstream's whole stream, often),
is searched once for ``[DONE]`` and once for usage objects, and only the
events those land in are read. This reads the same as scanning every event
because no token holds a line end (each lies within one event), blank lines
are counted the way ``_event_ends`` pairs them (a stretch ending inside a
longer run of line ends is left to it), and a read with a CR, an event over
the cap or an unknown model takes the full path.

Where usage sits:

- chat and legacy completions: the last chunk with a non-null ``usage``. OpenAI
  sends it on an extra chunk with ``"choices": []`` just before ``[DONE]``;
  DeepSeek puts it on the chunk that carries ``finish_reason``.
- Responses API: ``response.usage`` of ``response.completed``,
  ``response.incomplete`` or ``response.failed``. That event repeats the whole
  output, a generated image's base64 included, so it may pass the cap on an
  event's size: then its usage is read from a window at its end, where the
  response's usage and tier are, and its type from its first bytes.

The event that carries the usage also names the service tier that served the
call (OpenAI's ``service_tier``), which prices it, and a final Responses event
lists the built-in tool calls billed per call (web and file searches); both are
read from the same parse, so no other event is parsed for them. A final event
past the cap is read from its window only, where its tool calls are not.

With ``hide_usage_chunk`` (the gateway asked for usage the client did not ask
for) the usage-only chunk is removed whole, and the ``,"usage":null`` that
asking adds to every other chunk is cut out, so the client receives the bytes
it would have received without the gateway. Nothing else is ever changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import orjson

from gateway.usage import (
    MAX_MODEL_CHARS,
    Usage,
    count_tool_calls,
    model_name,
    service_tier_name,
    usage_from_object,
)

log = logging.getLogger(__name__)

# An event longer than this is passed through unscanned, so a stream that never
# sends a blank line cannot make the gateway hold an unbounded buffer.
MAX_EVENT_BYTES = 1 << 20
# Of a Responses event past the cap, the first bytes (its event line and type)
# and a window at its end (the response's last keys: tier, usage) are kept.
_HEAD_BYTES = 4096
FINAL_WINDOW_BYTES = 256 * 1024
# Of a JSON answer too large to hold whole, the first bytes are kept for its
# model (chat names it before the choices; a Responses answer after its
# instructions, which may be long).
BODY_HEAD_BYTES = 16 * 1024

_FINAL_TYPES = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)
_FINAL_TOKENS = tuple(f'"{name}"'.encode() for name in sorted(_FINAL_TYPES))

# What include_usage adds to every chunk but the last. Inside a JSON string a
# quote is escaped, so an unescaped match is always a real key.
_NULL_USAGE = b',"usage":null'
_USAGE_KEY = b'"usage"'
_MODEL_KEY = b'"model"'
_TIER_KEY = b'"service_tier"'
_DONE = b"[DONE]"
# Bytes that may sit between a JSON key and its value.
_KEY_GAP = b" \t:"
_LINE_ENDS = b"\r\n"
_LF, _CR, _QUOTE, _BRACE = 10, 13, 34, 123


class StreamScanner:
    """
    Watch one event stream for its usage, model and end.

    ``feed`` returns the bytes to relay now and never raises: an event it cannot
    read is relayed unchanged and ignored. Without ``hide_usage_chunk`` it
    returns its argument itself. With it, it holds back at most the incomplete
    event at the end of what it was fed, which ``close`` hands back.
    """

    __slots__ = (
        "_broken",
        "_closed",
        "_head",
        "_oversized",
        "_tail",
        "chunks_seen",
        "finished",
        "hide_usage_chunk",
        "model",
        "responses_api",
        "service_tier",
        "usage",
    )

    def __init__(
        self, *, responses_api: bool = False, hide_usage_chunk: bool = False
    ) -> None:
        self.responses_api = responses_api
        # The gateway adds include_usage to chat completions only; a Responses
        # stream always carries its usage, so there is nothing to hide there.
        self.hide_usage_chunk = hide_usage_chunk and not responses_api
        # The last usage reported, None until one arrives.
        self.usage: Usage | None = None
        # The model the stream reports, from the first event that names one.
        self.model: str | None = None
        # The tier that served the call, as the event with the usage names it.
        self.service_tier: str | None = None
        # True once [DONE] or a final response.* event was seen.
        self.finished = False
        # Data events seen, [DONE] excepted: about one output token each.
        self.chunks_seen = 0
        # The bytes of the incomplete event at the end of the stream so far.
        # With hide_usage_chunk they are not relayed yet, unless _oversized.
        self._tail = bytearray()
        # The current event passed MAX_EVENT_BYTES: it is relayed as it comes,
        # not scanned, and _tail keeps only its last two bytes (of a Responses
        # event, its last FINAL_WINDOW_BYTES, and _head its first bytes).
        self._oversized = False
        self._head = b""
        self._broken = False
        self._closed = False

    def feed(self, data: bytes) -> bytes:
        """Scan one read of the stream; return the bytes to relay now."""
        if self._broken or self._closed or not data:
            return data
        held = len(self._tail)
        is_holding = self.hide_usage_chunk and not self._oversized
        try:
            if not held:
                out = self._one_event(data)
                if out is not None:
                    return out
            if self.hide_usage_chunk:
                # The nulls go from the relayed bytes anyway; cut first, the
                # search for a usage object meets only real ones.
                data = data.replace(_NULL_USAGE, b"")
            out = None if held else self._whole_events(data)
            if out is None:
                out = self._feed(data)
            if self.hide_usage_chunk:
                # A null cut in two by a read boundary is whole in *out* now.
                # Returns *out* itself when there is nothing to cut.
                out = out.replace(_NULL_USAGE, b"")
            return out
        # A bug here must cost the call its usage, not its response: relay
        # what was held and everything after it unscanned.
        except Exception:
            log.exception("stream scanner failed, relaying the rest unscanned")
            self._broken = True
            if is_holding:
                data = bytes(self._tail[:held]) + data
            self._tail = bytearray()
            return data

    def close(self) -> bytes:
        """End of stream: scan the last, unterminated event; return what was held."""
        if self._closed:
            return b""
        self._closed = True
        tail, self._tail = self._tail, bytearray()
        if self._broken or not tail:
            return b""
        if self._oversized:
            if self.responses_api:
                try:
                    self._take_final_window(tail, 0, len(tail))
                except Exception:
                    log.exception("stream scanner failed on the last event")
            return b""
        try:
            dropped = self._scan(tail, 0, len(tail))
        except Exception:
            log.exception("stream scanner failed on the last event")
            dropped = False
        if not self.hide_usage_chunk or dropped:
            return b""

        return bytes(tail).replace(_NULL_USAGE, b"")

    def _feed(self, data: bytes) -> bytes:
        tail = self._tail
        if tail:
            # A blank line may straddle the reads; one held back at the very
            # end (a CR that may turn out to be CRLF) is found again too.
            start = max(0, len(tail) - 2)
            tail += data
            buf: bytes | bytearray = tail
        else:
            start = 0
            buf = data
        # Bytes before relayed_to were relayed by an earlier feed.
        relayed_to = len(buf) - len(data) if self._oversized else 0
        kept: list[bytes | bytearray] = []
        pos = 0
        if not self._oversized and buf.find(b"\r", start) == -1:
            if self.model is None:
                # Every event is read until one names the model.
                for end in _event_ends(buf, start):
                    if self._scan(buf, pos, end) and self.hide_usage_chunk:
                        kept.append(buf[relayed_to:pos])
                        relayed_to = end
                    pos = end
                    if self.model is not None:
                        break
            pos = self._skip_plain_events(buf, pos, start)
            if pos == len(buf) and buf is data and not kept:
                return data  # whole plain events: nothing to hold or drop
        for end in _event_ends(buf, max(start, pos)):
            if self._oversized:
                self._oversized = False
                if self.responses_api:
                    self._take_final_window(buf, max(0, end - FINAL_WINDOW_BYTES), end)
            elif self._scan(buf, pos, end) and self.hide_usage_chunk:
                kept.append(buf[relayed_to:pos])
                relayed_to = end
            pos = end

        rest = len(buf) - pos
        if self._oversized or rest > MAX_EVENT_BYTES:
            if not self._oversized:
                log.debug("stream event over %d bytes, not scanned", MAX_EVENT_BYTES)
                self._oversized = True
                if self.responses_api:
                    self._head = bytes(buf[pos : pos + _HEAD_BYTES])
            hold_from = len(buf)
            window = FINAL_WINDOW_BYTES if self.responses_api else 2
            keep_from = max(0, len(buf) - window)
        else:
            hold_from = keep_from = pos

        if not self.hide_usage_chunk:
            out: bytes = data
        elif not kept and relayed_to == 0 and hold_from == len(buf) and buf is data:
            out = data
        else:
            kept.append(buf[relayed_to:hold_from])
            out = b"".join(kept)
        if buf is tail:
            del tail[:keep_from]
        elif keep_from < len(buf):
            self._tail = bytearray(memoryview(data)[keep_from:])

        return out

    def _one_event(self, data: bytes) -> bytes | None:
        """
        The usual read of a chat stream, when nothing is held: one whole event
        on one ``data:`` line (LF line ends). Read it and return what to relay;
        None for any other read, which takes the paths below.

        A ``data: {`` chunk without a usage object, once the model is known,
        is only counted (``_skip_plain_events`` reads such a read the same
        way, after more setup than most reads need). Any other such event (the
        first, the usage chunk, ``[DONE]``) goes to ``_scan`` as it is: the
        splitting and holding of ``_feed`` would find the one event this read
        is and return it or, for a usage chunk to hide, nothing.
        """
        if (
            self.responses_api
            or self._oversized
            or not data.startswith(b"data:")
            or data.find(b"\n") != len(data) - 2
            or not data.endswith(b"\n\n")
            # find, not ``in``: a bytes ``in`` first tries its operand as an
            # int, which costs it twice the time of the search here.
            or data.find(b"\r") != -1
        ):
            return None
        out = data.replace(_NULL_USAGE, b"") if self.hide_usage_chunk else data
        if (
            self.model is not None
            and out.startswith(b"data: {")
            and _find_usage_object(out, 0, len(out)) == -1
        ):
            self.chunks_seen += 1
            return out
        if self._scan(out, 0, len(out)) and self.hide_usage_chunk:
            return b""
        return out

    def _whole_events(self, data: bytes) -> bytes | None:
        """
        A chat stream read of whole events, nothing held: what a fast upstream
        sends, up to the whole stream in one read. Read it and return what to
        relay; None for any other read, which takes ``_feed``.

        It reads what ``_feed`` would, with a search per kind of token
        instead of a pass per event: the events are exactly the stretches
        between the read's blank lines (LF line ends, no run of three), each
        opens with its data line, and the first names the model (or it is
        known), so only a ``[DONE]`` line or a usage object can make an event
        more than a chunk to count. No token holds a line end, so the event a
        token lies in is the one its nearest blank lines bound.
        """
        if (
            self.responses_api
            or self._oversized
            or not data.endswith(b"\n\n")
            or data.startswith(b"\n")
            or data.find(b"\r") != -1
            or data.find(b"\n\n\n") != -1
        ):
            return None
        events = data.count(b"\n\n")
        if data.startswith(b"data") + data.count(b"\n\ndata") != events:
            return None
        if self.model is None:
            first_end = data.find(b"\n\n") + 2
            if data.find(_DONE, 0, first_end) != -1:
                return None
            model = _string_after_key(data, _MODEL_KEY, 0, first_end)
            if model is None:
                return None
            self.model = model

        # Searched on from each event's end, *found* is always the first
        # [DONE] of its event, the one _is_done_event would look at.
        done_events = 0
        found = data.find(_DONE)
        while found != -1:
            start, end = _event_around(data, found)
            done_events += _is_done_line(data, start, found, end)
            found = data.find(_DONE, end)
        if done_events:
            self.finished = True
        self.chunks_seen += events - done_events

        kept: list[bytes] = []
        relayed_to = 0
        found = _find_usage_object(data, 0, len(data))
        while found != -1:
            start, end = _event_around(data, found)
            if not _is_done_event(data, start, end):
                obj = _parse_event(data, start, end)
                if (
                    isinstance(obj, dict)
                    and self._take_chunk(obj)
                    and self.hide_usage_chunk
                ):
                    kept.append(data[relayed_to:start])
                    relayed_to = end
            found = _find_usage_object(data, end, len(data))
        if not kept:
            return data
        kept.append(data[relayed_to:])

        return b"".join(kept)

    def _skip_plain_events(self, buf: bytes | bytearray, pos: int, start: int) -> int:
        """
        Count the plain whole events from *pos* (an event's start) on; return
        where they end. LF line ends only; blank lines are searched from
        *start* at the earliest.

        A plain event has no ``[DONE]`` and no usage (a ``"usage"`` object,
        or a final ``response.*`` type): once the model is known, all
        ``_scan`` would do with it is count it. No token holds a line end, so
        each lies within one event, and the events before the first token
        found are plain.
        """
        if self.model is None:
            return pos
        first = max(pos, start)
        stop = buf.rfind(b"\n\n", first) + 2
        if stop == 1:
            return pos
        if self.responses_api:
            tokens: tuple[bytes, ...] = (_DONE, *_FINAL_TOKENS)
        elif buf.find(b"\n", pos) == stop - 2 and buf.startswith(b"data: {", pos):
            # The usual read: one chunk on one line. Any [DONE] in it lies
            # inside the JSON, not alone on a data line, so only usage counts.
            if _find_usage_object(buf, pos, stop) != -1:
                return pos
            self.chunks_seen += 1
            return stop
        else:
            tokens = (_DONE,)
        for token in tokens:
            found = buf.find(token, pos, stop)
            if found != -1:
                stop = found
        if not self.responses_api:
            found = _find_usage_object(buf, pos, stop)
            if found != -1:
                stop = found
        last = buf.rfind(b"\n\n", first, stop)
        # A blank line inside a longer run of line ends could pair differently
        # from how _event_ends pairs them: leave that to it.
        if last == -1 or (last > 0 and buf[last - 1] == _LF):
            return pos
        self.chunks_seen += _count_data_events(buf, pos, first, last + 2)
        return last + 2

    def _scan(self, buf: bytes | bytearray, start: int, end: int) -> bool:
        """Read one whole event; return True if it is a usage chunk to hide."""
        if not _is_data_event(buf, start, end):
            return False  # a comment, keep-alive or event-name-only block
        if _is_done_event(buf, start, end):
            self.finished = True
            return False
        self.chunks_seen += 1
        if self.model is None:
            self.model = _string_after_key(buf, _MODEL_KEY, start, end)

        if self.responses_api:
            if not any(buf.find(token, start, end) != -1 for token in _FINAL_TOKENS):
                return False
        elif not _has_usage_object(buf, start, end):
            return False
        obj = _parse_event(buf, start, end)
        if not isinstance(obj, dict):
            return False
        if self.responses_api:
            self._take_response(obj)
            return False

        return self._take_chunk(obj)

    def _take_chunk(self, obj: dict) -> bool:
        usage = usage_from_object(obj.get("usage"))
        if usage is None:
            return False
        self.usage = usage
        self.service_tier = service_tier_name(obj.get("service_tier"))
        if self.model is None:
            self.model = model_name(obj.get("model"))

        return obj.get("choices") == []

    def _take_response(self, obj: dict) -> None:
        kind = obj.get("type")
        if not isinstance(kind, str) or kind not in _FINAL_TYPES:
            return
        self.finished = True
        response = obj.get("response")
        if not isinstance(response, dict):
            return
        usage = usage_from_object(response.get("usage"))
        if usage is not None:
            count_tool_calls(usage, response.get("output"))
            self.usage = usage
        # response.created names the tier asked for ("auto"), the end the one used.
        self.service_tier = service_tier_name(response.get("service_tier"))
        if self.model is None:
            self.model = model_name(response.get("model"))

    def _take_final_window(self, buf: bytes | bytearray, start: int, end: int) -> None:
        """
        Read a Responses event past the cap from its head and the window
        ``buf[start:end]`` at its end: if it is a final ``response.*`` event,
        the last usage object there is the response's, as is the last tier.
        """
        head, self._head = self._head, b""
        window = bytes(buf[start:end])
        if not _is_data_event(head, 0, len(head)):
            return
        self.chunks_seen += 1
        if not any(t in head or t in window for t in _FINAL_TOKENS):
            return
        self.finished = True
        if self.model is None:
            self.model = _string_after_key(head, _MODEL_KEY, 0, len(head))
        usage = _last_usage(window)
        if usage is None:
            return
        self.usage = usage
        self.service_tier = _last_string(window, _TIER_KEY)


class BodyTail:
    """
    Watch a JSON answer too large to hold whole for its usage, model and tier.

    ``feed`` returns what it is given; it keeps the first ``BODY_HEAD_BYTES``
    (where the model is, in chat answers) and the last ``FINAL_WINDOW_BYTES``
    (where the usage and tier are, in every OpenAI-style answer: after the
    choices, the vectors or the output).
    """

    __slots__ = ("_window", "head", "size")

    def __init__(self) -> None:
        self.head = b""
        self.size = 0
        self._window = bytearray()

    def feed(self, data: bytes) -> bytes:
        self.size += len(data)
        if len(self.head) < BODY_HEAD_BYTES:
            self.head += data[: BODY_HEAD_BYTES - len(self.head)]
        window = self._window
        window += data
        # Cut back only once it is twice its size: each byte is copied about once.
        if len(window) > 2 * FINAL_WINDOW_BYTES:
            del window[:-FINAL_WINDOW_BYTES]
        return data

    def read(self) -> tuple[Usage | None, str | None, str | None]:
        """Return the usage, model and tier the answer's ends report."""
        window = bytes(self._window[-FINAL_WINDOW_BYTES:])
        model = _string_after_key(self.head, _MODEL_KEY, 0, len(self.head))
        if model is None:
            model = _last_string(window, _MODEL_KEY)
        return _last_usage(window), model, _last_string(window, _TIER_KEY)


def _last_usage(window: bytes) -> Usage | None:
    """Return the usage of the last ``"usage"`` object in *window*, if any."""
    found = _find_last_usage_object(window)
    if found == -1:
        return None
    text = window[window.index(b"{", found) :].decode("utf-8", "replace")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    return usage_from_object(obj)


def _last_string(window: bytes, key: bytes) -> str | None:
    """Return the string value of the last *key* in *window*, if any."""
    at = window.rfind(key)
    return None if at == -1 else _string_after_key(window, key, at, len(window))


def _event_ends(buf: bytes | bytearray, start: int) -> Iterator[int]:
    """
    Yield the end of each whole event in *buf*, just past its blank line.

    A blank line is a line end followed by another: LF LF, LF CR, CR CR (and
    CRLF variants, which contain one of those). A CR that ends *buf* is not
    taken as a line end yet, since the next read may start with its LF.
    """
    if buf.find(b"\r", start) == -1:
        i = buf.find(b"\n\n", start)
        while i != -1:
            yield i + 2
            i = buf.find(b"\n\n", i + 2)
        return

    size = len(buf)
    # The next match of each pattern, refreshed only once passed, so that a
    # pattern absent from a CRLF stream is not searched for again per event.
    nexts = [buf.find(p, start) for p in (b"\n\n", b"\n\r", b"\r\r")]
    while True:
        found = [i for i in nexts if i != -1]
        if not found:
            return
        i = min(found)
        end = i + 2
        if buf[i + 1] == _CR:
            if end == size:
                return
            if buf[end] == _LF:
                end += 1
        yield end
        for k, pattern in enumerate((b"\n\n", b"\n\r", b"\r\r")):
            if nexts[k] != -1 and nexts[k] < end:
                nexts[k] = buf.find(pattern, end)


def _event_around(buf: bytes, at: int) -> tuple[int, int]:
    """The bounds of the event holding *at*, in a read of whole LF events."""
    start = buf.rfind(b"\n\n", 0, at)
    start = 0 if start == -1 else start + 2
    return start, buf.find(b"\n\n", at) + 2


def _is_done_event(buf: bytes | bytearray, start: int, end: int) -> bool:
    """
    Whether the event ``buf[start:end]`` ends the stream: its first ``[DONE]``
    is the whole value of a data line (a later one does not count).
    """
    done = buf.find(_DONE, start, end)
    return done != -1 and _is_done_line(buf, start, done, end)


def _is_done_line(buf: bytes | bytearray, start: int, at: int, end: int) -> bool:
    """Whether ``[DONE]`` at *at* is the whole value of a data line."""
    after = at + 6
    if after < end and buf[after] not in _LINE_ENDS:
        return False
    if buf.endswith(b"data: ", start, at):
        head = at - 6
    elif buf.endswith(b"data:", start, at):
        head = at - 5
    else:
        return False

    return head == start or buf[head - 1] in _LINE_ENDS


def _is_data_event(buf: bytes | bytearray, start: int, end: int) -> bool:
    """Whether the event ``buf[start:end]`` has a data line."""
    return (
        buf.startswith(b"data", start, end)
        or buf.find(b"\ndata", start, end) != -1
        or buf.find(b"\rdata", start, end) != -1
    )


def _count_data_events(buf: bytes | bytearray, start: int, first: int, end: int) -> int:
    """
    Count the events of ``buf[start:end]`` that have a data line: whole
    events, LF line ends, the last not in a longer run of them; blank lines
    are searched from *first*.
    """
    events = buf.count(b"\n\n", first, end)
    if events == 1:
        return _is_data_event(buf, start, end)
    # The usual case: every event opens with its data line.
    data_first = buf.startswith(b"data", start) + buf.count(b"\n\ndata", first, end)
    if data_first == events:
        return events
    count = 0
    blank = buf.find(b"\n\n", first)
    while start < end:
        count += _is_data_event(buf, start, blank + 2)
        start = blank + 2
        blank = buf.find(b"\n\n", start)
    return count


def _find_usage_object(buf: bytes | bytearray, start: int, end: int) -> int:
    """Return where the first ``"usage"`` key with an object value is, or -1."""
    # Inside a JSON string every quote is escaped, so a match is a real key.
    i = buf.find(_USAGE_KEY, start, end)
    while i != -1:
        j = i + 7
        # What include_usage puts on every chunk but the last, passed quickly.
        if buf.startswith(b":null", j, end):
            i = buf.find(_USAGE_KEY, j + 5, end)
            continue
        if _opens_object(buf, j, end):
            return i
        i = buf.find(_USAGE_KEY, j, end)
    return -1


def _find_last_usage_object(buf: bytes) -> int:
    """Return where the last ``"usage"`` key with an object value is, or -1."""
    i = buf.rfind(_USAGE_KEY)
    while i != -1 and not _opens_object(buf, i + 7, len(buf)):
        i = buf.rfind(_USAGE_KEY, 0, i)
    return i


def _opens_object(buf: bytes | bytearray, after_key: int, end: int) -> bool:
    """Whether the value after a key ending at *after_key* is an object."""
    j = after_key
    while j < end and buf[j] in _KEY_GAP:
        j += 1
    return j < end and buf[j] == _BRACE


def _has_usage_object(buf: bytes | bytearray, start: int, end: int) -> bool:
    return _find_usage_object(buf, start, end) != -1


def _string_after_key(
    buf: bytes | bytearray, key: bytes, start: int, end: int
) -> str | None:
    """Return the plain string value of the first *key* in an event, if any."""
    i = buf.find(key, start, end)
    if i == -1:
        return None
    j = i + len(key)
    while j < end and buf[j] in _KEY_GAP:
        j += 1
    if j >= end or buf[j] != _QUOTE:
        return None
    close = buf.find(b'"', j + 1, min(end, j + 2 + MAX_MODEL_CHARS))
    if close == -1:
        return None
    raw = buf[j + 1 : close]
    # An escaped name is left to the parsed usage chunk.
    if b"\\" in raw:
        return None
    try:
        return model_name(raw.decode())
    except UnicodeDecodeError:
        return None


def _parse_event(buf: bytes | bytearray, start: int, end: int) -> object:
    """Return the JSON of an event's data lines joined, or None."""
    if (
        buf.startswith(b"data:", start, end)
        and buf.find(b"\n", start, end) == end - 2
        and buf[end - 1] == _LF
        and buf.find(b"\r", start, end) == -1
    ):
        # One data line, as chunks come: its value is the JSON.
        value = start + 5
        if buf[value] == 32:  # the one space the format lets follow the colon
            value += 1
        try:
            return orjson.loads(buf[value : end - 2])
        except orjson.JSONDecodeError:
            return None
    block = bytes(buf[start:end])
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    parts = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
        elif line == b"data":
            parts.append(b"")
    try:
        return orjson.loads(b"\n".join(parts))
    except orjson.JSONDecodeError:
        return None
