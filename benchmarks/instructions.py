"""
Instructions per call under callgrind: the CPU comparison the host cannot move.

``run.py`` times CPU with ``/proc``, which on this shared virtual machine
moves by 10-30 % between runs minutes apart (the hypervisor's steal, other
guests' caches). valgrind's callgrind counts the instructions a process
executes instead: the same program, inputs and environment give nearly the
same count whatever else the machine does. Each proxy (the bare relay, the
relay on the gateway's upstream client, tallygate with full accounting) runs
under callgrind with collection off; after a warm-up, collection is switched
on for a wrk window at one connection (plus half a second for the recorder's
last batch), switched off, and dumped. The fake upstream and PostgreSQL run
natively and are not counted.

Two limits to read the figures with: callgrind counts user-space
instructions only (the kernel's share of a socket send is not in them), and
an instruction is not a fixed time (a cache miss costs more than an add).
The figures are a second view of CPU per call, not a replacement for
``run.py``'s.

    python -m benchmarks.instructions --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import benchdb, machine, procs
from benchmarks.load import run_wrk, write_script
from benchmarks.relay import VARIANTS as RELAY_VARIANTS
from benchmarks.run import CHAT_PATH, GATEWAYS, write_gateway_config

TARGETS = (*RELAY_VARIANTS, *GATEWAYS)
# What callgrind slows a Python server by here, about: startup needs room.
STARTUP_S = 180
WARMUP_S = 2.0
# The recorder's last batch of a window lands within this.
SETTLE_S = 0.5


@dataclass
class Window:
    target: str
    streamed: bool
    requests: int
    instructions: int
    rows: int | None = None

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests if self.requests else 0.0


def callgrind_argv(out_dir: Path, name: str, argv: list[str]) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir / name}.%p.out",
        *argv,
    ]


def control(pid: int, *flags: str) -> None:
    subprocess.run(
        ["callgrind_control", *flags, str(pid)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def dumps(out_dir: Path, name: str, pid: int) -> set[Path]:
    return set(out_dir.glob(f"{name}.{pid}.out.*"))


def dumped_totals(out_dir: Path, name: str, pid: int, before: set[Path]) -> int:
    """The ``totals:`` line of the dump written since *before* was listed."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in sorted(dumps(out_dir, name, pid) - before):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise TimeoutError(f"no callgrind dump from {name} ({pid})")


def target_argv(
    name: str, tmp: Path, port: int, up_port: int, database_url: str
) -> list[str]:
    """The command that serves proxy *name* on *port* (``python -m ...``)."""
    if name in GATEWAYS:
        directory = tmp / name
        directory.mkdir(exist_ok=True)
        config = write_gateway_config(
            directory, port, up_port, database_url, "WARNING", GATEWAYS[name]
        )
        return [procs.PYTHON, "-m", "gateway", "serve", "--config", str(config)]
    argv = [procs.PYTHON, "-m", "benchmarks.relay", "--port", str(port)]
    return [*argv, "--upstream", f"http://127.0.0.1:{up_port}", *RELAY_VARIANTS[name]]


def start_target(name: str, tmp: Path, up_port: int, database_url: str) -> procs.Child:
    port = procs.free_port()
    argv = target_argv(name, tmp, port, up_port, database_url)
    return procs.start_child(
        name,
        callgrind_argv(tmp, name, argv),
        port,
        tmp,
        procs.clean_environment(),
        startup_s=STARTUP_S,
    )


