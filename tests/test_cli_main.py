"""The top-level `flowcli` command: version and the public library entry points."""

import importlib.metadata
import subprocess
import sys

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
