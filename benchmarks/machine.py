"""What the figures were measured on: machine, versions, load average."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_ticks() -> tuple[int, int]:
    """(steal, all) clock ticks of every CPU since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    # user nice system idle iowait irq softirq steal; guest time is in user.
    ticks = [int(x) for x in fields[:8]]
    return ticks[7] if len(ticks) > 7 else 0, sum(ticks)


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """
    The share of CPU time the hypervisor gave to others between two readings
    of ``cpu_ticks``: on a virtual machine, time a runnable process waited
    for a CPU that was not there, which lands in the latency tail.
    """
    steal, total = after[0] - before[0], after[1] - before[1]
    return steal / total if total > 0 else 0.0


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def tool_version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent,
    )
    return done.stdout.strip() or "unknown"


def describe(postgres_version: str | None = None) -> list[str]:
    """Markdown bullet lines naming the machine and every version in play."""
    lines = [
        f"- machine: {os.cpu_count()} CPUs ({cpu_model()}), "
        f"{memory_gib():.1f} GiB memory, Linux {platform.release()}",
        f"- Python {platform.python_version()}, aiohttp {package_version('aiohttp')}, "
        f"uvloop {package_version('uvloop')}, asyncpg {package_version('asyncpg')}, "
        f"orjson {package_version('orjson')}, tallygate "
        f"{package_version('tallygate')} at commit {git_commit()}",
    ]
    if postgres_version:
        lines.append(f"- PostgreSQL {postgres_version}")
    lines.append(f"- {tool_version(['wrk', '-v'])}; {tool_version(['nginx', '-v'])}")
    return lines
