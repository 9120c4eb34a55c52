"""The `flowcli` command: one Typer app, one module per command under flowcli/cli/."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import warnings
from pathlib import Path

import typer

from flowcli.console import checked_stdout, print_error, stderr
from flowcli.errors import FlowcliError

HELP = (
    "Dense correspondence from the command line: optical flow, stereo, occlusion, 3D faces.\n\n"
    "--json output goes to stdout; progress, warnings and errors go to stderr, and -q hides the progress. "
    "Exit codes: 0 ok, 1 other error, 2 input error, 3 output error, 4 weights error, 130 interrupted (Ctrl-C), "
    "143 terminated (SIGTERM)."
)

app = typer.Typer(
    name="flowcli",
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _print_version(value: bool) -> None:
    if value:
        from flowcli import __version__

        typer.echo(f"flowcli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the flowcli version and exit."
    ),
) -> None:
    """Dense correspondence from the command line: optical flow, stereo, occlusion, 3D faces."""


# Each command module exposes `register(app)`; listed here so `flowcli --help` shows them in this order.
_COMMAND_MODULES = [
    "estimate",
    "stereo",
    "vis",
    "train",
    "adapt",
    "eval",
    "synth",
    "weights",
    "export",
    "doctor",
    "face",
]


def _register_commands() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"flowcli.cli.{name}")
        module.register(app)


# `flowcli face selfie.mp4` is short for `flowcli face fit selfie.mp4`: fitting is what face is run for
_DEFAULT_SUBCOMMANDS = {"face": ("fit", {"fit", "convert", "--help", "-h"})}


def with_default_subcommand(args: list[str]) -> list[str]:
    """`args` with a group's default subcommand put in where none was named (`face X` -> `face fit X`)."""
    if len(args) >= 2 and args[0] in _DEFAULT_SUBCOMMANDS:
        default, names = _DEFAULT_SUBCOMMANDS[args[0]]
        if args[1] not in names:
            return [args[0], default, *args[1:]]
    return args


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from rich.markup import escape

    stderr.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """Within the block a SIGTERM (kill, timeout, a job scheduler) raises KeyboardInterrupt, as Ctrl-C does, so
    the run stops the same way: temp files removed, ffmpeg stopped, train saves its state. By default Python dies
    at once and leaves hidden temp files in the output folder. Yields a list that records the SIGTERM."""
    received: list[int] = []

    def on_sigterm(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_DFL:  # a parent that ignores SIGTERM for us is obeyed
            signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield received
    finally:
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


def _stopped(terminated: list[int]) -> None:
    if terminated:
        stderr.print("[red]terminated[/]")
        sys.exit(128 + signal.SIGTERM)
    stderr.print("[red]interrupted[/]")
    sys.exit(130)


def run() -> None:
    """Entry point: user errors become one line on stderr and an exit code, never a traceback."""
    from rich.markup import escape

    warnings.showwarning = _show_warning
    _register_commands()
    with _sigterm_as_ctrl_c() as terminated:
        try:
            with checked_stdout():
                code = app(args=with_default_subcommand(sys.argv[1:]), prog_name="flowcli", standalone_mode=False)
        except FlowcliError as error:
            if not error.shown:
                print_error(error)
            sys.exit(error.exit_code)
        except (KeyboardInterrupt, typer.Abort):
            _stopped(terminated)
        except typer.Exit as done:
            code = done.exit_code
        except typer.TyperException as error:  # usage errors: unknown option, bad value, missing argument
            error.show()
            sys.exit(error.exit_code)
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise
            # the file system's limit (255 bytes a name on most) is met before any of flowcli's own checks
            path = os.fsdecode(error.filename or "?")
            longest = max(Path(path).parts or (path,), key=lambda part: len(os.fsencode(part)))
            where = "" if longest == path else f" in {escape(path[:80])}..."
            stderr.print(f"[red]error:[/] file name too long for the file system: {escape(longest[:40])}... "
                         f"({len(os.fsencode(longest))} bytes){where}; rename it or choose shorter names",
                         highlight=False, soft_wrap=True)
            sys.exit(2)
        if code == 130:  # Typer turns a Ctrl-C (KeyboardInterrupt) into exit code 130, without a word
            _stopped(terminated)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
