"""
What the gateway costs a call, side by side with a bare relay, in one run.

Starts the fake upstream, the bare relay, tallygate (full accounting, on a
fresh database on the local PostgreSQL that is dropped afterwards) and nginx
when installed, then loads each with wrk, interleaved: for every cell (plain
or streamed, 1 or 32 connections) each target runs back to back, in an order
that rotates every round, so that noise from the shared machine falls on all
of them alike. The one-connection cells run a second time with the database
on a core of its own (``procs.Placement``; ``--no-database-core`` skips
them). Writes a markdown report and exits non-zero when the gateway stored
fewer rows than the calls it forwarded, or a call failed.

    python -m benchmarks.run            # about 4 minutes
    python -m benchmarks.run --quick    # about 1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

if __package__ in (None, ""):
    # Run as ``python benchmarks/run.py``: make the checkout importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import benchdb, machine, procs
from benchmarks.load import LoadResult, run_wrk, write_script
from benchmarks.relay import VARIANTS as RELAY_VARIANTS

TARGETS = ("direct", "relay", "relay-http1", "tallygate", "nginx")
# Measured only when asked for (--targets): a floor below the relay, and
# tallygate behind aiohttp's server instead of its own front door.
OPTIONAL_TARGETS = ("relay-raw", "tallygate-aiohttp")
# The gateways among the targets, and the front door each is served behind.
GATEWAYS = {"tallygate": "gateway", "tallygate-aiohttp": "aiohttp"}
RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
USAGE_ASKED = {
    False: "streams do not ask for usage: the gateway asks and hides the chunk",
    True: "streams ask for usage themselves",
}
CHAT_PATH = "/v1/chat/completions"
# Longer than the recorder's flush interval, with room for a slow batch.
ROWS_WAIT_S = 15.0


@dataclass
class Target:
    name: str
    port: int
    child: procs.Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None


@dataclass
class Sample:
    load: LoadResult
    cpu_s: float
    answered: int
    rows: int | None
    rss_mib: float
    # The share of CPU time stolen by the hypervisor during the wrk run.
    steal: float
    # CPU of every process of the database server, for tallygate's runs.
    database_s: float | None = None


@dataclass
class Cell:
    streamed: bool
    connections: int
    # target -> samples in round order
    samples: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))
    # wrk, the upstream and the proxy kept off the database's core (Placement).
    database_core: bool = False

    @property
    def label(self) -> str:
        kind = "streamed" if self.streamed else "plain"
        own = ", database on its own core" if self.database_core else ""
        return f"{kind}, {self.connections} conn{own}"


def upstream_count(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as reply:
        return orjson.loads(reply.read())["completions"]


def write_gateway_config(
    directory: Path,
    port: int,
    upstream_port: int,
    database_url: str,
    log_level: str,
    front_door: str = "gateway",
) -> Path:
    path = directory / "tallygate.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
log_level = "{log_level}"
front_door = "{front_door}"

[database]
url = "{database_url}"
data_dir = "{directory / "data"}"

[upstreams.fake]
base_url = "http://127.0.0.1:{upstream_port}/v1"
default = true

[pricing."bench-model"]
input = "0.15"
output = "0.60"
"""
    )
    return path


