"""The command line: what ``tallygate serve`` says when it cannot start."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

from gateway.cli import one_line
from tests.harness import serve_once


def test_a_pool_warning_with_a_traceback_becomes_one_line() -> None:
    """asyncpg's pool logs one per retry of its floor while the database is away."""
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    except ConnectionRefusedError:
        record = logging.LogRecord(
            "asyncpg.pool", logging.WARNING, __file__, 1,
            "Failed to restore the pool connection floor; retrying", None,
            sys.exc_info(),
        )  # fmt: skip

    assert one_line(record)
    line = logging.Formatter().format(record)
    assert line == (
        "Failed to restore the pool connection floor; retrying (ConnectionRefusedError:"
        " [Errno 111] Connect call failed ('127.0.0.1', 5432))"
    )


def test_serve_on_a_taken_port_exits_1_with_one_line(
    database_url: str, tmp_path: Path
) -> None:
    """It says so once, and never that it is listening."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(
            f'[database]\nurl = "{database_url}"\ndata_dir = "{tmp_path / "data"}"\n'
            f"[server]\nport = {port}\n"
        )

        done = serve_once(config)

    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "listening on" not in done.stderr
    assert len(errors) == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in errors[0]
