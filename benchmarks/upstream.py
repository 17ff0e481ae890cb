"""
A fake OpenAI-compatible upstream with zero think time, run as its own process.

``POST /v1/chat/completions`` answers a JSON completion with ``usage``, or, with
``"stream": true``, an event stream of ``--chunks`` content chunks, a usage-only
chunk when ``stream_options.include_usage`` is set, and ``[DONE]``. Every answer
is built once at startup, so the upstream spends its time on HTTP, not on
making replies. ``GET /stats`` returns how many completions it has answered,
which the harness compares with the rows the gateway stored.

    python -m benchmarks.upstream --port 18001 --chunks 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket

import orjson
from aiohttp import web

PROMPT_TOKENS = 42
COMPLETION_TOKENS = 10
MODEL = "bench-model"
COUNTER = web.AppKey("counter", list)


def build_completion() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            # OpenAI names the tier that served the call in every answer and chunk.
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "word " * 10},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage_object(),
        }
    )


def usage_object() -> dict[str, object]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def build_events(chunks: int, include_usage: bool) -> list[bytes]:
    """The stream as one ``data:`` event per element, ending in ``[DONE]``."""

    def chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
        body: dict[str, object] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": MODEL,
            "service_tier": "default",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if include_usage:
            # OpenAI sends "usage": null on every chunk before the usage one.
            body["usage"] = None
        return body

    bodies = [chunk({"role": "assistant", "content": ""}, None)]
    bodies += [chunk({"content": "word "}, None) for _ in range(chunks - 2)]
    bodies.append(chunk({}, "stop"))
    if include_usage:
        bodies.append(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": MODEL,
                "service_tier": "default",
                "choices": [],
                "usage": usage_object(),
            }
        )
    events = [b"data: " + orjson.dumps(b) + b"\n\n" for b in bodies]
    events.append(b"data: [DONE]\n\n")
    return events


def create_app(chunks: int) -> web.Application:
    completion = build_completion()
    streams = {flag: build_events(chunks, flag) for flag in (False, True)}
    # A list, not an int, so the handlers can add to it without a closure cell.
    counter = [0]

    async def chat(request: web.Request) -> web.StreamResponse:
        payload = orjson.loads(await request.read())
        counter[0] += 1
        if not payload.get("stream"):
            return web.Response(body=completion, content_type="application/json")
        options = payload.get("stream_options") or {}
        events = streams[bool(options.get("include_usage"))]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        # A client that hangs up mid-stream (wrk at the end of a cell) is normal.
        with contextlib.suppress(ConnectionResetError):
            await response.prepare(request)
            # One write per event, as a real provider sends them.
            for event in events:
                await response.write(event)
            await response.write_eof()
        return response

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"completions": counter[0]})

    app = web.Application()
    app[COUNTER] = counter
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument(
        "--chunks", type=int, default=10, help="content chunks per stream (>= 2)"
    )
    args = parser.parse_args()
    if args.chunks < 2:
        parser.error("--chunks must be at least 2")
    run(create_app(args.chunks), args.host, args.port)


def run(app: web.Application, host: str, port: int) -> None:
    """Serve *app* on uvloop with no access log."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    web.run_app(app, sock=sock, access_log=None, print=None, loop=loop, backlog=1024)


if __name__ == "__main__":
    main()
