"""
Bytecodes per call, function by function: where a proxy's Python work goes.

``instructions.py`` counts a proxy's machine instructions, but nearly all of a
Python server's land in the interpreter's loop, which names no Python
function. This counts bytecodes instead: each proxy runs under a tracer
(``sys.settrace`` with ``f_trace_opcodes``) that is off until the benchmark
switches it on (SIGUSR1) for a wrk window at one connection, and dumps its
counts per code object when switched off (SIGUSR2). The counts are as
repeatable as the calls: the same requests run the same bytecodes, whatever
else the machine does, but for how a stream's bytes split into reads (a
streamed count moves by a few percent from window to window). Work done once
per batch (the recorder's flush) is shared out over the window's calls.

A bytecode is not a fixed cost (a ``CALL`` into C may do a thousand times
the work of a ``LOAD_FAST``), and tracing makes every proxy some five times
slower, so only the counts are read, never the times. It answers "which
functions run the most Python per call, and how many more than the relay's",
which is where to look first.

    python -m benchmarks.opcodes --targets relay-http1 tallygate --top 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import runpy
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

WARMUP_S = 2.0
# The recorder's last batch of a window lands within this.
SETTLE_S = 0.5
# How long a traced child may take to write its counts.
DUMP_WAIT_S = 30.0


# The child: a module run under a tracer that the parent switches on and off


def run_traced(module: str, argv: list[str], out_dir: Path) -> None:
    """Run *module* as ``__main__``; SIGUSR1 starts counting, SIGUSR2 dumps."""
    ops: Counter[CodeType] = Counter()
    calls: Counter[CodeType] = Counter()
    dumps = 0

    def count(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            ops[frame.f_code] += 1
        return count

    def enter(frame: FrameType, event: str, arg: Any) -> Any:
        if event != "call":
            return None
        calls[frame.f_code] += 1
        frame.f_trace_opcodes = True
        return count

    def start(signum: int, frame: FrameType | None) -> None:
        ops.clear()
        calls.clear()
        sys.settrace(enter)

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal dumps
        sys.settrace(None)
        dumps += 1
        path = out_dir / f"{dumps}.tsv"
        lines = [f"{n}\t{calls[code]}\t{where(code)}\n" for code, n in ops.items()]
        path.with_suffix(".part").write_text("".join(lines))
        path.with_suffix(".part").rename(path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def where(code: CodeType) -> str:
    """A code object's file, line and name; a dataclass __init__ by its fields."""
    name = code.co_qualname
    if code.co_filename == "<string>":
        # Every dataclass's generated __init__ is "<string>:2:__init__".
        name += "(" + ", ".join(code.co_varnames[1 : code.co_argcount][:3]) + ", ...)"
    return f"{short_path(code.co_filename)}:{code.co_firstlineno}:{name}"


def short_path(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3."):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            if marker.startswith("lib/"):
                filename = filename.split("/", 1)[1]
    return filename.replace(str(Path(__file__).resolve().parent.parent) + "/", "")


# The parent: load each proxy, count a window, and compare


@dataclass
class Window:
    target: str
    streamed: bool
    requests: int
    ops: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)

    @property
    def kind(self) -> str:
        return "streamed" if self.streamed else "plain"

    def per_call(self, count: float) -> float:
        return count / self.requests if self.requests else 0.0

    def total(self) -> int:
        return sum(self.ops.values())

    def by_file(self) -> Counter[str]:
        files: Counter[str] = Counter()
        for key, n in self.ops.items():
            files[key.split(":", 1)[0]] += n
        return files

    def by_package(self) -> Counter[str]:
        """The counts by top-level package: aiohttp, gateway, asyncio, ..."""
        packages: Counter[str] = Counter()
        for file, n in self.by_file().items():
            top = file.split("/", 1)[0]
            packages[top.removesuffix(".py") if "/" in file else "(other)"] += n
        return packages


def read_dump(path: Path) -> tuple[Counter[str], Counter[str]]:
    deadline = time.monotonic() + DUMP_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no opcode counts in {path}")
        time.sleep(0.1)
    ops: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        n, c, key = line.split("\t", 2)
        ops[key] += int(n)
        calls[key] += int(c)
    return ops, calls


