"""The top-level `flowcli` command: version and the public library entry points."""

import importlib.metadata
import subprocess
import sys

import pytest

import flowcli


def test_version_flag_matches_the_installed_package():
    proc = subprocess.run([sys.executable, "-m", "flowcli.cli.main", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"flowcli {flowcli.__version__}"
    assert importlib.metadata.version("flowcli") == flowcli.__version__


def test_library_entry_points_resolve_lazily():
    from flowcli.inference import estimate_flow
    from flowcli.models import load_model

    assert flowcli.load_model is load_model and flowcli.estimate_flow is estimate_flow
    try:
        flowcli.no_such_thing
    except AttributeError as error:
        assert "no_such_thing" in str(error)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_a_transient_progress_bar_leaves_nothing_in_a_log(capsys):
    """Off a terminal a transient bar (downloads, eval) would print an empty line before the next message."""
    from flowcli.console import progress

    with progress(transient=True) as bar:
        bar.update(bar.add_task("download", total=2, info=""), advance=1)
    assert capsys.readouterr().err == ""


def test_doctor_reports_the_version_of_the_running_flowcli(monkeypatch):
    """Not the install record's: an editable or stale install can say another version than `--version`."""
    from flowcli.cli import doctor

    monkeypatch.setattr(flowcli, "__version__", "9.9.9-running")
    assert doctor.environment()["flowcli"] == "9.9.9-running"


def test_doctor_refuses_a_cuda_device_this_machine_does_not_have(monkeypatch, capsys):
    """`--device cuda:1` on a one-GPU machine: an input error, not a CUDA traceback from the self-check."""
    import torch
    from cli_harness import assert_one_line_error, in_process_cli

    from flowcli.cli import doctor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(doctor, "environment", lambda: pytest.fail("checked a device that does not exist"))
    code, _, err = in_process_cli(monkeypatch, capsys, "doctor")("--device", "cuda:1")
    assert_one_line_error(code, err, 2, "--device cuda:1: no such CUDA device here; use one of cuda:0")


def test_ctrl_c_says_interrupted_and_exits_130(monkeypatch, capsys):
    """Typer turns a KeyboardInterrupt into exit code 130 and prints nothing; a user who pressed Ctrl-C
    in a long run (estimate on a video) saw the command end without a word."""
    from cli_harness import in_process_cli

    from flowcli.cli import doctor

    def pressed_ctrl_c():
        raise KeyboardInterrupt

    monkeypatch.setattr(doctor, "environment", pressed_ctrl_c)
    code, out, err = in_process_cli(monkeypatch, capsys, "doctor")()
    assert code == 130 and out == ""
    assert err.strip() == "interrupted"
