"""Atomic output: write to a temp file in the destination folder, then rename over the target."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from flowcli.errors import OutputError


def check_target(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail if `path` is a folder, or exists without overwrite; creates nothing (to plan outputs up front)."""
    path = Path(path)
    if path.is_dir():  # --overwrite replaces files only: os.replace cannot put a file over a folder
        raise OutputError(f"{path} is a folder, not a file; remove or rename it, or choose another output")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; pass --overwrite to replace it or choose another output")
    return path


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early (before any work) if `path` cannot be written (see `check_target`) or its folder cannot be made."""
    path = check_target(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create output folder {path.parent}: {error.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"output folder {path.parent} is not writable; choose another with -o")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed.

    The temp name keeps the suffix, so writers that choose a format by extension still work.
    """
    path = check_writable(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and some writers (safetensors) recreate the file 0600: give the usual permissions
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
