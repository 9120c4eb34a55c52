"""Where flowcli talks: progress and messages on stderr, machine-readable results on stdout."""

from __future__ import annotations

import warnings

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True)


def progress(quiet: bool = False, transient: bool = False) -> Progress:
    """A rich progress bar on stderr; disabled with quiet=True. A transient bar is shown on a terminal only:
    elsewhere (a log file, a pipe) it would leave nothing but an empty line."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=stderr,
        disable=quiet or (transient and not stderr.is_terminal),
        transient=transient,
    )


def warn(message: str) -> None:
    """A warning a user should see once; goes through `warnings` so library users can filter it."""
    warnings.warn(message, stacklevel=2)
