"""
Where the gateway's time goes per call: py-spy on tallygate under wrk load.

Starts the fake upstream and tallygate (full accounting, scratch database),
attaches ``py-spy record`` to the gateway while wrk loads it, and prints the
functions with the most self time, as a share of the busy samples and as
microseconds per request. ``--idle`` samples keep the loop's own wait out.

    python -m benchmarks.profile --streamed --connections 32 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks import benchdb, procs
from benchmarks.load import run_wrk, write_script
from benchmarks.run import write_gateway_config

RATE_HZ = 250


def self_times(raw: Path) -> tuple[Counter[str], int]:
    """Samples per innermost frame from py-spy's collapsed-stack output."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        samples = int(number)
        total += samples
        counts[stack.split(";")[-1]] += samples
    return counts, total


def inclusive_times(raw: Path, needle: str) -> int:
    """Samples whose stack passes through a frame containing *needle*."""
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if needle in stack:
            total += int(number)
    return total


async def profile(args: argparse.Namespace) -> int:
    async with benchdb.scratch_database(args.server) as url:
        await asyncio.to_thread(profile_target, args, url)
    return 0


def profile_target(args: argparse.Namespace, url: str) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="tallygate-profile-") as name:
        tmp = Path(name)
        env = procs.clean_environment()
        gw_port = procs.free_port()
        upstream = procs.start_upstream(tmp)
        up_port = upstream.port
        if args.target == "relay":
            argv = [procs.PYTHON, "-m", "benchmarks.relay", "--port", str(gw_port),
                    "--upstream", f"http://127.0.0.1:{up_port}"]  # fmt: skip
        else:
            config = write_gateway_config(tmp, gw_port, up_port, url, "WARNING")
            argv = [procs.PYTHON, "-m", "gateway", "serve", "--config", str(config)]
        gateway = procs.start_child(args.target, argv, gw_port, tmp, env, startup_s=60)
        try:
            script = write_script(tmp, args.streamed)
            target = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
            run_wrk(target, script, args.connections, 2)  # warm-up
            raw = tmp / "profile.txt"
            recorder = subprocess.Popen(
                [spy, "record", "--pid", str(gateway.pid), "--format", "raw",
                 "--rate", str(RATE_HZ), "--duration", str(int(args.seconds)),
                 "--nonblocking", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            cpu_before = procs.cpu_seconds(gateway.pid)
            load = run_wrk(target, script, args.connections, args.seconds)
            cpu = procs.cpu_seconds(gateway.pid) - cpu_before
            recorder.wait(timeout=args.seconds + 30)
        finally:
            gateway.stop()
            upstream.stop()
        counts, total = self_times(raw)
        report(args, counts, total, load.requests, cpu, raw)
        if args.keep:
            shutil.copy(raw, args.keep)


def report(
    args: argparse.Namespace,
    counts: Counter[str],
    total: int,
    requests: int,
    cpu_s: float,
    raw: Path,
) -> None:
    mode = "streamed" if args.streamed else "plain"
    print(
        f"{args.target}, {mode}, {args.connections} connections: "
        f"{requests:,} requests, "
        f"{cpu_s / max(requests, 1) * 1e6:.0f} µs CPU per request, {total} samples"
    )
    # py-spy without --idle drops samples of a thread waiting in epoll, so
    # every sample is busy time; spread over the requests that were served.
    per_sample_us = 1e6 / RATE_HZ
    print(f"{'share':>6} {'µs/req':>7}  function (file:line)")
    for frame, samples in counts.most_common(args.top):
        share = samples / total * 100
        us = samples * per_sample_us / max(requests, 1)
        print(f"{share:5.1f}% {us:7.1f}  {frame}")
    print("inclusive:")
    for needle in args.inclusive:
        samples = inclusive_times(raw, needle)
        print(
            f"{samples / total * 100:5.1f}% "
            f"{samples * per_sample_us / max(requests, 1):7.1f}  {needle}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--target", choices=("tallygate", "relay"), default="tallygate")
    parser.add_argument("--streamed", action="store_true")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--inclusive",
        nargs="*",
        default=[
            "forward (gateway/proxy.py",
            "admit (gateway/proxy.py",
            "relay_whole (gateway/proxy.py",
            "relay_stream (gateway/proxy.py",
            "submit_record (gateway/proxy.py",
            "build_record (gateway/calls.py",
            "feed (gateway/sse.py",
            "_write (gateway/recorder.py",
            "headers_for_upstream",
            "headers_for_client",
        ],
        help="frames whose inclusive share to print",
    )
    parser.add_argument("--keep", type=Path, help="copy the raw profile here")
    parser.add_argument("--server", default=benchdb.LOCAL_SERVER)
    return asyncio.run(profile(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
