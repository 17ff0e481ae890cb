"""
Memory during a database outage under load, and every row after it.

Starts a throwaway PostgreSQL of its own (initdb + pg_ctl in a temporary
directory, as the ``postgres`` user when run as root; the shared server on
5432 is never touched), the fake upstream and tallygate on it, loads the
gateway with wrk the whole time, stops the database after ``--before``
seconds for ``--seconds`` (5 minutes by default), starts it again, and keeps
the load on for ``--after`` seconds. The gateway's RSS, queue and spool depth
are sampled every second. Once the load ends, every call the upstream
answered must arrive as a row; the run fails otherwise.

    python -m benchmarks.outage                 # 5-minute outage
    python -m benchmarks.outage --seconds 60    # a shorter one
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks import benchdb, procs
from benchmarks.load import LoadResult, run_wrk, write_script
from benchmarks.run import upstream_count, write_gateway_config

PG_BIN = Path("/usr/lib/postgresql/15/bin")
GAUGE = re.compile(r"^tallygate_recorder_(queue|spool)_depth (\S+)$", re.MULTILINE)
# Long enough for the spool to be replayed at the rate the recorder writes.
ROWS_WAIT_S = 300.0


class ThrowawayServer:
    """A PostgreSQL cluster in *directory*, stopped and started at will."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.data = directory / "pg"
        self.port = port
        self.as_postgres = os.geteuid() == 0

    def command(self, *argv: str) -> list[str]:
        if self.as_postgres:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def run(self, *argv: str) -> None:
        subprocess.run(
            self.command(*argv), check=True, capture_output=True, timeout=120
        )

    def init(self) -> None:
        if self.as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")
        self.run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust",
            "-U", "postgres", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=50"
        )
        self.run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.directory / "pg.log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self.run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@dataclass
class Tick:
    at_s: float
    phase: str
    rss_mib: float
    queue: float
    spool: float


def read_depths(port: int) -> tuple[float, float]:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=2
        ) as reply:
            text = reply.read().decode()
    except OSError:
        return float("nan"), float("nan")
    found = dict(GAUGE.findall(text))
    return float(found.get("queue", "nan")), float(found.get("spool", "nan"))


def run_outage(args: argparse.Namespace, tmp: Path, server: ThrowawayServer) -> int:
    database_url = asyncio.run(benchdb.create_database(server.url))
    env = procs.clean_environment()
    gw_port = procs.free_port()
    upstream = procs.start_upstream(tmp)
    up_port = upstream.port
    config = write_gateway_config(tmp, gw_port, up_port, database_url, "WARNING")
    gateway = procs.start_child(
        "tallygate",
        [procs.PYTHON, "-m", "gateway", "serve", "--config", str(config)],
        gw_port, tmp, env, startup_s=60,
    )  # fmt: skip
    ticks: list[Tick] = []
    try:
        total_s = args.before + args.seconds + args.after
        script = write_script(tmp, args.streamed)
        result: list[LoadResult] = []
        answered_before = upstream_count(up_port)
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"

        def load_gateway() -> None:
            result.append(run_wrk(url, script, args.connections, total_s))

        load = threading.Thread(target=load_gateway)
        started = time.monotonic()
        load.start()
        phase = "before"
        while load.is_alive():
            at = time.monotonic() - started
            if phase == "before" and at >= args.before:
                server.stop()
                phase = "outage"
                print(f"{at:6.1f} s: database stopped", flush=True)
            elif phase == "outage" and at >= args.before + args.seconds:
                server.start()
                phase = "after"
                print(f"{at:6.1f} s: database started", flush=True)
            queue, spool = read_depths(gw_port)
            tick = Tick(at, phase, procs.rss_mib(gateway.pid), queue, spool)
            ticks.append(tick)
            if len(ticks) % 10 == 0:
                print(
                    f"{at:6.1f} s {phase:<7} RSS {tick.rss_mib:6.1f} MiB "
                    f"queue {queue:>7.0f} spool {spool:>8.0f}",
                    flush=True,
                )
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started - at)))
        load.join()
        if phase == "outage":
            server.start()
        answered = upstream_count(up_port) - answered_before
        rows, waited_s = asyncio.run(wait_for_all_rows(database_url, answered))
        peak_hwm = procs.peak_rss_mib(gateway.pid)
    finally:
        gateway.stop()
        upstream.stop()
    return report(args, ticks, result[0], answered, rows, waited_s, peak_hwm)


async def wait_for_all_rows(url: str, expected: int) -> tuple[int, float]:
    started = time.monotonic()
    rows = await benchdb.count_rows(url)
    while rows < expected and time.monotonic() - started < ROWS_WAIT_S:
        await asyncio.sleep(1)
        rows = await benchdb.count_rows(url)
    return rows, time.monotonic() - started


def report(
    args: argparse.Namespace,
    ticks: list[Tick],
    load: LoadResult,
    answered: int,
    rows: int,
    waited_s: float,
    peak_hwm: float,
) -> int:
    def rss(phase: str) -> list[float]:
        return [t.rss_mib for t in ticks if t.phase == phase] or [0.0]

    start = rss("before")[-1]
    peak = max(rss("outage"))
    end = rss("after")[-1]
    spool = max((t.spool for t in ticks if t.spool == t.spool), default=0.0)
    queue = max((t.queue for t in ticks if t.queue == t.queue), default=0.0)
    flat = peak <= start * 1.1
    print(
        f"outage of {args.seconds:g} s under {args.connections} connections "
        f"({load.rps:,.0f} calls/s, {load.errors} failed): RSS before "
        f"{start:.1f} MiB, peak during {peak:.1f} MiB, end {end:.1f} MiB "
        f"(VmHWM {peak_hwm:.1f} MiB); most queued {queue:,.0f}, most spooled "
        f"{spool:,.0f}; {'flat (≤ +10 %)' if flat else 'NOT flat'}"
    )
    print(
        f"rows: {rows:,} stored for {answered:,} answered calls, "
        f"{waited_s:.1f} s after the load ended"
    )
    if rows != answered or load.errors:
        print("FAILED: rows lost or calls failed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=300.0, help="outage length")
    parser.add_argument("--before", type=float, default=20.0)
    parser.add_argument("--after", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--streamed", action="store_true")
    args = parser.parse_args(argv)
    if not (PG_BIN / "initdb").exists():
        raise SystemExit(f"no PostgreSQL binaries in {PG_BIN}")
    with tempfile.TemporaryDirectory(prefix="tallygate-outage-") as name:
        tmp = Path(name)
        server = ThrowawayServer(tmp, procs.free_port())
        server.init()
        server.start()
        try:
            return run_outage(args, tmp, server)
        finally:
            # Stopped whatever happened: it is ours alone.
            subprocess.run(
                server.command(
                    str(PG_BIN / "pg_ctl"), "-D", str(server.data), "-m",
                    "immediate", "stop",
                ),
                capture_output=True, check=False,
            )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
