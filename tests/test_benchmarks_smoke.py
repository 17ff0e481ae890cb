"""
The benchmark harness still works: its fake upstream and bare relay answer.

The benchmarks themselves never run in the test suite; this only keeps their
moving parts from rotting between runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import aiohttp
import orjson
import pytest
from aiohttp import web

from benchmarks import load, opcodes, procs, relay, run, upstream, wakeups

# The relay on aiohttp's client, and on the gateway's own.
RELAYS = pytest.mark.parametrize(
    "make_relay", [relay.create_app, relay.create_http1_app], ids=["aiohttp", "http1"]
)


@RELAYS
async def test_relay_forwards_a_plain_completion_with_its_usage(
    aiohttp_server, aiohttp_client, make_relay: Callable[[str], web.Application]
) -> None:
    fake = await aiohttp_server(upstream.create_app(chunks=4))
    client = await aiohttp_client(make_relay(str(fake.make_url(""))))

    resp = await client.post(
        "/v1/chat/completions",
        data=load.chat_body(streamed=False),
        headers={"Content-Type": "application/json"},
    )

    assert resp.status == 200
    body = await resp.json()
    assert body["usage"]["total_tokens"] == (
        upstream.PROMPT_TOKENS + upstream.COMPLETION_TOKENS
    )


@RELAYS
async def test_relay_streams_chunks_and_usage_when_asked(
    aiohttp_server, aiohttp_client, make_relay: Callable[[str], web.Application]
) -> None:
    fake = await aiohttp_server(upstream.create_app(chunks=4))
    client = await aiohttp_client(make_relay(str(fake.make_url(""))))
    request = orjson.loads(load.chat_body(streamed=True))
    request["stream_options"] = {"include_usage": True}

    resp = await client.post("/v1/chat/completions", data=orjson.dumps(request))
    text = await resp.text()

    events = [e for e in text.split("\n\n") if e]
    assert resp.content_type == "text/event-stream"
    # 4 content chunks, the usage-only chunk, then [DONE].
    assert len(events) == 6
    assert events[-1] == "data: [DONE]"
    assert orjson.loads(events[-2][len("data: ") :])["usage"]["prompt_tokens"] == 42


async def test_the_raw_relay_relays_plain_and_streamed_calls_on_one_connection(
    aiohttp_server,
) -> None:
    fake = await aiohttp_server(upstream.create_app(chunks=4))
    port = procs.free_port()
    serving = asyncio.ensure_future(
        relay.serve_raw("127.0.0.1", port, str(fake.make_url("")))
    )
    request = orjson.loads(load.chat_body(streamed=True))
    request["stream_options"] = {"include_usage": True}
    try:
        await wait_until_listening(port)
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            async with session.post(url, data=load.chat_body(streamed=False)) as resp:
                plain = await resp.json()
            async with session.post(url, data=orjson.dumps(request)) as resp:
                events = [e for e in (await resp.text()).split("\n\n") if e]
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    assert plain["usage"]["total_tokens"] == (
        upstream.PROMPT_TOKENS + upstream.COMPLETION_TOKENS
    )
    assert len(events) == 6
    assert events[-1] == "data: [DONE]"


async def wait_until_listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        return
    raise TimeoutError(f"nothing listens on {port}")


async def test_upstream_counts_the_completions_it_answered(aiohttp_client) -> None:
    client = await aiohttp_client(upstream.create_app(chunks=2))

    for streamed in (False, True):
        await (
            await client.post("/v1/chat/completions", data=load.chat_body(streamed))
        ).read()
    resp = await client.get("/stats")

    assert (await resp.json())["completions"] == 2


def test_wrk_script_carries_the_body_and_prints_a_summary(tmp_path) -> None:
    path = load.write_script(tmp_path, streamed=True)

    script = path.read_text()

    assert '"stream":true' in script
    assert load.MARK in script


def one_connection_summary(added_p99_ms: float) -> run.Summary:
    return run.Summary(
        rps=1000.0,
        rps_spread=0.0,
        p50_ms=0.5,
        p99_ms=2.0,
        added_p50_ms=0.3,
        added_p99_ms=added_p99_ms,
        cpu_us=300.0,
        rss_mib=60.0,
        steal=0.0,
        requests=1000,
        errors=0,
        answered=1000,
        rows=1000,
    )


@pytest.mark.parametrize("seconds", [1.5, 0.5, 0])
def test_wrk_is_never_started_for_a_duration_it_cannot_take(tmp_path, seconds) -> None:
    script = load.write_script(tmp_path, streamed=False)

    with pytest.raises(ValueError, match="whole seconds"):
        load.run_wrk("http://127.0.0.1:1/v1/chat/completions", script, 1, seconds)


@pytest.mark.parametrize(
    ("gateway_ms", "relay_ms", "verdict"),
    [(1.0, 1.0, True), (1.2, 1.0, False), (0.5, -0.2, False), (-0.4, -0.2, None)],
)
def test_the_added_p99_verdict_says_when_the_run_cannot_tell(
    gateway_ms: float, relay_ms: float, verdict: bool | None
) -> None:
    cell = run.Cell(streamed=False, connections=1)
    summaries = {
        (cell.label, "tallygate"): one_connection_summary(gateway_ms),
        (cell.label, "relay"): one_connection_summary(relay_ms),
    }

    checks = {what: ok for what, _, ok in run.check_targets([cell], summaries, {})}

    assert checks["latency added p99 ≤ 1.1× relay (plain, 1 conn)"] is verdict


def a_sample(requests: int, seconds: float, database_s: float | None) -> run.Sample:
    result = load.LoadResult(requests, seconds, 0, 1.0, 1.5, 2.0, 1.1, 3.0)
    return run.Sample(result, 0.5, requests, requests, 60.0, 0.0, database_s)


def test_the_database_cpu_is_summed_per_call_and_per_second_of_load() -> None:
    cell = run.Cell(streamed=False, connections=1)
    cell.samples["direct"] = [a_sample(4000, 4.0, None), a_sample(4000, 4.0, None)]
    cell.samples["tallygate"] = [a_sample(1000, 4.0, 0.1), a_sample(3000, 4.0, 0.3)]

    summary = run.summarise(cell, "tallygate")
    direct = run.summarise(cell, "direct")

    assert summary.database_us == pytest.approx(100.0)  # 0.4 s over 4,000 calls
    assert summary.database_share == pytest.approx(0.05)  # 0.4 s over 8 s
    assert (direct.database_us, direct.database_share) == (None, None)


@pytest.mark.parametrize(
    ("value", "limit", "shown"),
    [
        (0.8985, 0.9, "0.898×"),
        (0.9, 0.9, "0.90×"),
        (0.93, 0.9, "0.93×"),
        (1.1049, 1.1, "1.105×"),
    ],
)
def test_a_ratio_next_to_its_limit_shows_which_side_it_is_on(
    value: float, limit: float, shown: str
) -> None:
    assert run.ratio(value, limit) == shown


# perf sched timehist's layout: each line ends a run, on a core, after the
# task's wait, scheduling delay and run time (ms). Here wrk waits 3 ms on
# core 0 behind postgres while core 1 is idle; the upstream waits 0.02 ms.
TIMEHIST = """\
           time    cpu  task name                       wait time  sch delay   run time
                        [tid/pid]                          (msec)     (msec)     (msec)