def write_nginx_config(directory: Path, port: int, upstream_port: int) -> Path:
    """A plain reverse proxy: keep-alive upstream, no buffering of streams."""
    root = directory / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub).chmod(0o777)
    path = root / "nginx.conf"
    path.write_text(
        f"""
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream fake {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
    )
    return path


def start_targets(
    args: argparse.Namespace, tmp: Path, database_url: str
) -> tuple[procs.Child, list[Target]]:
    env = procs.clean_environment()
    python = procs.PYTHON
    upstream = procs.start_upstream(tmp, "--chunks", str(args.chunks))
    up_port = upstream.port
    targets = [Target("direct", up_port)]
    wanted = set(args.targets)
    for name, options in RELAY_VARIANTS.items():
        if name not in wanted:
            continue
        port = procs.free_port()
        child = procs.start_child(
            name,
            [python, "-m", "benchmarks.relay", "--port", str(port),
             "--upstream", f"http://127.0.0.1:{up_port}", *options],
            port, tmp, env,
        )  # fmt: skip
        targets.append(Target(name, port, child))
    for name, door in GATEWAYS.items():
        if name not in wanted:
            continue
        port = procs.free_port()
        directory = tmp / name
        directory.mkdir()
        config = write_gateway_config(
            directory, port, up_port, database_url, args.gateway_log_level, door
        )
        child = procs.start_child(
            name,
            [python, "-m", "gateway", "serve", "--config", str(config)],
            port, directory, env, startup_s=60,
        )  # fmt: skip
        targets.append(Target(name, port, child))
    if "nginx" in wanted:
        if machine.tool_version(["nginx", "-v"]) == "not installed":
            print("nginx not installed; skipped (apt-get install -y nginx)")
        else:
            port = procs.free_port()
            config = write_nginx_config(tmp, port, up_port)
            child = procs.start_child(
                "nginx",
                ["nginx", "-c", str(config), "-p", str(config.parent),
                 "-e", str(config.parent / "error.log")],
                port, tmp, env,
            )  # fmt: skip
            targets.append(Target("nginx", port, child))
    return upstream, [t for t in targets if t.name in wanted]


def stop_targets(upstream: procs.Child, targets: list[Target]) -> None:
    """Stop what ``start_targets`` started, the upstream last."""
    for target in reversed(targets):
        if target.child:
            target.child.stop()
    upstream.stop()


async def wait_for_rows(url: str, before: int, expected: int) -> int:
    """Rows added since *before*, once they reach *expected* or stop growing."""
    deadline = time.monotonic() + ROWS_WAIT_S
    added = await benchdb.count_rows(url) - before
    while added < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        added = await benchdb.count_rows(url) - before
    return added


async def measure(
    target: Target,
    script: Path,
    connections: int,
    duration_s: float,
    upstream_port: int,
    database_url: str,
    server: int | None = None,
    placement: procs.Placement | None = None,
    upstream_pid: int | None = None,
) -> Sample:
    """
    One wrk run against *target*, with the proxy's CPU, RSS and rows, and
    for tallygate the CPU of the database *server* (the postmaster's pid).
    With a *placement*, wrk, the upstream and the proxy run off the
    database's core while wrk runs.
    """
    answered_before = upstream_count(upstream_port)
    accounted = target.name in GATEWAYS
    rows_before = await benchdb.count_rows(database_url) if accounted else 0
    server = server if accounted else None
    database_before = procs.cpu_seconds(server) if server else 0.0
    cpu_before = procs.cpu_seconds(target.pid) if target.pid else 0.0
    chain = [pid for pid in (upstream_pid, target.pid) if pid]
    with procs.placed(placement, chain) as cpus:
        ticks_before = machine.cpu_ticks()
        load = await asyncio.to_thread(
            run_wrk, target.url, script, connections, duration_s, 1, cpus
        )
    steal = machine.steal_share(ticks_before, machine.cpu_ticks())
    rss = procs.rss_mib(target.pid) if target.pid else 0.0
    # Let calls that were in flight when wrk stopped finish upstream.
    await asyncio.sleep(0.2)
    answered = upstream_count(upstream_port) - answered_before
    rows = None
    if accounted:
        rows = await wait_for_rows(database_url, rows_before, answered)
    else:
        # The same idle time for every target, so settling costs all alike.
        await asyncio.sleep(0.2)
    cpu = procs.cpu_seconds(target.pid) - cpu_before if target.pid else 0.0
    # Read once the rows are in, so the run's last batch is counted too.
    database = procs.cpu_seconds(server) - database_before if server else None
    return Sample(load, cpu, answered, rows, rss, steal, database)


async def run_cells(
    args: argparse.Namespace,
    targets: list[Target],
    upstream: procs.Child,
    database_url: str,
    tmp: Path,
    server: int | None,
    placement: procs.Placement | None = None,
) -> list[Cell]:
    scripts = {
        flag: write_script(tmp, flag, client_usage=args.client_usage)
        for flag in (False, True)
    }
    upstream_port = upstream.port
    cells = [
        Cell(streamed, connections)
        for streamed in (False, True)
        for connections in args.connections
    ]
    if placement is not None:
        # Only one connection's calls fit the cores left to them; 32 would be
        # throttled for every target alike and measure nothing more.
        cells += [
            Cell(cell.streamed, 1, database_core=True)
            for cell in cells
            if cell.connections == 1
        ]
    # Warm the pools, price cache and allocator before anything counts.
    for cell in cells:
        for target in targets:
            await measure(
                target, scripts[cell.streamed], cell.connections, 1,
                upstream_port, database_url,
            )  # fmt: skip
    for number in range(args.rounds):
        for cell in cells:
            shift = number % len(targets)
            order = targets[shift:] + targets[:shift]
            for target in order:
                sample = await measure(
                    target, scripts[cell.streamed], cell.connections,
                    args.duration, upstream_port, database_url, server,
                    placement if cell.database_core else None, upstream.pid,
                )  # fmt: skip
                cell.samples[target.name].append(sample)
                print(describe_sample(number, cell, target.name, sample), flush=True)
    return cells


def describe_sample(number: int, cell: Cell, name: str, sample: Sample) -> str:
    load = sample.load
    rows = "" if sample.rows is None else f" rows {sample.rows}/{sample.answered}"
    cpu = ""
    if name != "direct" and load.requests:
        cpu = f" cpu {cpu_per_call(sample):.0f} µs/req"
    return (
        f"round {number + 1} {cell.label:<20} {name:<10} {load.rps:8.0f} rps "
        f"p50 {load.p50_ms:6.2f} ms p99 {load.p99_ms:6.2f} ms"
        f"{cpu} steal {sample.steal:.0%} errors {load.errors}{rows}"
    )


@dataclass
class Summary:
    rps: float
    rps_spread: float
    p50_ms: float
    p99_ms: float
    added_p50_ms: float
    added_p99_ms: float
    cpu_us: float | None
    rss_mib: float
    steal: float
    requests: int
    errors: int
    answered: int
    rows: int | None
    # The database server's CPU per answered call, and as a share of one core
    # over the wrk runs: tallygate only.
    database_us: float | None = None
    database_share: float | None = None


def summarise(cell: Cell, name: str) -> Summary:
    samples = cell.samples[name]
    direct = cell.samples["direct"]
    rps = [s.load.rps for s in samples]
    requests = sum(s.load.requests for s in samples)
    # Added latency is taken round by round against the direct run next to it.
    added_p50 = [
        s.load.p50_ms - d.load.p50_ms for s, d in zip(samples, direct, strict=True)
    ]
    added_p99 = [
        s.load.p99_ms - d.load.p99_ms for s, d in zip(samples, direct, strict=True)
    ]
    rows = [s.rows for s in samples]
    database = [s.database_s for s in samples if s.database_s is not None]
    answered = sum(s.answered for s in samples)
    seconds = sum(s.load.duration_s for s in samples)
    return Summary(
        rps=statistics.median(rps),
        rps_spread=(max(rps) - min(rps)) / statistics.median(rps) if rps[0] else 0.0,
        p50_ms=statistics.median(s.load.p50_ms for s in samples),
        p99_ms=statistics.median(s.load.p99_ms for s in samples),
        added_p50_ms=statistics.median(added_p50),
        added_p99_ms=statistics.median(added_p99),
        # The median of the rounds, as every figure here: a slow spell that
        # falls on one round of one target does not carry the whole cell.
        cpu_us=(
            statistics.median(cpu_per_call(s) for s in samples)
            if name != "direct" and all(s.load.requests for s in samples)
            else None
        ),
        rss_mib=max(s.rss_mib for s in samples),
        steal=statistics.median(s.steal for s in samples),
        requests=requests,
        errors=sum(s.load.errors for s in samples),
        answered=answered,
        rows=None if rows[0] is None else sum(r or 0 for r in rows),
        database_us=sum(database) / answered * 1e6 if database and answered else None,
        database_share=sum(database) / seconds if database and seconds else None,
    )


def figure(value: float | None, floor: float | None, digits: int) -> str:
    """*value* with its ratio to the relay's figure, or a dash when unmeasured."""
    if value is None:
        return "—"
    text = f"{value:,.{digits}f}"
    if floor:
        text += f" ({value / floor:.2f}×)"
    return text


def table_row(cell: Cell, name: str, s: Summary, relay: Summary | None) -> str:
    direct = name == "direct"

    def of(attribute: str) -> float | None:
        return getattr(relay, attribute) if relay else None

    columns = [
        cell.label,
        name,
        f"{figure(s.rps, of('rps'), 0)} ±{s.rps_spread * 50:.0f}%",
        figure(s.p50_ms, of("p50_ms"), 3),
        figure(s.p99_ms, of("p99_ms"), 3),
        figure(None if direct else s.added_p50_ms, of("added_p50_ms"), 3),
        figure(None if direct else s.added_p99_ms, of("added_p99_ms"), 3),
        figure(s.cpu_us, of("cpu_us"), 0),
        figure(None if direct else s.rss_mib, None, 1),
        f"{s.steal:.0%}",
        "—" if s.rows is None else f"{s.rows:,} / {s.answered:,}",
    ]
    return "| " + " | ".join(columns) + " |"


def render(
    args: argparse.Namespace,
    cells: list[Cell],
    names: list[str],
    peaks: dict[str, float],
    header: list[str],
    load_before: str,
    load_after: str,
) -> tuple[str, bool]:
    """The markdown report, and whether every target was met."""
    summaries = {
        (cell.label, name): summarise(cell, name) for cell in cells for name in names
    }
    lines = [
        "# tallygate benchmark: cost of a call against a bare relay",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        f"`{' '.join(['python -m benchmarks.run', *sys.argv[1:]])}`: "
        f"{args.rounds} interleaved rounds of {args.duration:g} s per cell and "
        f"target, {args.chunks} content chunks per stream "
        f"({USAGE_ASKED[args.client_usage]}), gateway log level "
        f"{args.gateway_log_level}.",
        "",
        *header,
        f"- load average before / after: {load_before} / {load_after}",
        "",
        "Ratios in parentheses are against the bare relay. Latency is to the last "
        "byte of the response (wrk), median of the per-round p50 / p99; *added* "
        "is the target's figure minus the direct run's in the same round. CPU is "
        "utime+stime of the proxy process tree per answered request, median of "
        "the rounds; RSS is the "
        "highest VmRSS seen after a cell. *Steal* is the median share of the "
        "machine's CPU time the hypervisor gave to other guests while wrk ran "
        "(`/proc/stat`): time a runnable process waited, which lands in the "
        "latency tail of whichever target it falls on.",
        "",
        *(
            [
                "In the cells *with the database on its own core*, wrk, the "
                "upstream and the proxy are kept on the other cores while wrk "
                "runs, and every process of the PostgreSQL server on the last "
                "one (`sched_setaffinity`), as with a database on cores or a "
                "machine of its own. Elsewhere the scheduler places them, and "
                "on a shared machine it queues a woken process behind the "
                "database's batch (`python -m benchmarks.wakeups` traces it).",
                "",
            ]
            if any(cell.database_core for cell in cells)
            else []
        ),
        "| cell | target | RPS | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| CPU µs/req | RSS MiB | steal | rows / answered |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cell in cells:
        relay = summaries.get((cell.label, "relay"))
        for name in names:
            base = relay if name != "relay" else None
            lines.append(table_row(cell, name, summaries[(cell.label, name)], base))
    lines += ["", "Peak RSS (VmHWM) over the whole run: " + ", ".join(
        f"{name} {value:.1f} MiB" for name, value in peaks.items()
    ) + ".", ""]  # fmt: skip
    database = [
        (cell.label, name, s)
        for cell in cells
        for name in GATEWAYS
        if (s := summaries.get((cell.label, name))) and s.database_us
    ]
    if database:
        lines += [
            "The database's CPU while a gateway ran (every process of the local "
            "PostgreSQL server: the batch inserts and their rollup triggers; not "
            "in the CPU column, on the same cores): "
            + "; ".join(
                f"{label}, {name}: {s.database_us:.0f} µs per call, "
                f"{s.database_share:.1%} of a core"
                for label, name, s in database
            )
            + ". `python -m benchmarks.cotenant` runs the relay beside a busy "
            "loop that burns as much.",
            "",
        ]
    checks = list(check_targets(cells, summaries, peaks))
    if checks:
        lines += [
            "## Targets",
            "",
            "| target | measured | verdict |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {what} | {measured} | {VERDICTS[ok]} |"
                  for what, measured, ok in checks]  # fmt: skip
        lines.append("")
    return "\n".join(lines), all(ok for _, _, ok in checks)


VERDICTS = {True: "met", False: "**not met**", None: "undecided"}


def ratio(value: float, limit: float) -> str:
    """*value* as a ratio, with a third digit where two would round onto *limit*."""
    if f"{value:.2f}" == f"{limit:.2f}" and value != limit:
        return f"{value:.3f}×"
    return f"{value:.2f}×"


def cpu_per_call(sample: Sample) -> float:
    """The proxy's CPU per answered call in one round, in µs."""
    return sample.cpu_s / sample.load.requests * 1e6


def calls_per_second(sample: Sample) -> float:
    return sample.load.rps


def round_by_round(cell: Cell, figure: Callable[[Sample], float]) -> str:
    """
    tallygate's *figure* over the relay's, round by round: the two ran next
    to each other, so a slow spell of the machine moves both. The verdict
    stays on the medians; these show how far the noise reaches.
    """
    pairs = zip(cell.samples["tallygate"], cell.samples["relay"], strict=False)
    ratios = [figure(g) / figure(r) for g, r in pairs if figure(r)]
    if not ratios:
        return ""
    return f" (round by round {', '.join(f'{x:.2f}×' for x in ratios)})"


def check_targets(
    cells: list[Cell],
    summaries: dict[tuple[str, str], Summary],
    peaks: dict[str, float],
) -> Iterator[tuple[str, str, bool | None]]:
    """
    Yield (target, measured, met) for each goal of the issue; met is None
    when the run cannot tell (the direct run's own tail above both proxies').
    """
    if not any(name == "tallygate" for _, name in summaries) or not any(
        name == "relay" for _, name in summaries
    ):
        return
    top = max(c.connections for c in cells)
    for cell in cells:
        # A placed cell measures the one-connection latency only: its cores
        # are fewer than the machine's by design.
        at_top = cell.connections == top and not cell.database_core
        gw = summaries[(cell.label, "tallygate")]
        relay = summaries[(cell.label, "relay")]
        if at_top and gw.cpu_us and relay.cpu_us:
            r = gw.cpu_us / relay.cpu_us
            yield (
                f"CPU per call ≤ 1.2× relay ({cell.label})",
                f"{gw.cpu_us:.0f} vs {relay.cpu_us:.0f} µs = {ratio(r, 1.2)}"
                + round_by_round(cell, cpu_per_call),
                r <= 1.2,
            )
        if cell.connections == 1:
            for pct in ("p50", "p99"):
                g = getattr(gw, f"added_{pct}_ms")
                b = getattr(relay, f"added_{pct}_ms")
                what = f"latency added {pct} ≤ 1.1× relay ({cell.label})"
                if b > 0:
                    r = g / b
                    yield what, f"{g:.3f} vs {b:.3f} ms = {ratio(r, 1.1)}", r <= 1.1
                elif g > 0:
                    yield what, f"{g:.3f} vs {b:.3f} ms: the relay added none", False
                else:
                    # Both below the direct run's own figure: noise, not a ratio.
                    yield what, f"{g:.3f} vs {b:.3f} ms: neither added any", None
        if at_top:
            r = gw.rps / relay.rps
            yield (
                f"RPS ≥ 0.9× relay ({cell.label})",
                f"{gw.rps:,.0f} vs {relay.rps:,.0f} = {ratio(r, 0.9)}"
                f"{round_by_round(cell, calls_per_second)}",
                r >= 0.9,
            )
            yield (
                f"steady RSS < 80 MiB ({cell.label})",
                f"{gw.rss_mib:.1f} MiB",
                gw.rss_mib < 80,
            )
    for cell in cells:
        gw = summaries[(cell.label, "tallygate")]
        yield (
            f"every call stored ({cell.label})",
            f"{gw.rows:,} rows / {gw.answered:,} answered, {gw.errors} failed",
            gw.rows == gw.answered and gw.errors == 0,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per cell")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--chunks", type=int, default=10, help="chunks per stream")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=list(TARGETS),
        choices=TARGETS + OPTIONAL_TARGETS,
    )
    parser.add_argument(
        "--gateway-log-level", default="WARNING",
        help="tallygate's log level (INFO logs a line per call)",
    )  # fmt: skip
    parser.add_argument(
        "--client-usage", action="store_true",
        help="streams ask for their usage chunk themselves (every target gets it)",
    )  # fmt: skip
    parser.add_argument("--server", default=benchdb.LOCAL_SERVER, help="PostgreSQL")
    parser.add_argument(
        "--no-database-core", dest="database_core", action="store_false",
        help="skip the one-connection cells with the database on its own core",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s cells")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    if "direct" not in args.targets:
        args.targets.insert(0, "direct")
    return args


async def main_async(args: argparse.Namespace) -> int:
    load_before = machine.load_average()
    database_url = await benchdb.create_database(args.server)
    try:
        with tempfile.TemporaryDirectory(prefix="tallygate-bench-") as tmp_name:
            tmp = Path(tmp_name)
            upstream, targets = start_targets(args, tmp, database_url)
            try:
                server = await procs.postmaster_pid(database_url)
                placement = None
                if args.database_core:
                    placement = procs.Placement.for_this_machine(server)
                    if placement is None:
                        print(
                            "no cells with the database on its own core: one "
                            "core, no local server, or no right to move it"
                        )
                cells = await run_cells(
                    args, targets, upstream, database_url, tmp, server, placement
                )
                peaks = {t.name: procs.peak_rss_mib(t.pid) for t in targets if t.pid}
            finally:
                stop_targets(upstream, targets)
        header = machine.describe(await benchdb.server_version(database_url))
    finally:
        await benchdb.drop_database(args.server, database_url)
    report, met = render(
        args, cells, [t.name for t in targets], peaks, header,
        load_before, machine.load_average(),
    )  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print()
    print(report)
    print(f"written to {args.output}")
    gateway = [
        (f"{cell.label}, {name}", summarise(cell, name))
        for cell in cells
        for name in GATEWAYS
        if name in cell.samples
    ]
    lost = [(label, s) for label, s in gateway if s.rows != s.answered or s.errors]
    if lost:
        for label, s in lost:
            print(
                f"FAILED: {label}: {s.rows} rows for {s.answered} answered calls, "
                f"{s.errors} failed calls",
                file=sys.stderr,
            )
        return 1
    if not met:
        print("some targets not met (see the table); every call was stored")
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