async def measure(args: argparse.Namespace) -> list[Window]:
    # Imported here: the child side must not pay for them.
    from benchmarks import benchdb, procs
    from benchmarks.instructions import target_argv
    from benchmarks.load import run_wrk, write_script
    from benchmarks.run import CHAT_PATH

    tmp = Path(tempfile.mkdtemp(prefix="tallygate-opcodes-"))
    scripts = {s: write_script(tmp, s) for s in (False, True)}
    url = await benchdb.create_database(args.server)
    upstream = procs.start_upstream(tmp)
    windows: list[Window] = []
    try:
        for name in args.targets:
            out_dir = tmp / name
            out_dir.mkdir()
            port = procs.free_port()
            module, *argv = target_argv(name, tmp, port, upstream.port, url)[2:]
            traced = [procs.PYTHON, "-m", "benchmarks.opcodes", "--child"]
            traced += [str(out_dir), "--", module, *argv]
            child = procs.start_child(
                name,
                traced,
                port,
                tmp,
                procs.clean_environment(),
            )
            try:
                target_url = f"http://127.0.0.1:{port}{CHAT_PATH}"
                for n, streamed in enumerate((False, True), start=1):
                    run_wrk(target_url, scripts[streamed], 1, WARMUP_S)
                    await asyncio.sleep(SETTLE_S)
                    os.kill(child.pid, signal.SIGUSR1)
                    load = run_wrk(target_url, scripts[streamed], 1, args.seconds)
                    await asyncio.sleep(SETTLE_S)
                    os.kill(child.pid, signal.SIGUSR2)
                    ops, calls = read_dump(out_dir / f"{n}.tsv")
                    window = Window(name, streamed, load.requests, ops, calls)
                    windows.append(window)
                    print(
                        f"{name:12} {window.kind:8} {load.requests:6,} calls  "
                        f"{window.per_call(window.total()):8,.0f} bytecodes/call",
                        flush=True,
                    )
            finally:
                child.stop(timeout_s=30)
    finally:
        upstream.stop(timeout_s=30)
        await benchdb.drop_database(args.server, url)
        shutil.rmtree(tmp, ignore_errors=True)
    return windows


def report(windows: list[Window], args: argparse.Namespace) -> str:
    from benchmarks import machine

    lines = [
        "# Bytecodes per call, by function",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        f"`python -m benchmarks.opcodes --seconds {args.seconds:g}`: one "
        f"connection, {args.seconds:g} s of wrk per cell, the bytecodes the "
        "proxy's Python ran (traced), per answered call.",
        "",
        *machine.describe(),
        "",
        "| cell | target | calls | bytecodes per call | Python calls per call |",
        "| --- | --- | --- | --- | --- |",
    ]
    for w in windows:
        lines.append(
            f"| {w.kind} | {w.target} | {w.requests:,} "
            f"| {w.per_call(w.total()):,.0f} "
            f"| {w.per_call(sum(w.calls.values())):,.0f} |"
        )
    for kind in ("plain", "streamed"):
        cells = [w for w in windows if w.kind == kind]
        if not cells:
            continue
        lines += side_by_side(f"{kind}: by package", "package", cells, "by_package")
        lines += side_by_side(f"{kind}: by file", "file", cells, "by_file", args.top)
        last = cells[-1]
        lines += [
            "",
            f"## {kind}: {last.target}'s functions",
            "",
            "| bytecodes per call | runs per call | function |",
            "| --- | --- | --- |",
        ]
        for key, n in last.ops.most_common(args.top):
            lines.append(
                f"| {last.per_call(n):,.1f} | {last.per_call(last.calls[key]):.2f} "
                f"| `{key}` |"
            )
    return "\n".join(lines) + "\n"


def side_by_side(
    title: str, heading: str, cells: list[Window], grouping: str, top: int | None = None
) -> list[str]:
    """A table of the cells' bytecodes per call by *grouping*, biggest first."""
    groups = {w.target: getattr(w, grouping)() for w in cells}
    totals: Counter[str] = Counter()
    for w in cells:
        totals.update({key: w.per_call(n) for key, n in groups[w.target].items()})
    lines = ["", f"## {title}", ""]
    lines.append(f"| {heading} | " + " | ".join(w.target for w in cells) + " |")
    lines.append("| --- |" + " --- |" * len(cells))
    for key, _ in totals.most_common(top):
        counts = [w.per_call(groups[w.target][key]) for w in cells]
        lines.append(f"| `{key}` | " + " | ".join(f"{c:,.0f}" for c in counts) + " |")
    return lines


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        separator = sys.argv.index("--")
        module, *argv = sys.argv[separator + 1 :]
        run_traced(module, argv, Path(sys.argv[2]))
        return
    from benchmarks.instructions import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--server", default=None, help="PostgreSQL")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    if args.server is None:
        from benchmarks import benchdb

        args.server = benchdb.LOCAL_SERVER
    text = report(asyncio.run(measure(args)), args)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
