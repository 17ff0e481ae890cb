"""
Where the one-connection tail waits: the scheduler's record of every wakeup.

At one connection a call is a chain of wakeups: wrk's request wakes the
proxy, the proxy's request wakes the fake upstream, and the answers come back
the same way. Each process waits from its wakeup until a core runs it: its
scheduling delay. For the bare relay and for tallygate in turn, this loads
the proxy at one connection while ``perf sched record`` traces the whole
machine, then reads ``perf sched timehist`` and prints, for the chain's
processes (wrk, the upstream, the proxy):

- their wakeups, and how many waited longer than ``--delayed-ms``;
- the delays' p99, p99.9 and longest;
- for the delayed wakeups, what the machine's cores ran while they waited:
  the busy time by process, and the share of core time that was idle.

A delayed wakeup beside an idle core waited behind whatever ran on its own
core (the trace does not say which core it was queued on, only where it ran
at last). The proxy's database work shows as ``postgres``.

Needs ``perf`` (Debian's ``linux-perf``) and tracefs, so root:

    apt-get install -y linux-perf
    mount -t tracefs nodev /sys/kernel/tracing   # when it is not mounted
    python -m benchmarks.wakeups --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import benchdb, machine, procs
from benchmarks.load import LoadResult, run_wrk, write_script
from benchmarks.run import start_targets, stop_targets

TRACEFS = Path("/sys/kernel/tracing")
# Started before wrk and stopped after it, so the whole window is traced.
LEAD_S = 0.3
# One line of ``perf sched timehist``: when a task stopped running, on which
# core, the task, and the wait, scheduling delay and run time (ms) before it.
TIMEHIST_LINE = re.compile(
    r"^\s*(?P<time>\d+\.\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<task>.+?)\s+"
    r"(?P<wait>\d+\.\d+)\s+(?P<delay>\d+\.\d+)\s+(?P<run>\d+\.\d+)\s*$"
)
# ``name[tid/pid]`` for a thread, ``name[pid]`` for a process's main thread.
TASK = re.compile(r"^(?P<name>.*)\[(?P<tid>\d+)(?:/(?P<pid>\d+))?\]$")
IDLE = "<idle>"


@dataclass(frozen=True)
class Run:
    """One stretch a task ran on a core, and how long it waited for it."""

    start: float
    end: float
    cpu: int
    name: str
    pid: int | None
    delay_ms: float


@dataclass
class Wakeups:
    """What the chain's wakeups in one window waited for."""

    wakeups: int = 0
    delays_ms: list[float] = field(default_factory=list)
    # Over the delayed wakeups' waits: ms of core time by process name
    # (``<idle>`` for a core with nothing to run).
    cores_ran: Counter[str] = field(default_factory=Counter)


def parse_timehist(text: str) -> list[Run]:
    """The runs of ``perf sched timehist`` output; other lines are skipped."""
    runs = []
    for line in text.splitlines():
        match = TIMEHIST_LINE.match(line)
        if match is None:
            continue
        end = float(match["time"])
        run_s = float(match["run"]) / 1000
        task = match["task"].strip()
        name, pid = task, None
        named = TASK.match(task)
        if named is not None:
            name = named["name"]
            pid = int(named["pid"] or named["tid"])
        runs.append(
            Run(end - run_s, end, int(match["cpu"]), name, pid, float(match["delay"]))
        )
    return runs


def analyse(
    runs: list[Run], pids: set[int], names: set[str], delayed_ms: float
) -> Wakeups:
    """
    The wakeups of the chain (processes in *pids*, or named in *names*)
    within the window where a *names* process ran, and what the delayed ones
    waited behind. Every run counts as a wakeup, one that follows a
    preemption too: its delay is then how long it waited to run again.
    """
    chain = [r for r in runs if r.pid in pids or r.name in names]
    loaders = [r for r in chain if r.name in names]
    if not loaders:
        return Wakeups()
    first, last = min(r.start for r in loaders), max(r.end for r in loaders)
    result = Wakeups()
    for run in chain:
        if run.start < first or run.start > last:
            continue
        result.wakeups += 1
        result.delays_ms.append(run.delay_ms)
        if run.delay_ms > delayed_ms:
            waited_from = run.start - run.delay_ms / 1000
            charge_wait(result, runs, waited_from, run.start)
    return result


def charge_wait(result: Wakeups, runs: list[Run], start: float, end: float) -> None:
    """Add what every core ran between *start* and *end* to *result*."""
    for other in runs:
        overlap_ms = (min(other.end, end) - max(other.start, start)) * 1000
        if overlap_ms > 0:
            result.cores_ran[other.name] += overlap_ms


def merged(windows: list[Wakeups]) -> Wakeups:
    """Several windows' wakeups as one."""
    total = Wakeups()
    for window in windows:
        total.wakeups += window.wakeups
        total.delays_ms += window.delays_ms
        total.cores_ran.update(window.cores_ran)
    return total


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def kernel_scheduling() -> str:
    """The kernel's tick rate and preemption model, where they can be read."""
    facts = []
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        if path.exists():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as config:
                for line in config:
                    if line.startswith(("CONFIG_HZ=", "CONFIG_PREEMPT_DYNAMIC=")):
                        facts.append(line.strip())
            break
    preempt = Path("/sys/kernel/debug/sched/preempt")
    try:
        facts.append(f"preempt: {preempt.read_text().strip()}")
    except OSError:
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
        for line in dmesg.stdout.splitlines():
            if "Dynamic Preempt:" in line:
                facts.append(line.split("]", 1)[-1].strip())
                break
    return ", ".join(facts) or "not readable"


