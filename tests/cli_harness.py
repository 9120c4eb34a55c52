"""Run one `flowcli` command in-process (fast: no interpreter start-up) and check one-line errors."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import typer

from flowcli import console
from flowcli.cli import main


def in_process_cli(monkeypatch, capsys, command: str, show_every_warning: bool = False):
    """A function `run(*args) -> (exit code, stdout, stderr)` that runs `flowcli COMMAND ARGS`."""
    monkeypatch.setattr(main, "_COMMAND_MODULES", [command])
    # rich wraps at 80 columns when stderr is not a terminal; keep each message on its own line
    monkeypatch.setattr(console.stderr, "soft_wrap", True)

    def run(*args) -> tuple[int, str, str]:
        app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        app.command("_noop", hidden=True)(lambda: None)
        monkeypatch.setattr(main, "app", app)
        monkeypatch.setattr(sys, "argv", ["flowcli", command, *map(str, args)])
        capsys.readouterr()
        code = 0
        with warnings.catch_warnings():
            if show_every_warning:
                warnings.simplefilter("always")
            try:
                main.run()
            except SystemExit as exit_:
                code = exit_.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_one_line_error(code: int, err: str, expected_code: int, *needles: str) -> None:
    assert code == expected_code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err


def refuse_writes_before_the_model(monkeypatch) -> None:
    """Every temp file fails with EACCES, as root meets in read-only or special folders (/sys) that os.access
    calls writable, and loading a model fails the test: the output folder must be refused before the model."""
    import errno

    import pytest

    from flowcli.io import atomic

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """name -> (bytes, mtime in ns) of every file under `folder`: what a refused or resumed run must keep."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def without_timing(records: list[dict]) -> list[dict]:
    """--json records without their "ms", which differs from run to run."""
    return [{key: value for key, value in record.items() if key != "ms"} for record in records]


def assert_worker_ends_quietly_on_sigterm(batches) -> None:
    """A DataLoader iterator's one worker, sent a SIGTERM as a job's stop sends it (not from its parent), ends as
    on a Ctrl-C: exit code 0, and no "DataLoader worker is killed by signal" error in this process."""
    import subprocess
    import time

    next(batches)
    (worker,) = batches._workers
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
    worker.join(timeout=30)
    time.sleep(0.5)  # time for torch's SIGCHLD handler to raise in this process, as it did for a killed worker
    assert worker.exitcode == 0
    batches._shutdown_workers()


def ctrl_c_before_the_third_batch(batches, received: list, others: set):
    """Yield the batches of a DataLoader iterator, each also appended to `received`; before the third is received,
    send a Ctrl-C to its data workers and to this process, as a terminal sends it to the whole job. `others`: the
    child processes that are not the loader's workers."""
    import multiprocessing
    import os
    import signal

    while True:
        if len(received) == 2:
            workers = set(multiprocessing.active_children()) - others
            for worker in workers:
                os.kill(worker.pid, signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            for worker in workers:
                worker.join(timeout=1)  # (one that ended on it has done so by now)
        received.append(next(batches))
        yield received[-1]


def assert_refused_before_the_model(monkeypatch, run, *args, output: Path, exit_code: int, needle: str) -> None:
    """`run(*args, "-o", output)` ends in one error line holding `needle` before any model is loaded, printing
    nothing on stdout and creating no output folder."""
    import pytest

    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    code, stdout, err = run(*args, "-o", output)
    assert_one_line_error(code, err, exit_code, needle)
    assert stdout == "" and not output.exists()