--------------- ------  ------------------------------  ---------  ---------  ---------
     100.000000 [0001]  <idle>                              0.000      0.000      5.000
     100.004000 [0000]  postgres[200]                       0.000      0.000      4.000
     100.004100 [0000]  wrk[301/300]                        1.000      3.000      0.100
     100.006000 [0001]  <idle>                              0.000      0.000      6.000
     100.006100 [0001]  python[400]                         0.500      0.020      0.050
     100.006200 [0001]  wrk[301/300]                        0.300      0.010      0.050
     100.006300 [0000]  kworker/u8:2-ev[55]                 0.000      0.000      0.010
"""


def test_the_scheduler_trace_is_read_run_by_run() -> None:
    runs = wakeups.parse_timehist(TIMEHIST)

    assert len(runs) == 7
    waited = runs[2]
    assert (waited.name, waited.pid, waited.cpu) == ("wrk", 300, 0)
    assert waited.delay_ms == pytest.approx(3.0)
    assert waited.start == pytest.approx(100.004)
    assert (runs[0].name, runs[0].pid) == ("<idle>", None)
    assert runs[-1].name == "kworker/u8:2-ev"


def test_a_delayed_wakeup_is_charged_what_the_cores_ran_while_it_waited() -> None:
    runs = wakeups.parse_timehist(TIMEHIST)

    seen = wakeups.analyse(runs, pids={400}, names={"wrk"}, delayed_ms=0.5)

    # Both wrk runs and the upstream's start inside wrk's window; postgres is
    # not in the chain, and the kworker ran after wrk's last run began.
    assert seen.wakeups == 3
    assert sorted(seen.delays_ms) == pytest.approx([0.01, 0.02, 3.0])
    # The 3 ms wait, 100.001-100.004: postgres on core 0, core 1 idle.
    assert seen.cores_ran["postgres"] == pytest.approx(3.0)
    assert seen.cores_ran["<idle>"] == pytest.approx(3.0)
    assert set(seen.cores_ran) == {"postgres", "<idle>"}
    row = wakeups.describe("tallygate", 0.5, 3.5, seen, 0.5)
    assert "| 1 (33.33%) |" in row
    assert "| postgres 100% | 50% |" in row


def test_windows_of_wakeups_add_up() -> None:
    runs = wakeups.parse_timehist(TIMEHIST)
    one = wakeups.analyse(runs, pids={400}, names={"wrk"}, delayed_ms=0.5)

    both = wakeups.merged([one, one])

    assert both.wakeups == 6
    assert len(both.delays_ms) == 6
    assert both.cores_ran["postgres"] == pytest.approx(6.0)


def test_a_placed_cell_is_judged_on_its_latency_and_rows_only() -> None:
    free = run.Cell(streamed=False, connections=1)
    placed = run.Cell(streamed=False, connections=1, database_core=True)
    summaries = {
        (cell.label, name): one_connection_summary(added)
        for cell, added in ((free, 3.0), (placed, 0.31))
        for name in ("tallygate", "relay")
    }
    summaries[(placed.label, "relay")] = one_connection_summary(0.3)

    checks = {
        what: ok for what, _, ok in run.check_targets([free, placed], summaries, {})
    }

    own = "plain, 1 conn, database on its own core"
    assert placed.label == own
    assert checks[f"latency added p99 ≤ 1.1× relay ({own})"] is True
    assert checks[f"every call stored ({own})"] is True
    assert not any(own in what for what in checks if what.startswith(("CPU", "RPS")))
    # The free cell still carries the one-connection run's CPU and RPS checks.
    assert "CPU per call ≤ 1.2× relay (plain, 1 conn)" in checks


def test_a_placement_moves_the_chain_and_the_server_and_gives_them_back() -> None:
    cpus = os.sched_getaffinity(0)
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    server, proxy = subprocess.Popen(sleeper), subprocess.Popen(sleeper)
    try:
        placement = procs.Placement(
            server.pid, chain_cpus={min(cpus)}, database_cpus={max(cpus)}
        )

        placement.apply([proxy.pid])
        assert os.sched_getaffinity(proxy.pid) == {min(cpus)}
        assert os.sched_getaffinity(server.pid) == {max(cpus)}

        placement.release()
        assert os.sched_getaffinity(proxy.pid) == cpus
        assert os.sched_getaffinity(server.pid) == cpus
    finally:
        for child in (server, proxy):
            child.kill()
            child.wait()


def verdicts(cell: run.Cell) -> dict[str, tuple[str, bool | None]]:
    """The targets' verdicts of a cell of tallygate and the relay, by target."""
    summaries = {
        (cell.label, name): run.summarise(cell, name) for name in ("tallygate", "relay")
    }
    return {
        what: (measured, ok)
        for what, measured, ok in run.check_targets([cell], summaries, {})
    }


