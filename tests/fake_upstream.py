"""
A fake OpenAI-compatible upstream on loopback, for tests and benchmarks.

It speaks two dialects, chosen by the requested model: OpenAI (usage on an
extra ``"choices": []`` chunk when ``stream_options.include_usage`` is set,
none otherwise) and DeepSeek (models ``deepseek-*``: usage on the chunk that
carries ``finish_reason``, ``prompt_cache_hit_tokens`` / ``_miss_tokens``).
It answers chat and legacy completions, embeddings and the Responses API, each
streamed or not, and ``GET /v1/models``.

Every answer is deterministic (fixed ids and timestamps), so a test can
compare what the gateway relayed with what a direct call returns. The token
counts it reports are the attributes ``prompt_tokens``, ``cached_tokens``,
``reasoning_tokens`` and ``completion_tokens`` (one per word of ``answer``
plus the reasoning tokens), which tests may change.

A model ``recorded:<file>`` or the header ``X-Fake-Recording: <file>``
replays a body from the recorded fixtures as it was stored (status from
``_error_<status>_`` in the name; ``.sse`` files as an event stream).

Faults are programmed per request, in order: ``fail_next`` (a status, body
and headers such as ``retry-after``), ``stall_next`` (no answer for a while),
``reset_next`` (cut the stream after some events), ``hold_next`` (stop a
stream after some events until released), ``stream_next`` (raw event-stream
bytes, malformed ones included) and ``stream_endlessly_next`` (a stream that
never ends). Every request received is kept in ``received`` (raw path,
headers, body).
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.fixtures import RECORDED

CREATED = 1_700_000_000
RECORDING_HEADER = "X-Fake-Recording"
RECORDED_MODEL_PREFIX = "recorded:"
_ERROR_STATUS = re.compile(r"_error_(\d{3})_")


@dataclass
class Received:
    method: str
    # The raw request target as it arrived, query included.
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Fault:
    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stall_s: float = 0.0
    # Cut the connection after this many stream events.
    reset_after_events: int | None = None
    # Write this many stream events, then wait for ``release`` before the rest.
    hold_after_events: int | None = None
    release: asyncio.Event | None = None
    # Answer 200 with these bytes as an event stream, one write each.
    raw_events: list[bytes] | None = None
    # Answer 200 with an event stream that repeats these bytes until cut.
    endless: bytes | None = None
    # Seconds between the endless stream's writes.
    endless_every_s: float = 0.0


class FakeUpstream:
    """The fake upstream's state and its aiohttp application (``app``)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.faults: deque[Fault] = deque()
        self.answer = "Hello from the fake upstream"
        self.prompt_tokens = 21
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        # Parts of the prompt and completion that were audio (chat only).
        self.input_audio_tokens = 0
        self.output_audio_tokens = 0
        # Built-in tool calls a Responses answer lists when the request
        # offers the tool (web_search, file_search), as OpenAI runs them.
        self.web_searches = 1
        self.file_searches = 1
        # Seconds between stream events (a slow drip when above zero).
        self.event_delay_s = 0.0
        # Streams being written right now.
        self.open_streams = 0
        # Stream events written so far, over all requests.
        self.events_written = 0
        # The model reported back for a requested one, as OpenAI names snapshots.
        self.reported_models = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    # -- programming ---------------------------------------------------------

    def fail_next(
        self,
        status: int,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if body is None:
            body = orjson.dumps(
                {"error": {"message": f"fake {status}", "type": "fake", "code": None}}
            )
        self.faults.append(Fault(status=status, body=body, headers=headers or {}))

    def stall_next(self, seconds: float) -> None:
        self.faults.append(Fault(stall_s=seconds))

    def reset_next(self, after_events: int) -> None:
        self.faults.append(Fault(reset_after_events=after_events))

    def hold_next(self, after_events: int) -> asyncio.Event:
        """Hold the next stream after *after_events* events; set the event to go on."""
        release = asyncio.Event()
        self.faults.append(Fault(hold_after_events=after_events, release=release))
        return release

    def stream_next(
        self,
        events: list[bytes],
        headers: dict[str, str] | None = None,
        hold_after_events: int | None = None,
    ) -> asyncio.Event:
        """
        Answer the next request with *events* as they are, whatever it asked,
        under *headers*; after *hold_after_events* of them, wait for the
        event returned.
        """
        release = asyncio.Event()
        self.faults.append(
            Fault(
                raw_events=events,
                headers=headers or {},
                hold_after_events=hold_after_events,
                release=release,
            )
        )
        return release

    def stream_endlessly_next(self, piece: bytes, every_s: float = 0.0) -> None:
        """Answer the next request with *piece* repeated until the reader leaves."""
        self.faults.append(Fault(endless=piece, endless_every_s=every_s))

    @property
    def words(self) -> list[str]:
        return self.answer.split(" ")

    @property
    def completion_tokens(self) -> int:
        return len(self.words) + self.reasoning_tokens

    # -- serving ---------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            Received(
                request.method,
                request.raw_path,
                CIMultiDictProxy(CIMultiDict(request.headers)),
                body,
            )
        )
        fault = self.faults.popleft() if self.faults else Fault()
        if fault.stall_s:
            await asyncio.sleep(fault.stall_s)
        if fault.status is not None:
            headers = {"Content-Type": "application/json", **fault.headers}
            return web.Response(status=fault.status, body=fault.body, headers=headers)
        if fault.raw_events is not None:
            return await self.stream(request, fault.raw_events, fault, raw=True)
        if fault.endless is not None:
            return await self.stream_endlessly(
                request, fault.endless, fault.endless_every_s
            )

        payload: dict[str, Any] = {}
        if body:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                return error(400, "We could not parse the JSON body of your request.")
        if not isinstance(payload, dict):
            return error(400, "The body must be a JSON object.")
        model = str(payload.get("model", ""))
        recording = request.headers.get(RECORDING_HEADER)
        if model.startswith(RECORDED_MODEL_PREFIX):
            recording = model.removeprefix(RECORDED_MODEL_PREFIX)
        if recording:
            return await self.replay(request, recording, fault)

        path = request.path
        if request.method == "GET" and path.endswith("/models"):
            # Compressed when the client allows it, to show bytes relayed as-is.
            listing = json_response(
                {
                    "object": "list",
                    "data": [
                        {
                            "id": "gpt-4o-mini",
                            "object": "model",
                            "created": CREATED,
                            "owned_by": "fake",
                        }
                    ],
                }
            )
            listing.enable_compression()
            return listing
        if request.method != "POST":
            return error(404, f"Unknown request URL: {request.method} {path}")
        if path.endswith("/chat/completions"):
            return await self.chat(request, payload, fault)
        if path.endswith("/completions"):
            return await self.completions(request, payload, fault)
        if path.endswith("/embeddings"):
            return self.embeddings(payload)
        if path.endswith("/responses"):
            return await self.responses(request, payload, fault)
        return error(404, f"Unknown request URL: POST {path}")

    async def replay(
        self, request: web.Request, name: str, fault: Fault
    ) -> web.StreamResponse:
        path = RECORDED / name
        if "/" in name or not path.is_file():
            return error(404, f"no recording {name}")
        data = path.read_bytes()
        found = _ERROR_STATUS.search(name)
        status = int(found.group(1)) if found else 200
        if name.endswith(".sse"):
            events = re.split(rb"(?<=\n\n)", data)
            return await self.stream(request, [e for e in events if e], fault, raw=True)
        return web.Response(status=status, body=data, content_type="application/json")

    # -- dialects --------------------------------------------------------------

    def reported(self, model: str) -> str:
        return self.reported_models.get(model, model)

    def chat_usage(self, model: str) -> dict[str, Any]:
        prompt, cached, completion = (
            self.prompt_tokens,
            self.cached_tokens,
            self.completion_tokens,
        )
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {
                "cached_tokens": cached,
                "audio_tokens": self.input_audio_tokens,
            },
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": self.output_audio_tokens,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        if is_deepseek(model):
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
                "prompt_cache_hit_tokens": cached,
                "prompt_cache_miss_tokens": prompt - cached,
            }
            if self.reasoning_tokens:
                usage["completion_tokens_details"] = {
                    "reasoning_tokens": self.reasoning_tokens
                }
        return usage

    async def chat(
        self, request: web.Request, payload: dict[str, Any], fault: Fault
    ) -> web.StreamResponse:
        model = str(payload.get("model", ""))
        reported = self.reported(model)
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": CREATED,
            "model": reported,
        }
        if not is_deepseek(model):
            base["service_tier"] = served_tier(payload)
        if payload.get("stream") is not True:
            message = {"role": "assistant", "content": self.answer, "refusal": None}
            choice = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "stop",
            }
            return json_response(
                {
                    **base,
                    "choices": [choice],
                    "usage": self.chat_usage(model),
                    "system_fingerprint": "fp_fake",
                }
            )

        include_usage = (payload.get("stream_options") or {}).get(
            "include_usage"
        ) is True
        deepseek = is_deepseek(model)
        base["object"] = "chat.completion.chunk"
        deltas: list[tuple[dict[str, Any], str | None]] = [
            ({"role": "assistant", "content": ""}, None)
        ]
        last = len(self.words) - 1
        deltas += [
            ({"content": w if i == last else w + " "}, None)
            for i, w in enumerate(self.words)
        ]
        deltas.append(({"content": ""} if deepseek else {}, "stop"))
        chunks = []
        for i, (delta, finish) in enumerate(deltas):
            chunk: dict[str, Any] = {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
            }
            if deepseek and i == len(deltas) - 1:
                # DeepSeek reports usage on its finish chunk, asked or not.
                chunk["usage"] = self.chat_usage(model)
            elif include_usage:
                chunk["usage"] = None
            chunks.append(chunk)
        if include_usage and not deepseek:
            chunks.append({**base, "choices": [], "usage": self.chat_usage(model)})
        events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks]
        events.append(b"data: [DONE]\n\n")
        return await self.stream(request, events, fault)

    async def completions(
        self, request: web.Request, payload: dict[str, Any], fault: Fault
    ) -> web.StreamResponse:
        model = str(payload.get("model", ""))
        base = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": CREATED,
            "model": self.reported(model),
        }
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if payload.get("stream") is not True:
            choice = {
                "text": self.answer,
                "index": 0,
                "logprobs": None,
                "finish_reason": "stop",
            }
            return json_response({**base, "choices": [choice], "usage": usage})
        include_usage = (payload.get("stream_options") or {}).get(
            "include_usage"
        ) is True
        chunks = []
        last = len(self.words) - 1
        for i, word in enumerate(self.words):
            choice = {
                "text": word if i == last else word + " ",
                "index": 0,
                "logprobs": None,
                "finish_reason": "stop" if i == last else None,
            }
            chunk: dict[str, Any] = {**base, "choices": [choice]}
            if include_usage:
                chunk["usage"] = None
            chunks.append(chunk)
        if include_usage:
            chunks.append({**base, "choices": [], "usage": usage})
        events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks]
        events.append(b"data: [DONE]\n\n")
        return await self.stream(request, events, fault)

    def embeddings(self, payload: dict[str, Any]) -> web.Response:
        inputs = payload.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        dimensions = payload.get("dimensions")
        size = dimensions if isinstance(dimensions, int) and dimensions > 0 else 3
        vector = ([0.25, -0.5, 0.125] * size)[:size]
        as_base64 = payload.get("encoding_format") == "base64"
        data = []
        for i in range(count):
            embedding: Any = vector
            if as_base64:
                packed = struct.pack(f"<{size}f", *vector)
                embedding = base64.b64encode(packed).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens,
        }
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": str(payload.get("model", "")),
                "usage": usage,
            }
        )

    def response_object(
        self, model: str, status: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        done = status == "completed"
        text = {
            "type": "output_text",
            "text": self.answer,
            "annotations": [],
            "logprobs": [],
        }
        message = {
            "id": "msg_fake",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [text],
        }
        offered = {
            tool.get("type")
            for tool in payload.get("tools") or ()
            if isinstance(tool, dict)
        }
        calls: list[dict[str, Any]] = []
        if offered & {"web_search", "web_search_preview"}:
            calls += [
                {
                    "id": f"ws_fake{i}",
                    "type": "web_search_call",
                    "status": "completed",
                    "action": {"type": "search", "query": "fake news"},
                }
                for i in range(self.web_searches)
            ]
        if "file_search" in offered:
            calls += [
                {
                    "id": f"fs_fake{i}",
                    "type": "file_search_call",
                    "status": "completed",
                    "queries": ["fake"],
                    "results": None,
                }
                for i in range(self.file_searches)
            ]
        usage = {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        return {
            "id": "resp_fake",
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "model": self.reported(model),
            # Named as asked while it runs ("auto" by default), as served at the end.
            "service_tier": served_tier(payload) if done else asked_tier(payload),
            "output": [*calls, message] if done else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": payload.get("tools") or [],
            "usage": usage if done else None,
        }

    async def responses(
        self, request: web.Request, payload: dict[str, Any], fault: Fault
    ) -> web.StreamResponse:
        model = str(payload.get("model", ""))
        if payload.get("stream") is not True:
            return json_response(self.response_object(model, "completed", payload))
        common = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        events: list[dict[str, Any]] = [
            {
                "type": "response.created",
                "response": self.response_object(model, "in_progress", payload),
            },
            {
                "type": "response.in_progress",
                "response": self.response_object(model, "in_progress", payload),
            },
        ]
        last = len(self.words) - 1
        for i, word in enumerate(self.words):
            events.append(
                {
                    "type": "response.output_text.delta",
                    **common,
                    "delta": word if i == last else word + " ",
                }
            )
        events.append(
            {"type": "response.output_text.done", **common, "text": self.answer}
        )
        events.append(
            {
                "type": "response.completed",
                "response": self.response_object(model, "completed", payload),
            }
        )
        encoded = []
        for number, event in enumerate(events):
            event["sequence_number"] = number
            encoded.append(
                b"event: "
                + event["type"].encode()
                + b"\ndata: "
                + orjson.dumps(event)
                + b"\n\n"
            )
        return await self.stream(request, encoded, fault)

    async def stream(
        self, request: web.Request, events: list[bytes], fault: Fault, raw: bool = False
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                **fault.headers,
            }
        )
        await response.prepare(request)
        self.open_streams += 1
        try:
            await self.write_events(request, response, events, fault)
        finally:
            self.open_streams -= 1
        return response

    async def write_events(
        self,
        request: web.Request,
        response: web.StreamResponse,
        events: list[bytes],
        fault: Fault,
    ) -> None:
        for number, event in enumerate(events):
            if (
                fault.reset_after_events is not None
                and number >= fault.reset_after_events
            ):
                # Gone mid-stream: no last chunk, so the reader sees a cut.
                assert request.transport is not None
                request.transport.close()
                return
            if number == fault.hold_after_events and fault.release is not None:
                await fault.release.wait()
            await response.write(event)
            self.events_written += 1
            if self.event_delay_s:
                await asyncio.sleep(self.event_delay_s)
        await response.write_eof()

    async def stream_endlessly(
        self, request: web.Request, piece: bytes, every_s: float
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8"}
        )
        await response.prepare(request)
        self.open_streams += 1
        try:
            while True:
                await response.write(piece)
                self.events_written += 1
                if every_s:
                    await asyncio.sleep(every_s)
        # The reader left: that is how an endless stream ends.
        except ConnectionResetError:
            return response
        finally:
            self.open_streams -= 1


def is_deepseek(model: str) -> bool:
    return model.startswith("deepseek")


def asked_tier(payload: dict[str, Any]) -> str:
    asked = payload.get("service_tier")
    return asked if isinstance(asked, str) else "auto"


def served_tier(payload: dict[str, Any]) -> str:
    """The tier OpenAI names in its answer: the one asked for, "default" for auto."""
    asked = asked_tier(payload)
    return asked if asked in ("flex", "priority", "scale") else "default"


def json_response(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


def error(status: int, message: str) -> web.Response:
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json"
    )
