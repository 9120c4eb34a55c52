"""Atomic output: write to a temp file in the destination folder, then rename over the target."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
from pathlib import Path

from flowcli.errors import OutputError


# atomic_path's temp file is named "." + the target's stem + "." + 8 random characters + its suffix
TEMP_NAME_EXTRA = 10

# what the checks below advise for a folder that cannot be written; a command whose output has an option passes
# its own (e.g. "choose another with -o")
ANOTHER_PLACE = "choose another output path"


def check_target(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail if `path` is a folder, exists without overwrite, or has a name too long for its temp file; creates
    nothing (to plan outputs up front)."""
    path = Path(path)
    _check_name_length(path)
    if path.is_dir():  # --overwrite replaces files only: os.replace cannot put a file over a folder
        raise OutputError(f"{path} is a folder, not a file; remove or rename it, or choose another output")
    if os.path.lexists(path) and not overwrite:  # lexists: a dangling link (a dropped git-annex file) is kept too
        raise _exists_error(path)
    return path


def _check_name_length(path: Path) -> None:
    """A name that fits the file system but whose temp file does not would fail at its first write, after the
    work: refused up front instead."""
    size = len(os.fsencode(path.name))
    if size + TEMP_NAME_EXTRA <= 128:  # within every common file system's limit: no need to ask
        return
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if size + TEMP_NAME_EXTRA > limit:
        raise OutputError(
            f"output file name {path.name[:40]}... ({size} bytes) is too long: the file system takes {limit}, and "
            f"each output is first written to a temp file {TEMP_NAME_EXTRA} bytes longer; give the input a shorter "
            "name, or a shorter --name"
        )


def _exists_error(path: Path) -> OutputError:
    return OutputError(f"{path} already exists; pass --overwrite to replace it or choose another output")


def check_writable(path: str | os.PathLike, overwrite: bool = False, hint: str = ANOTHER_PLACE) -> Path:
    """Fail early (before any work) if `path` cannot be written (see `check_target`) or its folder cannot be made;
    `hint` ends the message of a folder that cannot be written."""
    path = check_target(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        existing = path.absolute().parent
        while not existing.exists():
            existing = existing.parent
        reason = f"{existing} is a file" if not existing.is_dir() else error.strerror
        raise OutputError(f"cannot create output folder {path.parent}: {reason}") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"output folder {path.parent} is not writable; {hint}")
    return path


def check_creatable(path: str | os.PathLike, overwrite: bool = False, hint: str = ANOTHER_PLACE) -> Path:
    """Like `check_writable`, but leaves nothing behind: the nearest existing folder above `path` must take new
    files (tried with `probe_folder`). For checks made before the inputs are, so that a run refused later leaves
    no empty folder."""
    path = check_target(path, overwrite)
    existing = path.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create output folder {path.parent}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {existing} is not writable; {hint}")
    if existing not in _PROBED:
        probe_folder(existing, hint)
        _PROBED.add(existing)
    return path


# folders that took a probe file in this process: a run that plans thousands of outputs in one folder (flowcli vis
# on a glob) tries it once
_PROBED: set[Path] = set()


def probe_folder(folder: str | os.PathLike, hint: str = ANOTHER_PLACE) -> None:
    """Create and remove a hidden temp file in an existing folder: OutputError if that fails. os.access answers
    yes for root on read-only or special file systems, so a run would fail only at its first write."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".flowcli-probe.", dir=folder)
    except OSError as error:
        raise OutputError(f"cannot write in output folder {folder}: {error.strerror or error}; {hint}") from None
    os.close(fd)
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed.

    The temp name keeps the suffix, so writers that choose a format by extension still work.
    """
    made = _missing_folders(Path(path))
    path = check_writable(path, overwrite)
    tmp = None
    try:  # from here on, a Ctrl-C or SIGTERM (raised as KeyboardInterrupt) anywhere removes the temp file
        tmp = _make_temp(path)
        _OUTPUT_OF_TEMP[tmp] = _OUTPUT_OF_TEMP.get(path, path)
        umask = os.umask(0)
        os.umask(umask)
        try:
            yield tmp
        except OSError as error:
            if error.errno not in _WRITE_ERRNOS and error.filename not in (tmp, str(tmp)):
                raise
            raise _write_error(path, error) from None
        try:
            # the temp file starts 0600, and some writers (safetensors) recreate it 0600: give the usual permissions
            os.chmod(tmp, 0o666 & ~umask)
            _publish(tmp, path, overwrite)
        except OSError as error:
            raise _write_error(path, error) from None
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for folder in made:  # a failed output leaves no empty folders behind ("nothing was written")
            with contextlib.suppress(OSError):  # not empty: another output went there meanwhile
                folder.rmdir()
        raise
    finally:
        _OUTPUT_OF_TEMP.pop(tmp, None)


def _missing_folders(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, deepest first."""
    missing = []
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _make_temp(path: Path) -> Path:
    """A new empty hidden file `.STEM.RANDOM.SUFFIX` next to `path` (0600, as mkstemp makes it). Its name is
    chosen before the file is made, so a KeyboardInterrupt landing while it is made removes it by name: with
    mkstemp, one landing after the file existed but before its name came back left it behind."""
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600))
            return tmp
        except FileExistsError:  # another file's name: left alone, another name tried
            continue
        except OSError as error:  # os.access passes for root on read-only or special file systems
            raise _write_error(path, error) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    raise _write_error(path, FileExistsError(errno.EEXIST, "no free temp file name", str(path.parent)))


# temp file -> the output it becomes: a writer handed a temp file (write_flo inside write_pair_outputs) names the
# output in its errors, not a hidden temp name the user never chose
_OUTPUT_OF_TEMP: dict[Path, Path] = {}

# a file system without hard links answers link() with one of these
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename `tmp` to `path`. Without overwrite, a file that appeared at `path` since `check_writable` (another
    run writing the same folder) is kept and OutputError raised, where os.replace would silently replace it."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if `path` exists, where a rename replaces it
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(path):
            raise _exists_error(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


# errors of writing a file (as opposed to reading an input) that a writer may raise inside atomic_path
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def _write_error(path: Path, error: OSError) -> OutputError:
    path = _OUTPUT_OF_TEMP.get(path, path)
    return OutputError(f"cannot write {path}: {error.strerror or error}; choose another output")
