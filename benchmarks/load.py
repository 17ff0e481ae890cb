"""
The load generator: ``wrk`` with a Lua script that POSTs a chat completion.

wrk keeps a fixed number of keep-alive connections busy for a fixed time and
times each request until its whole response has arrived (for a stream, the
last chunk), which is the latency we report. The script's ``done`` hook
prints the summary as one JSON line, so percentiles come from wrk's own
histogram rather than from its rounded text output.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson

MARK = "WRKJSON "

SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-not-a-secret"
wrk.headers["X-Purpose"] = "benchmark"
wrk.headers["X-Ticker"] = "BENCH"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,'
    .. '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,'
    .. '"p99_us":%%d,"mean_us":%%.1f,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
"""


def chat_body(
    streamed: bool, model: str = "bench-model", *, client_usage: bool = False
) -> bytes:
    """
    The request. A stream asks for its usage chunk only with *client_usage*:
    by default, as the openai client does, it does not, and the gateway asks
    for it (one more event, relayed to nobody) while the relays get none.
    """
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say ten words."}],
        "max_tokens": 16,
    }
    if streamed:
        body["stream"] = True
        if client_usage:
            body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def write_script(
    directory: Path, streamed: bool, *, client_usage: bool = False
) -> Path:
    path = directory / ("stream.lua" if streamed else "plain.lua")
    body = chat_body(streamed, client_usage=client_usage).decode()
    path.write_text(SCRIPT % {"body": body, "mark": MARK})
    return path


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    return path


def run_wrk(
    url: str,
    script: Path,
    connections: int,
    duration_s: float,
    threads: int = 1,
    cpus: set[int] | None = None,
) -> LoadResult:
    """Run wrk against *url* for *duration_s* (on *cpus*) and return its summary."""
    # wrk reads a duration as a whole number of a unit: "1.5s" and "1500ms"
    # only print its usage, which would fail the run with no reason given.
    if duration_s < 1 or duration_s != int(duration_s):
        raise ValueError(f"wrk runs whole seconds, not {duration_s:g}")
    argv = [
        find_wrk(),
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    if cpus is not None:
        argv = ["taskset", "--cpu-list", ",".join(map(str, sorted(cpus))), *argv]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 30, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            data = orjson.loads(line[len(MARK) :])
            break
    else:
        raise RuntimeError(f"wrk gave no summary: {done.stdout}{done.stderr}")
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )
