"""User-facing errors: one line that says what is wrong and what to do.

The CLI prints `error: <message>` for a FlowcliError and exits with its code, never a traceback.
"""


class FlowcliError(Exception):
    """A problem the user can fix (bad input, missing file, offline cache miss...)."""

    exit_code = 1
    shown = False  # the message is already on stderr: the CLI exits with the code and prints nothing more


class InputError(FlowcliError):
    """Unreadable, missing or inconsistent input media or data."""

    exit_code = 2


class OutputError(FlowcliError):
    """An output that cannot be written (exists without --overwrite, unwritable folder, unknown format)."""

    exit_code = 3


class WeightsError(FlowcliError):
    """A checkpoint that cannot be found, downloaded, verified or loaded."""

    exit_code = 4
