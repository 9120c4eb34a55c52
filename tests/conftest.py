"""Shared fixtures."""

import contextlib
import os
import sys
import threading
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder `../shared/data` (relative to the repo root); skips the test if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def pipe_into_stdin(monkeypatch):
    """`pipe(data)` makes `data` the process's stdin through a real pipe, as `cat clip.mp4 | flowcli ...` does (a
    thread writes it: a pipe holds 64 KiB)."""
    opened = []

    def feed(write_end: int, data: bytes) -> None:
        with os.fdopen(write_end, "wb") as sink, contextlib.suppress(BrokenPipeError):
            sink.write(data)

    def pipe(data: bytes) -> None:
        read_end, write_end = os.pipe()
        threading.Thread(target=feed, args=(write_end, data), daemon=True).start()
        opened.append(os.fdopen(read_end, "rb"))
        monkeypatch.setattr(sys, "stdin", opened[-1])

    yield pipe
    for stdin in opened:
        stdin.close()
