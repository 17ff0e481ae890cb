"""
The real ``tallygate serve`` stopped under load: by SIGTERM, then by SIGKILL.

The gateway runs as a subprocess proxying streamed chat calls to a fake
upstream served by the test itself; each call carries its own request id, so
the stored rows can be matched with the calls that got an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import asyncpg
import pytest

from tests.fake_upstream import FakeUpstream
from tests.harness import BOTH_FRONT_DOORS
from tests.test_recorder import assert_rollup_matches_rows

FRONT_DOORS = BOTH_FRONT_DOORS
ROOT = Path(__file__).resolve().parents[1]
FLUSH_INTERVAL_MS = 100
WORKERS = 24
LOAD_BEFORE_SIGNAL_S = 1.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Gateway:
    process: asyncio.subprocess.Process
    url: str
    log: Path


@dataclass
class Load:
    """What the clients saw: answers by request id, with the time they ended."""

    answered: dict[str, float] = field(default_factory=dict)
    # Calls that got their headers and then lost the rest of the answer.
    broken: list[str] = field(default_factory=list)
    in_flight: int = 0
    started: int = 0
    exited_after_s: float = 0.0


@pytest.fixture
async def gateway(
    aiohttp_server: Any,
    db_pool: asyncpg.Pool,
    database_url: str,
    tmp_path: Path,
    front_door: str,
) -> AsyncIterator[Gateway]:
    """A gateway process on the run's (emptied) database and a fake upstream."""
    fake = FakeUpstream()
    # Ten events a call, 10 ms apart: many calls are mid-stream at any time.
    fake.event_delay_s = 0.01
    upstream = await aiohttp_server(fake.app)
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\ndrain_timeout_s = 10\n'
        f'log_level = "WARNING"\nfront_door = "{front_door}"\n'
        f'[database]\nurl = "{database_url}"\ndata_dir = "{tmp_path / "data"}"\n'
        f"[recorder]\nflush_interval_ms = {FLUSH_INTERVAL_MS}\n"
        f'[upstreams.openai]\nbase_url = "{upstream.make_url("/v1")}"\n'
        "default = true\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TALLYGATE_") and k != "DATABASE_URL"
    }
    log = tmp_path / "gateway.log"
    stderr = open_log(log)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            env=env,
            cwd=ROOT,
            stderr=stderr,
        )
    finally:
        stderr.close()
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_for_health(url, process, log)
        yield Gateway(process, url, log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


def read_log(path: Path) -> str:
    return path.read_text()


async def wait_for_health(
    url: str, process: asyncio.subprocess.Process, log: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if process.returncode is not None:
                pytest.fail(f"gateway exited at startup: {read_log(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    pytest.fail(f"gateway never answered /healthz: {read_log(log)}")


async def call_once(
    session: aiohttp.ClientSession, url: str, request_id: str, load: Load
) -> bool:
    """One streamed chat call; True when it ended with the stream's end marker."""
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
    headers = {"X-Request-Id": request_id, "X-Purpose": "shutdown-test"}
    got_headers = False
    load.in_flight += 1
    load.started += 1
    try:
        async with session.post(
            f"{url}/v1/chat/completions", json=body, headers=headers
        ) as resp:
            got_headers = True
            data = await resp.read()
            if resp.status == 200 and data.endswith(b"data: [DONE]\n\n"):
                load.answered[request_id] = asyncio.get_running_loop().time()
                return True
            load.broken.append(request_id)
            return False
    except (aiohttp.ClientError, ConnectionError):
        if got_headers:
            load.broken.append(request_id)
        return False
    finally:
        load.in_flight -= 1


async def run_load(url: str, load: Load, stop: asyncio.Event) -> None:
    """Keep WORKERS calls going until *stop*, then until the gateway refuses."""

    async def worker(n: int) -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(100_000):
                ok = await call_once(session, url, f"sd-{n}-{i}", load)
                if stop.is_set() and not ok:
                    return

    await asyncio.gather(*(worker(n) for n in range(WORKERS)))


async def stored_ids(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch("SELECT request_id FROM llm_usage")
    return {r["request_id"] for r in rows}


async def signal_under_load(gateway: Gateway, signum: int) -> tuple[Load, float, int]:
    """
    Load the gateway and send *signum* mid-load; return the load, the loop
    time of the signal and how many calls were in flight then.
    """
    load, stop = Load(), asyncio.Event()
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(run_load(gateway.url, load, stop))
    await asyncio.sleep(LOAD_BEFORE_SIGNAL_S)

    in_flight = load.in_flight
    sent_at = loop.time()
    gateway.process.send_signal(signum)
    stop.set()
    await asyncio.wait_for(gateway.process.wait(), 30)
    load.exited_after_s = loop.time() - sent_at
    await asyncio.wait_for(running, 30)

    return load, sent_at, in_flight


async def test_sigterm_under_load_finishes_every_call_and_keeps_every_row(
    gateway: Gateway, db_pool: asyncpg.Pool
) -> None:
    load, _, in_flight = await signal_under_load(gateway, signal.SIGTERM)

    stored = await stored_ids(db_pool)
    missing = set(load.answered) - stored
    print(
        f"\nSIGTERM: {load.started} calls started, {len(load.answered)} answered, "
        f"{in_flight} in flight at the signal, {len(missing)} rows missing, "
        f"exited {load.exited_after_s:.2f} s after the signal"
    )
    assert gateway.process.returncode == 0, read_log(gateway.log)
    assert in_flight > 0, "no call was in flight when the signal came"
    assert load.broken == []
    assert missing == set()
    assert stored <= {f"sd-{n}-{i}" for n in range(WORKERS) for i in range(100_000)}
    await assert_rollup_matches_rows(db_pool)


async def test_sigkill_under_load_loses_at_most_the_last_flush_intervals(
    gateway: Gateway, db_pool: asyncpg.Pool
) -> None:
    """
    What a SIGKILL loses is what waited in memory: the calls answered within
    the last flush interval or two (a batch may be in flight). Calls answered
    earlier must all be stored.
    """
    load, killed_at, _ = await signal_under_load(gateway, signal.SIGKILL)

    stored = await stored_ids(db_pool)
    missing = set(load.answered) - stored
    # Two intervals (one waiting, one being written) and slack for a busy CPU.
    window_s = 2 * FLUSH_INTERVAL_MS / 1000 + 0.5
    recent = {rid for rid, t in load.answered.items() if t >= killed_at - window_s}
    report = (
        f"SIGKILL under load: {len(load.answered)} calls answered, "
        f"{len(missing)} rows lost, {len(recent)} answered in the last "
        f"{window_s:.2f} s before the kill (flush interval {FLUSH_INTERVAL_MS} ms)"
    )
    print(f"\n{report}")
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "sigkill.txt").write_text(report + "\n")
    assert gateway.process.returncode == -signal.SIGKILL
    assert len(load.answered) > WORKERS, "too little load to say anything"
    assert missing <= recent
    await assert_rollup_matches_rows(db_pool)
