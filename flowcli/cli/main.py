"""The `flowcli` command: one Typer app, one module per command under flowcli/cli/."""

from __future__ import annotations

import sys
import warnings

import typer

from flowcli.console import stderr
from flowcli.errors import FlowcliError

app = typer.Typer(
    name="flowcli",
    help="Dense correspondence from the command line: optical flow, stereo, occlusion, 3D faces.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each command module exposes `register(app)`; listed here so `flowcli --help` shows them in this order.
_COMMAND_MODULES = [
    "estimate",
    "train",
    "eval",
    "synth",
    "weights",
    "doctor",
]


def _register_commands() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"flowcli.cli.{name}")
        module.register(app)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    stderr.print(f"[yellow]warning:[/] {message}", highlight=False)


def run() -> None:
    """Entry point: user errors become one line on stderr and an exit code, never a traceback."""
    warnings.showwarning = _show_warning
    _register_commands()
    try:
        app(standalone_mode=False)
    except FlowcliError as error:
        stderr.print(f"[red]error:[/] {error}", highlight=False)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        stderr.print("[red]interrupted[/]")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except Exception as error:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Exit):
            sys.exit(error.exit_code)
        raise