def traced_window(
    url: str, script: Path, duration_s: float, trace: Path
) -> tuple[LoadResult, str]:
    """wrk at one connection under ``perf sched record``; its load and timehist."""
    recorder = subprocess.Popen(
        ["perf", "sched", "record", "-a", "-o", str(trace),
         "--", "sleep", f"{duration_s + 2 * LEAD_S:g}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # perf needs a moment to open its events on every core.
        time.sleep(LEAD_S)
        load = run_wrk(url, script, 1, duration_s)
    finally:
        recorder.wait(timeout=duration_s + 60)
    timehist = subprocess.run(
        ["perf", "sched", "timehist", "-i", str(trace)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    trace.unlink(missing_ok=True)
    return load, timehist.stdout


def describe(
    name: str, p50_ms: float, p99_ms: float, wakeups: Wakeups, delayed_ms: float
) -> str:
    delayed = [d for d in wakeups.delays_ms if d > delayed_ms]
    ran = wakeups.cores_ran
    total = sum(ran.values())
    busy = total - ran[IDLE]
    tasks = [(task, ms) for task, ms in ran.most_common() if task != IDLE]
    behind = ", ".join(f"{task} {ms / busy:.0%}" for task, ms in tasks[:3])
    idle = f"{ran[IDLE] / total:.0%}" if total else "—"
    return (
        f"| {name} | {p50_ms:.3f} | {p99_ms:.3f} | {wakeups.wakeups:,} "
        f"| {len(delayed)} ({len(delayed) / max(wakeups.wakeups, 1):.2%}) "
        f"| {quantile(wakeups.delays_ms, 0.99):.3f} "
        f"/ {quantile(wakeups.delays_ms, 0.999):.3f} "
        f"/ {max(wakeups.delays_ms, default=0.0):.3f} "
        f"| {behind or '—'} | {idle} |"
    )


async def main_async(args: argparse.Namespace) -> int:
    url = await benchdb.create_database(args.server)
    lines = [
        "# Where the one-connection tail waits",
        "",
        f"`python -m benchmarks.wakeups --rounds {args.rounds} "
        f"--duration {args.duration:g}`, {args.kind} calls at one connection; "
        f"a wakeup is delayed past {args.delayed_ms:g} ms.",
        "",
        *machine.describe(),
        f"- scheduler: {kernel_scheduling()}",
        "",
        "| round, target | p50 ms | p99 ms | chain wakeups | delayed "
        "| delay p99 / p99.9 / max ms | busy cores ran, while they waited "
        "| core time idle, while they waited |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    try:
        with tempfile.TemporaryDirectory(prefix="tallygate-wakeups-") as tmp_name:
            tmp = Path(tmp_name)
            setup = argparse.Namespace(
                targets=["relay", "tallygate"], chunks=args.chunks,
                gateway_log_level="WARNING",
            )  # fmt: skip
            upstream, targets = start_targets(setup, tmp, url)
            try:
                script = write_script(tmp, args.kind == "streamed")
                for target in targets:  # warm pools and caches
                    await asyncio.to_thread(run_wrk, target.url, script, 1, 1)
                seen: dict[str, list[tuple[LoadResult, Wakeups]]] = {
                    target.name: [] for target in targets
                }
                for number in range(args.rounds):
                    order = targets if number % 2 == 0 else targets[::-1]
                    for target in order:
                        load, timehist = await asyncio.to_thread(
                            traced_window, target.url, script, args.duration,
                            tmp / "perf.data",
                        )  # fmt: skip
                        assert target.pid is not None
                        wakeups = analyse(
                            parse_timehist(timehist),
                            {upstream.pid, *procs.tree_pids(target.pid)},
                            {"wrk"},
                            args.delayed_ms,
                        )
                        row = describe(
                            f"{number + 1}, {target.name}", load.p50_ms,
                            load.p99_ms, wakeups, args.delayed_ms,
                        )  # fmt: skip
                        lines.append(row)
                        print(row, flush=True)
                        seen[target.name].append((load, wakeups))
                for name, windows in seen.items():
                    lines.append(
                        describe(
                            f"all rounds, {name} (median p50, p99)",
                            statistics.median(load.p50_ms for load, _ in windows),
                            statistics.median(load.p99_ms for load, _ in windows),
                            merged([w for _, w in windows]),
                            args.delayed_ms,
                        )
                    )
            finally:
                stop_targets(upstream, targets)
    finally:
        await benchdb.drop_database(args.server, url)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds a run")
    parser.add_argument("--kind", choices=["plain", "streamed"], default="plain")
    parser.add_argument("--chunks", type=int, default=10, help="chunks per stream")
    parser.add_argument("--delayed-ms", type=float, default=0.5)
    parser.add_argument("--output", type=Path, help="also write the table here")
    parser.add_argument("--server", default=benchdb.LOCAL_SERVER, help="PostgreSQL")
    args = parser.parse_args(argv)
    if shutil.which("perf") is None:
        sys.exit("perf is not installed: apt-get install -y linux-perf")
    if not (TRACEFS / "events" / "sched").is_dir():
        sys.exit(f"tracefs is not mounted: mount -t tracefs nodev {TRACEFS}")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
