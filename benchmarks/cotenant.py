"""
A control for the one-connection tail: the bare relay beside the database's work.

tallygate's rows go to a PostgreSQL on the same two cores, which spends CPU
on every batch; the bare relay writes nothing and has the cores to itself.
This separates the two. In each round it loads the gateway at one connection
and measures what the database's processes burned meanwhile, as a share of
one core; then the direct run, the relay alone, and the relay beside a
co-tenant: a process that burns that share of a core in the recorder's rhythm
(busy for share × flush interval, once every flush interval). The order
rotates every round. It prints the medians of p50 and p99, the latency each
adds over the direct run, and the gateway's ratios to both relays.

The co-tenant is a busy loop, not PostgreSQL: it stands for the database's
CPU, not for its memory traffic or its locks. The gateway's rows must equal
the calls answered, as in ``benchmarks.run``.

    python -m benchmarks.cotenant                 # plain and streamed, ~3 min
    python -m benchmarks.cotenant --rounds 6 --kinds plain
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from benchmarks import benchdb, procs
from benchmarks.load import write_script
from benchmarks.run import (
    Cell,
    Sample,
    Target,
    measure,
    start_targets,
    stop_targets,
    summarise,
)
from gateway.config import RecorderSettings

# A busy loop of BUSY seconds every PERIOD seconds, until killed.
BURNER = """
import sys, time
busy, period = float(sys.argv[1]), float(sys.argv[2])
due = time.perf_counter()
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < busy:
        pass
    due += period
    time.sleep(max(0.0, due - time.perf_counter()))
"""

ROWS = ("direct", "relay", "relay + co-tenant", "tallygate")


def start_burner(share: float, period_s: float) -> subprocess.Popen:
    busy = min(share, 1.0) * period_s
    return subprocess.Popen(
        [sys.executable, "-c", BURNER, f"{busy:.6f}", f"{period_s:.6f}"]
    )


async def one_round(
    number: int,
    targets: dict[str, Target],
    script: Path,
    args: argparse.Namespace,
    upstream_port: int,
    url: str,
    server: int,
    samples: dict[str, list[Sample]],
    shares: list[float],
) -> None:
    """The gateway first (its database's share sets the co-tenant's), then
    the other three in an order that rotates with *number*."""
    gateway = await measure(
        targets["tallygate"], script, 1, args.duration, upstream_port, url, server
    )
    # The database's CPU over the wrk run, the run's last batch included.
    share = (gateway.database_s or 0.0) / gateway.load.duration_s
    samples["tallygate"].append(gateway)
    shares.append(share)
    others = ["direct", "relay", "relay + co-tenant"]
    shift = number % len(others)
    for name in others[shift:] + others[:shift]:
        target = targets["relay" if name.startswith("relay") else name]
        burner = start_burner(share, args.period) if name != target.name else None
        try:
            sample = await measure(target, script, 1, args.duration, upstream_port, url)
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
        samples[name].append(sample)
    print(
        f"round {number + 1}: database {share:.1%} of a core; p99 "
        + ", ".join(f"{name} {samples[name][-1].load.p99_ms:.2f}" for name in ROWS)
        + " ms",
        flush=True,
    )


def report(kind: str, samples: dict[str, list[Sample]], shares: list[float]) -> bool:
    """Print the table for one kind; return whether every call was stored."""
    # The same medians of per-round figures as benchmarks.run's table.
    cell = Cell(streamed=kind == "streamed", connections=1, samples=samples)
    summaries = {name: summarise(cell, name) for name in ROWS}
    print(
        f"\n{kind}, 1 connection, {len(samples['direct'])} rounds; the database "
        f"burned {statistics.median(shares):.1%} of a core (median; "
        f"{min(shares):.1%}-{max(shares):.1%})"
    )
    print(f"{'':18} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10}")
    for name, s in summaries.items():
        added = (
            ""
            if name == "direct"
            else (f" {s.added_p50_ms:10.3f} {s.added_p99_ms:10.3f}")
        )
        print(f"{name:18} {s.p50_ms:8.3f} {s.p99_ms:8.3f}{added}")
    gateway = summaries["tallygate"]
    for base in ("relay", "relay + co-tenant"):
        ratios = [
            f"{getattr(gateway, f) / getattr(summaries[base], f):.2f}×"
            if getattr(summaries[base], f) > 0
            else "—"
            for f in ("added_p50_ms", "added_p99_ms")
        ]
        print(f"tallygate's added p50 / p99 against {base}: {' / '.join(ratios)}")
    print(f"tallygate rows {gateway.rows:,} / {gateway.answered:,} answered")
    return gateway.rows == gateway.answered and not gateway.errors


async def main_async(args: argparse.Namespace) -> int:
    url = await benchdb.create_database(args.server)
    stored = True
    try:
        with tempfile.TemporaryDirectory(prefix="tallygate-cotenant-") as tmp_name:
            tmp = Path(tmp_name)
            setup = argparse.Namespace(
                targets=["direct", "relay", "tallygate"],
                chunks=args.chunks,
                gateway_log_level="WARNING",
            )
            upstream, started = start_targets(setup, tmp, url)
            try:
                server = await procs.postmaster_pid(url)
                if server is None:
                    print("the database server's process is not visible here")
                    return 2
                targets = {t.name: t for t in started}
                for kind in args.kinds:
                    script = write_script(tmp, kind == "streamed", client_usage=False)
                    for target in started:  # warm pools and caches
                        await measure(target, script, 1, 1, upstream.port, url)
                    samples: dict[str, list[Sample]] = defaultdict(list)
                    shares: list[float] = []
                    for number in range(args.rounds):
                        await one_round(
                            number, targets, script, args, upstream.port, url,
                            server, samples, shares,
                        )  # fmt: skip
                    stored = report(kind, samples, shares) and stored
            finally:
                stop_targets(upstream, started)
    finally:
        await benchdb.drop_database(args.server, url)
    if not stored:
        print("FAILED: the gateway stored fewer rows than it answered", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds a run")
    parser.add_argument(
        "--kinds", nargs="+", default=["plain", "streamed"],
        choices=["plain", "streamed"],
    )  # fmt: skip
    parser.add_argument("--chunks", type=int, default=10, help="chunks per stream")
    parser.add_argument(
        "--period", type=float,
        default=RecorderSettings().flush_interval_ms / 1000,
        help="the co-tenant's rhythm in seconds (the recorder's flush interval)",
    )  # fmt: skip
    parser.add_argument("--server", default=benchdb.LOCAL_SERVER, help="PostgreSQL")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
