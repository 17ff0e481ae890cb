"""
Where the recorded upstream bodies live, and how tests read them.

CI clones the repository with ``shared/`` beside it, so the recordings sit at
``<clone>/../shared/fixtures/recorded``; INDEX.md there describes each file.
"""

from __future__ import annotations

from pathlib import Path

RECORDED = Path(__file__).parents[2] / "shared/fixtures/recorded"


def recorded(name: str) -> bytes:
    """Return the bytes of one recorded body, exactly as stored."""
    return (RECORDED / name).read_bytes()