async def measure(args: argparse.Namespace) -> list[Window]:
    tmp = Path(tempfile.mkdtemp(prefix="tallygate-callgrind-"))
    scripts = {s: write_script(tmp, s) for s in (False, True)}
    url = await benchdb.create_database(args.server)
    children: list[procs.Child] = []
    windows: list[Window] = []
    try:
        upstream = procs.start_upstream(tmp)
        children.append(upstream)
        up_port = upstream.port
        for name in args.targets:
            child = start_target(name, tmp, up_port, url)
            children.append(child)
            target_url = f"http://127.0.0.1:{child.port}{CHAT_PATH}"
            for streamed in (False, True):
                run_wrk(target_url, scripts[streamed], 1, WARMUP_S)
                await asyncio.sleep(SETTLE_S)
                rows_before = await benchdb.count_rows(url) if name in GATEWAYS else 0
                before = dumps(tmp, name, child.pid)
                control(child.pid, "--zero")
                control(child.pid, "--instr=on")
                load = run_wrk(target_url, scripts[streamed], 1, args.seconds)
                await asyncio.sleep(SETTLE_S)
                control(child.pid, "--instr=off")
                control(child.pid, "--dump")
                total = dumped_totals(tmp, name, child.pid, before)
                window = Window(name, streamed, load.requests, total)
                if name in GATEWAYS:
                    await asyncio.sleep(1.0)
                    window.rows = await benchdb.count_rows(url) - rows_before
                windows.append(window)
                print(describe(window), flush=True)
            child.stop(timeout_s=60)
    finally:
        for child in reversed(children):
            child.stop(timeout_s=60)
        await benchdb.drop_database(args.server, url)
        shutil.rmtree(tmp, ignore_errors=True)
    return windows


def describe(window: Window) -> str:
    kind = "streamed" if window.streamed else "plain"
    rows = "" if window.rows is None else f", rows {window.rows:,}/{window.requests:,}"
    return (
        f"{window.target:12} {kind:8} {window.requests:6,} calls  "
        f"{window.per_request / 1000:8.1f} k instructions/call{rows}"
    )


def report(windows: list[Window], args: argparse.Namespace) -> str:
    lines = [
        "# Instructions per call under callgrind",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        f"`python -m benchmarks.instructions --seconds {args.seconds:g}`: each "
        "proxy under valgrind's callgrind, one connection, "
        f"{args.seconds:g} s of wrk per cell, user-space instructions of the "
        "proxy process only (the fake upstream and PostgreSQL are not counted).",
        "",
        "Under callgrind a proxy answers some 100 calls a second, so the "
        "recorder's batches hold a few rows where a native run's hold "
        "hundreds (its per-statement cost weighs more per call here than in "
        "`run.py`'s figures), and a stream's events have all arrived by the "
        "time the proxy reads, so it reads them in one or two reads instead "
        "of about one each.",
        "",
        *machine.describe(),
        f"- {machine.tool_version(['valgrind', '--version'])}",
        "",
        "| cell | target | calls | instructions per call | ratio to relay "
        "| rows / calls |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    base = {w.streamed: w for w in windows if w.target == "relay"}
    for w in windows:
        kind = "streamed" if w.streamed else "plain"
        relay = base.get(w.streamed)
        ratio = (
            f"{w.per_request / relay.per_request:.2f}×"
            if relay and relay.per_request and w.target != "relay"
            else "—"
        )
        rows = "—" if w.rows is None else f"{w.rows:,} / {w.requests:,}"
        lines.append(
            f"| {kind}, 1 conn | {w.target} | {w.requests:,} "
            f"| {w.per_request / 1000:,.1f} k | {ratio} | {rows} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--server", default=benchdb.LOCAL_SERVER, help="PostgreSQL")
    parser.add_argument(
        "--out",
        type=Path,
        default=procs.REPO / "benchmarks" / "results" / "instructions.md",
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if machine.tool_version([tool, "--version"]) == "not installed":
            sys.exit(f"{tool} is not installed: apt-get install -y valgrind")
    windows = asyncio.run(measure(args))
    text = report(windows, args)
    args.out.write_text(text)
    print(text)
    lost = [w for w in windows if w.rows is not None and w.rows < w.requests]
    if lost:
        sys.exit("the gateway stored fewer rows than the calls it answered")


if __name__ == "__main__":
    main()
