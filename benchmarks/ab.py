"""
Two checkouts of the gateway side by side: is a change faster, in one run?

Starts the fake upstream and two gateways on one scratch database, A from
this checkout and B from ``--other`` (a ``git worktree`` of another commit,
say), then loads them with wrk in turns whose order rotates every round, and
prints CPU per call (the gateway's, and the PostgreSQL server's while it ran:
every process of the server, so run nothing else against it), requests per
second, the median p50 / p99 and the hypervisor's steal share of each,
with B's ratios to A. On this shared machine an A/B of one checkout against
itself gave 0.98× over 4 rounds and 0.83× over 2: use 4 rounds or more, and
repeat a run before believing a difference under 10-15 %.

With ``--database-core``, each turn keeps wrk, the upstream and the gateway
off the last core and every PostgreSQL process on it, as ``benchmarks.run``
does in its cells "database on its own core": the way to compare the tails
of two checkouts at one connection without the database's batch in them.

    git worktree add /tmp/before HEAD~1
    python -m benchmarks.ab --other /tmp/before --streamed --rounds 4
    python -m benchmarks.ab --other /tmp/before --connections 1 --database-core
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import benchdb, machine, procs
from benchmarks.load import run_wrk, write_script
from benchmarks.run import CHAT_PATH, write_gateway_config


@dataclass
class Turns:
    """What one checkout's turns added up to."""

    cpu_s: float = 0.0
    requests: int = 0
    duration_s: float = 0.0
    database_s: float = 0.0
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    steals: list[float] = field(default_factory=list)


def start_gateway(
    name: str, checkout: Path, port: int, up_port: int, url: str, tmp: Path
) -> procs.Child:
    directory = tmp / name
    directory.mkdir()
    config = write_gateway_config(directory, port, up_port, url, "WARNING")
    env = procs.clean_environment()
    # ``-m gateway`` from the checkout's own directory imports its package.
    env["PYTHONPATH"] = str(checkout)
    argv = [procs.PYTHON, "-m", "gateway", "serve", "--config", str(config)]
    return procs.start_child(
        name, argv, port, directory, env, startup_s=60, cwd=checkout
    )


async def compare(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tallygate-ab-"))
    script = write_script(tmp, args.streamed, client_usage=args.client_usage)
    children: list[procs.Child] = []
    url = await benchdb.create_database(args.server)
    try:
        upstream = procs.start_upstream(tmp)
        children.append(upstream)
        up_port = upstream.port
        targets = []
        for name, checkout in (("A", procs.REPO), ("B", args.other.resolve())):
            port = procs.free_port()
            child = start_gateway(name, checkout, port, up_port, url, tmp)
            children.append(child)
            targets.append((name, child))
        await asyncio.sleep(2)  # startup's collection and freeze
        server = await procs.postmaster_pid(url)
        placement = None
        if args.database_core:
            placement = procs.Placement.for_this_machine(server)
            if placement is None:
                raise SystemExit(
                    "--database-core needs two cores, root and a local server"
                )
        totals = {name: Turns() for name, _ in targets}
        for round_no in range(args.rounds):
            turn = round_no % len(targets)
            for name, child in targets[turn:] + targets[:turn]:
                before = procs.cpu_seconds(child.pid)
                server_before = procs.cpu_seconds(server) if server else 0.0
                ticks_before = machine.cpu_ticks()
                with procs.placed(placement, [upstream.pid, child.pid]) as cpus:
                    load = run_wrk(
                        f"http://127.0.0.1:{child.port}{CHAT_PATH}",
                        script,
                        args.connections,
                        args.duration,
                        cpus=cpus,
                    )
                turns = totals[name]
                turns.steals.append(
                    machine.steal_share(ticks_before, machine.cpu_ticks())
                )
                turns.cpu_s += procs.cpu_seconds(child.pid) - before
                turns.requests += load.requests
                turns.duration_s += load.duration_s
                turns.p50s.append(load.p50_ms)
                turns.p99s.append(load.p99_ms)
                # The last records of a turn are written within a flush.
                await asyncio.sleep(0.3)
                if server:
                    turns.database_s += procs.cpu_seconds(server) - server_before
        report(totals, args)
    finally:
        for child in reversed(children):
            child.stop()
        await benchdb.drop_database(args.server, url)
        shutil.rmtree(tmp, ignore_errors=True)


def report(totals: dict[str, Turns], args: argparse.Namespace) -> None:
    kind = "streamed" if args.streamed else "plain"
    own = ", database on its own core" if args.database_core else ""
    print(
        f"{kind}, {args.connections} connections{own}, {args.rounds} rounds of "
        f"{args.duration:g} s; B is {args.other}"
    )
    base: tuple[float, float, float] | None = None
    for name, turns in totals.items():
        requests = turns.requests
        cpu_us = turns.cpu_s / requests * 1e6 if requests else 0.0
        db_us = turns.database_s / requests * 1e6 if requests else 0.0
        rps = requests / turns.duration_s if turns.duration_s else 0.0
        if base is None:
            base = (cpu_us, rps, db_us or 1.0)
        print(
            f"{name}: {cpu_us:7.1f} µs/call ({cpu_us / base[0]:.2f}×)  "
            f"database {db_us:6.1f} µs/call ({db_us / base[2]:.2f}×)  "
            f"{rps:8,.0f} calls/s ({rps / base[1]:.2f}×)  "
            f"p50 {statistics.median(turns.p50s):.3f} ms  "
            f"p99 {statistics.median(turns.p99s):.3f} ms  "
            f"steal {statistics.median(turns.steals):.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--other", type=Path, required=True, help="checkout B")
    parser.add_argument("--streamed", action="store_true")
    parser.add_argument(
        "--client-usage", action="store_true", help="streams ask for their usage"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds a turn")
    parser.add_argument("--server", default=benchdb.LOCAL_SERVER, help="PostgreSQL")
    parser.add_argument(
        "--database-core", action="store_true",
        help="PostgreSQL on the last core, the rest of the chain off it",
    )  # fmt: skip
    args = parser.parse_args()
    if not (args.other / "gateway" / "__init__.py").is_file():
        parser.error(f"{args.other} is not a tallygate checkout")
    asyncio.run(compare(args))


if __name__ == "__main__":
    sys.exit(main())
