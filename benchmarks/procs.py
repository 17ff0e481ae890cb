"""
Child processes of a benchmark, and what ``/proc`` says they cost.

CPU time is read over the whole process tree (nginx has a master and workers,
which are alive, so their time is not yet in the master's ``cutime``) plus the
children already reaped. Ticks are 10 ms, so a cell must run long enough to
spend many of them; per-request figures divide totals, never sum samples.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PYTHON = sys.executable
# Children run from the checkout, so ``-m benchmarks.x`` and ``-m gateway``
# find this tree whatever the caller's working directory.
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    """Return once something accepts on *port*; raise if *process* dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {timeout_s} s")


@dataclass
class Child:
    """One started process, its log file and the port it serves."""

    name: str
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it will not go; only ever this one process."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)


def start_child(
    name: str,
    argv: Sequence[str],
    port: int,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    startup_s: float = 30.0,
    cwd: Path = REPO,
) -> Child:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            list(argv),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    child = Child(name, process, port, log_path)
    try:
        wait_for_port(port, process, startup_s)
    except Exception:
        child.stop()
        sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
        raise
    return child


def start_upstream(log_dir: Path, *options: str) -> Child:
    """The fake upstream (``benchmarks.upstream``) on a free port."""
    port = free_port()
    argv = [PYTHON, "-m", "benchmarks.upstream", "--port", str(port), *options]
    return start_child("upstream", argv, port, log_dir, clean_environment())


def clean_environment() -> dict[str, str]:
    """This environment without settings that would reconfigure the gateway."""
    classic = {
        "DATABASE_URL",
        "TOKEN_DAILY_BUDGET_USD",
        "TOKEN_MONTHLY_BUDGET_USD",
        "TELEGRAM_BOT_TOKEN",
        "TELEGRAM_CHAT_ID",
    }
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TALLYGATE_") and k not in classic
    }


def tree_pids(root: int) -> list[int]:
    """*root* and every live descendant."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = read_stat(int(entry))
        except OSError:
            continue
        parents.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def read_stat(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` from the state on (index 0 is state)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ")".
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(root: int) -> float:
    """utime + stime of the tree, reaped children included."""
    ticks = 0
    for pid in tree_pids(root):
        try:
            fields = read_stat(pid)
        except OSError:
            continue
        # utime, stime, cutime, cstime are stat fields 14-17 (1-based).
        ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / TICKS_PER_S


async def postmaster_pid(dsn: str) -> int | None:
    """The local PostgreSQL server's main process: its backends are children."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        # Read while the backend lives: it exits with the connection.
        return int(read_stat(backend)[1])
    except OSError:  # a server on another machine, or in a container
        return None
    finally:
        await conn.close()


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mib(root: int) -> float:
    """VmHWM summed over the tree: the most each process ever held."""
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            total += status_kib(pid, "VmHWM")
    return total / 1024


def rss_mib(root: int) -> float:
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            total += status_kib(pid, "VmRSS")
    return total / 1024


def thread_ids(pids: Sequence[int]) -> list[int]:
    """Every thread of *pids*; a process gone meanwhile has none."""
    found = []
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            found += map(int, os.listdir(f"/proc/{pid}/task"))
    return found


def pin(tids: Sequence[int], cpus: set[int]) -> dict[int, set[int]]:
    """Keep the threads *tids* on *cpus*; return the cores each had before."""
    before: dict[int, set[int]] = {}
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
    return before


def unpin(before: dict[int, set[int]]) -> None:
    """Give the threads *pin* moved the cores they had."""
    for tid, cpus in before.items():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


@dataclass
class Placement:
    """
    A one-connection run with the database on a core of its own: wrk, the
    upstream and the proxy on the other cores, every process of the database
    server (*server*, its postmaster) on the last one, as a deployment whose
    database runs elsewhere would have it. ``release`` puts back what
    ``apply`` moved, and gives a process or thread started in between (a new
    backend, say) the cores of the process it came from.
    """

    server: int
    chain_cpus: set[int]
    database_cpus: set[int]
    moved: dict[int, set[int]] = field(default_factory=dict)
    roots: list[int] = field(default_factory=list)

    @classmethod
    def for_this_machine(cls, server: int | None) -> Placement | None:
        """A placement, or None where there is one core or no server to move."""
        cpus = sorted(os.sched_getaffinity(0))
        if server is None or len(cpus) < 2:
            return None
        try:
            # Another user's processes need root (CAP_SYS_NICE): try on the
            # postmaster, giving it the cores it has.
            os.sched_setaffinity(server, os.sched_getaffinity(server))
        except PermissionError:
            return None
        return cls(server, set(cpus[:-1]), {cpus[-1]})

    def apply(self, chain: Sequence[int]) -> None:
        self.roots = [self.server, *chain]
        self.moved = pin(thread_ids(tree_pids(self.server)), self.database_cpus)
        chain_threads = thread_ids([p for root in chain for p in tree_pids(root)])
        self.moved |= pin(chain_threads, self.chain_cpus)

    def release(self) -> None:
        unpin(self.moved)
        for root in self.roots:
            with contextlib.suppress(ProcessLookupError):
                cpus = os.sched_getaffinity(root)
                born = thread_ids(tree_pids(root))
                pin([tid for tid in born if tid not in self.moved], cpus)
        self.moved, self.roots = {}, []


@contextlib.contextmanager
def placed(
    placement: Placement | None, chain: Sequence[int]
) -> Iterator[set[int] | None]:
    """
    The cores for wrk while *placement* holds the *chain* (the upstream and
    the proxy) off the database's core; None, and nothing moved, without one.
    """
    if placement is None:
        yield None
        return
    placement.apply(chain)
    try:
        yield placement.chain_cpus
    finally:
        placement.release()