def test_the_rps_verdict_shows_each_rounds_ratio() -> None:
    cell = run.Cell(streamed=True, connections=32)
    for gateway_rps, relay_rps in ((2834, 2013), (3780, 3778), (2694, 3844)):
        cell.samples["tallygate"].append(a_sample(gateway_rps, 1.0, 0.1))
        cell.samples["relay"].append(a_sample(relay_rps, 1.0, None))
    cell.samples["direct"] = cell.samples["relay"]

    checks = verdicts(cell)

    measured, ok = checks["RPS ≥ 0.9× relay (streamed, 32 conn)"]
    # Judged on the medians, 2,834 against 3,778.
    assert ok is False
    assert measured.endswith("= 0.75× (round by round 1.41×, 1.00×, 0.70×)")


def test_the_cpu_verdict_takes_the_median_round_and_shows_each() -> None:
    # The streamed cell at 32 connections of the run at about 02:05 UTC: a
    # slow spell fell on tallygate's third round.
    cell = run.Cell(streamed=True, connections=32)
    rounds = ((221, 16_592, 199, 17_352), (228, 15_759, 204, 17_912))
    rounds += ((291, 12_363, 201, 17_756),)
    for gateway_us, gateway_calls, relay_us, relay_calls in rounds:
        for name, us, calls in (
            ("tallygate", gateway_us, gateway_calls),
            ("relay", relay_us, relay_calls),
        ):
            sample = a_sample(calls, 4.0, 0.1 if name == "tallygate" else None)
            cell.samples[name].append(
                dataclasses.replace(sample, cpu_s=us * calls / 1e6)
            )
    cell.samples["direct"] = cell.samples["relay"]

    checks = verdicts(cell)

    measured, ok = checks["CPU per call ≤ 1.2× relay (streamed, 32 conn)"]
    # Pooled over the rounds, the slow one would have made it 243 vs 201 µs.
    assert ok is True
    assert measured == "228 vs 201 µs = 1.13× (round by round 1.11×, 1.12×, 1.45×)"


def test_a_dataclass_init_is_named_by_its_fields() -> None:
    @dataclasses.dataclass
    class Pair:
        left: int
        right: int

    assert opcodes.where(Pair.__init__.__code__).endswith("__init__(left, right, ...)")


def test_the_traced_child_counts_the_bytecodes_of_its_window(tmp_path) -> None:
    (tmp_path / "busy.py").write_text(
        "import time\n"
        "def work():\n"
        "    return sum(range(10))\n"
        "while True:\n"
        "    work()\n"
        "    time.sleep(0.001)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{procs.REPO}"}
    out = tmp_path / "counts"
    out.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.opcodes", "--child", str(out), "--", "busy"],
        env=env,
    )
    try:
        # Counting starts only once the module is running and has been asked to.
        time.sleep(1.0)
        child.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        child.send_signal(signal.SIGUSR2)
        ops, calls = opcodes.read_dump(out / "1.tsv")
    finally:
        child.kill()
        child.wait(timeout=10)

    (work,) = [key for key in ops if key.endswith(":work")]
    assert calls[work] >= 1
    assert ops[work] >= 5 * calls[work]
