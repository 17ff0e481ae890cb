"""
The accounting steps of one call, timed one by one in this process.

``profile.py`` samples the gateway under load, which on a shared 2-core
machine mixes the gateway's own work with kernel time and preemption. This
times each pure-Python step the proxy adds to a call, with the inputs the
load generator sends and the fake upstream answers, so the cost of each step
(and what removing it would buy) is a stable number of microseconds.

    python -m benchmarks.hotpath
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from multidict import CIMultiDict, CIMultiDictProxy

from benchmarks.load import chat_body
from benchmarks.upstream import build_completion, build_events
from gateway.calls import Call, build_record, read_call_options, take_body_usage
from gateway.config import RecorderSettings, load_settings
from gateway.http1 import Pool, parse_head
from gateway.metrics import Metrics
from gateway.pricing import PriceBook
from gateway.record import new_request_id
from gateway.recorder import ROW, Recorder
from gateway.routing import Router, split_target
from gateway.sse import StreamScanner
from gateway.tags import read_request_id, read_tags
from gateway.upstream import Upstream, headers_for_client, headers_for_upstream
from gateway.usage import usage_from_body

# What wrk sends (benchmarks/load.py) plus what aiohttp adds on the way in.
CLIENT_HEADERS = CIMultiDictProxy(
    CIMultiDict(
        {
            "Host": "127.0.0.1:5611",
            "Content-Type": "application/json",
            "Authorization": "Bearer sk-bench-not-a-secret",
            "X-Purpose": "benchmark",
            "X-Ticker": "BENCH",
            "Content-Length": "120",
        }
    )
)
UPSTREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: 399\r\n"
    b"Date: Thu, 03 Dec 2026 09:40:05 GMT\r\n"
    b"Server: Python/3.11 aiohttp/3.14.5"
)
UPSTREAM_HEADERS = parse_head(UPSTREAM_HEAD).headers


async def make_pool(upstream: Upstream) -> Pool:
    """A pool for its encoder only: it never connects."""
    upstream.open()
    assert upstream.pool is not None
    return upstream.pool


def build_steps() -> dict[str, tuple[str, Callable[[], object]]]:
    """Step name -> (which calls pay it, the step as a no-argument callable)."""
    settings = load_settings(
        environ={},
        upstreams={"fake": {"base_url": "http://127.0.0.1:1/v1", "default": True}},
        pricing={"bench-model": {"input": "0.15", "output": "0.60"}},
    )
    router = Router(settings.upstreams, settings.default_upstream)
    upstream = Upstream.from_settings("fake", settings.upstreams["fake"])
    prices = PriceBook(settings.pricing)
    metrics = Metrics()
    spool = Path(tempfile.mkdtemp(prefix="tallygate-hotpath-"))
    recorder = Recorder(
        None,  # type: ignore[arg-type]  # submit never touches the pool
        RecorderSettings(batch_size=10**9, max_queue=10**9),
        spool,
        metrics,
    )
    recorder.observers.append(metrics.count_call)
    plain_body, stream_body = chat_body(False), chat_body(True)
    completion = build_completion()
    events = build_events(10, include_usage=True)
    path = split_target("/v1/chat/completions")
    model = read_call_options(path.rest, plain_body).model
    target = router.resolve(path, model)
    tags = read_tags(CLIENT_HEADERS)
    now = datetime.now(UTC)
    pool = asyncio.run(make_pool(upstream))
    sent_headers = headers_for_upstream(
        CLIENT_HEADERS,
        request_id="tg-0123456789abcdef",
        drop_authorization=False,
        identity_encoding=True,
    )

    def new_call() -> Call:
        return Call(
            request_id=new_request_id(),
            target=target,
            upstream=upstream,
            accounted=True,
            tags=tags,
            gateway_keyed=False,
            key_label=None,
            body=plain_body,
            request_bytes=len(plain_body),
            requested_model=model,
            status=200,
        )

    answered = new_call()
    take_body_usage(answered, completion)
    record = build_record(answered, prices, now, 0.001)
    records = [dataclasses.replace(record, request_id=new_request_id())] * 1000

    def scan_stream() -> None:
        scanner = StreamScanner(hide_usage_chunk=True)
        for event in events:
            scanner.feed(event)
        scanner.close()

    def submit() -> None:
        recorder.submit(record)
        if len(recorder._queue) > 100_000:
            recorder._queue.clear()

    return {
        "split_target": ("both", lambda: split_target("/v1/chat/completions")),
        "read_tags": ("both", lambda: read_tags(CLIENT_HEADERS)),
        "read_request_id (new id)": ("both", lambda: read_request_id(CLIENT_HEADERS)),
        "read_call_options (plain)": (
            "plain",
            lambda: read_call_options("chat/completions", plain_body),
        ),
        "read_call_options (stream, adds include_usage)": (
            "streamed",
            lambda: read_call_options("chat/completions", stream_body),
        ),
        "Router.resolve": ("both", lambda: router.resolve(path, model)),
        "admission view (no budgets)": ("both", tags.admission_view),
        "headers_for_upstream": (
            "both",
            lambda: headers_for_upstream(
                CLIENT_HEADERS,
                request_id="tg-0123456789abcdef",
                drop_authorization=False,
                identity_encoding=True,
            ),
        ),
        "Pool.encode (the request's bytes)": (
            "both",
            lambda: pool.encode("POST", target.url, sent_headers, plain_body),
        ),
        "parse_head (the answer's head)": ("both", lambda: parse_head(UPSTREAM_HEAD)),
        "headers_for_client": ("both", lambda: headers_for_client(UPSTREAM_HEADERS)),
        "usage_from_body (whole answer)": (
            "plain",
            lambda: usage_from_body(completion),
        ),
        "StreamScanner over 12 events": ("streamed", scan_stream),
        "new Call": ("both", new_call),
        "PriceBook.cost (config price)": (
            "both",
            lambda: prices.cost("bench-model", answered.usage, provider="fake", at=now),
        ),
        "build_record (prices included)": (
            "both",
            lambda: build_record(answered, prices, now, 0.001),
        ),
        "utc_now": ("both", lambda: datetime.now(UTC)),
        "Recorder.submit (+ Metrics.count_call)": ("both", submit),
        "Metrics.observe_latency": (
            "both",
            lambda: metrics.observe_latency("fake", 0.001, 0.0001, None),
        ),
        "batch rows for COPY, per record": (
            "both",
            lambda: list(map(ROW, records)),
        ),
    }


def time_step(step: Callable[[], object], repeat: int) -> float:
    """
    Best-of-*repeat* microseconds per call, over runs of about 2 ms each.

    Short runs, many of them: on a shared machine most long runs are cut by
    preemption, while the fastest of many short ones is the step's own cost.
    """
    timer = timeit.Timer(step)
    number, took = timer.autorange()
    number = max(1, int(number * 0.002 / took))
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    totals = {"plain": 0.0, "streamed": 0.0}
    print(f"{'µs/call':>8}  {'paid by':<9} step")
    for name, (who, step) in build_steps().items():
        us = time_step(step, args.repeat)
        if name.startswith("batch rows"):
            us /= 1000
        for mode in totals:
            if who in ("both", mode):
                totals[mode] += us
        print(f"{us:8.2f}  {who:<9} {name}")
    print(
        f"sum of the steps: plain {totals['plain']:.1f} µs, "
        f"streamed {totals['streamed']:.1f} µs per call "
        "(best of runs, warm caches; asyncpg's binary encoding of the rows is extra)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
