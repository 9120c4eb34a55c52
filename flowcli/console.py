"""Where flowcli talks: progress and messages on stderr, machine-readable results on stdout."""

from __future__ import annotations

import contextlib
import errno
import sys
import warnings

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

stderr = Console(stderr=True)


def progress(quiet: bool = False, transient: bool = False) -> Progress:
    """A rich progress bar on stderr; disabled with quiet=True. A transient bar is shown on a terminal only:
    elsewhere (a log file, a pipe) it would leave nothing but an empty line.

    On a narrow line (80 columns, or a log file) the counts and times keep their width and the info text
    (adapt's loss terms run to 60 characters) is cut short instead: rich would otherwise squeeze every
    column to "2… 0:… eta 0…"."""
    whole = Column(no_wrap=True)
    return Progress(
        TextColumn("[progress.description]{task.description}", table_column=whole),
        BarColumn(bar_width=20),
        MofNCompleteColumn(table_column=whole),
        TimeElapsedColumn(table_column=whole),
        TextColumn("eta", table_column=whole),
        TimeRemainingColumn(table_column=whole),
        TextColumn("{task.fields[info]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
        console=stderr,
        expand=True,
        disable=quiet or (transient and not stderr.is_terminal),
        transient=transient,
    )


def natural_width(console: Console, table) -> int:
    """The width `table` takes with no line to fit."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update(width=1000), table).maximum


def print_at_natural_width(console: Console, table) -> None:
    """Where the console is not a terminal (a file, a pipe, a log) there is no width to wrap to: the whole table."""
    saved = console.width
    try:
        console.width = max(saved, natural_width(console, table))
        console.print(table)
    finally:
        console.width = saved


def print_table(console: Console, table_of, columns: list[str]) -> None:
    """Print the table `table_of(None)` (all its columns): at its natural width where the console is not a
    terminal; on a terminal too narrow for it (80 columns), as several tables `table_of(some columns)` of the
    columns that fit, each with the rows' names, rather than one whose numbers rich would cut to "0.…"."""
    table = table_of(None)
    if not console.is_terminal:
        print_at_natural_width(console, table)
        return
    if natural_width(console, table) <= console.width:
        console.print(table)
        return
    groups: list[list[str]] = [[]]
    for column in columns:
        if groups[-1] and natural_width(console, table_of(groups[-1] + [column])) > console.width:
            groups.append([])
        groups[-1].append(column)
    names_only = len(table_of([]).columns)
    for group in groups:
        part = table_of(group)
        if len(part.columns) > names_only:  # (a group of columns no row has is left out)
            console.print(part)


def print_error(error: Exception) -> None:
    """`error: MESSAGE` on stderr, one line, as the CLI shows every FlowcliError (markup in it printed as is)."""
    from rich.markup import escape

    stderr.print(f"[red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """A line for the user on stderr, printed as given (a path with [brackets] is not markup) and not wrapped: a
    log file or a pipe keeps it on one line, paths whole."""
    stderr.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning a user should see once; goes through `warnings` so library users can filter it."""
    warnings.warn(message, stacklevel=2)


class _CheckedStdout:
    """sys.stdout within `checked_stdout`: the real one, whose failed writes are OutputErrors."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        with _write_errors_as_output_errors():
            return self._stream.write(text)

    def writelines(self, lines) -> None:
        with _write_errors_as_output_errors():
            self._stream.writelines(lines)

    def flush(self) -> None:
        with _write_errors_as_output_errors():
            self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _write_errors_as_output_errors():
    from flowcli.errors import OutputError

    try:
        yield
    except OSError as error:
        if error.errno == errno.EPIPE:  # a reader that stopped (| head): click ends the run quietly, exit code 1
            raise
        raise OutputError(
            f"cannot write to stdout: {error.strerror or error}; free space where it goes, or redirect it elsewhere"
        ) from None


@contextlib.contextmanager
def checked_stdout():
    """Within the block, a write or flush of sys.stdout that fails (`--json > /dev/full`: no space left on the
    device) is an OutputError, one line, where it was a traceback; a closed pipe (EPIPE) is left to click. Every
    command flushes what it prints, so a failure shows within the block."""
    original = sys.stdout
    if original is None:  # no stdout at all (pythonw): nothing to check
        yield
        return
    checked = _CheckedStdout(original)
    sys.stdout = checked
    try:
        yield
    finally:
        if sys.stdout is checked:  # click's EPIPE handling puts its own wrapper around it: left in place
            sys.stdout = original
