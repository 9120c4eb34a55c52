"""The top-level `flowcli` command: version and the public library entry points."""

import importlib.metadata
import os
import subprocess
import sys

import pytest

import flowcli


def test_version_flag_matches_the_installed_package():
    proc = subprocess.run([sys.executable, "-m", "flowcli.cli.main", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"flowcli {flowcli.__version__}"
    assert importlib.metadata.version("flowcli") == flowcli.__version__


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_device_is_a_one_line_error_and_a_closed_pipe_stays_quiet():
    """`flowcli eval --json > /dev/full` (or estimate's) ended in an ENOSPC traceback. A reader that stopped (EPIPE)
    still ends the run as click does: exit code 1, nothing said."""
    command = [sys.executable, "-m", "flowcli.cli.main", "--version"]  # typer.echo, as eval's and export's JSON
    with open("/dev/full", "w") as full:
        proc = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("error: cannot write to stdout: No space left on device; ") and (
        proc.stderr.count("\n") == 1
    )
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (1, "")


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


def test_a_progress_bar_on_80_columns_keeps_its_counts_and_times_whole(monkeypatch):
    """adapt's loss terms are a long info text: on 80 columns (a log file, a small terminal) the counts and
    the eta used to be squeezed to "2… 0:… eta 0…"; the info text is what gets cut."""
    import io

    from rich.console import Console

    from flowcli import console

    log = io.StringIO()
    monkeypatch.setattr(console, "stderr", Console(file=log, width=80))
    info = "stage 2 photo 0.233 smooth2 0.003 distill 0.731 occ 0.245 temporal 0.100 anchor 0.010"
    with console.progress() as bar:
        bar.update(bar.add_task("adapt", total=263, info=""), completed=263, info=info)
    line = log.getvalue().rstrip("\n").splitlines()[-1]
    assert "adapt" in line and "263/263" in line and "eta 0:00:00" in line, line
    assert "stage 2 photo 0.233" in line and line.rstrip().endswith("…") and len(line) <= 80, line


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
    assert_one_line_error(code, err, 2, "device cuda:1: there is no such GPU; use cuda:0")


@pytest.mark.parametrize("device", ["cpu:1", "cuda:x", "meta", "cpu:"])
def test_doctor_refuses_a_device_no_other_command_takes(monkeypatch, capsys, device):
    """torch.device took cpu:1 (and meta was refused with another message), where --device of every other
    command refuses it."""
    from cli_harness import assert_one_line_error, in_process_cli

    from flowcli.cli import doctor

    monkeypatch.setattr(doctor, "environment", lambda: pytest.fail(f"checked --device {device}"))
    code, _, err = in_process_cli(monkeypatch, capsys, "doctor")("--device", device)
    assert_one_line_error(code, err, 2, f"unknown device {device!r}", "use auto, cpu, cuda, cuda:N")


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


def _commands():
    """(command words, click command) for `flowcli` and each of its commands and subcommands."""
    import importlib

    import typer

    from flowcli.cli import main

    app = typer.Typer()
    for name in main._COMMAND_MODULES:
        importlib.import_module(f"flowcli.cli.{name}").register(app)

    def walk(command, words):
        yield words, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*words, name])

    root = typer.main.get_command(app)
    root.help = main.app.info.help
    return list(walk(root, []))


def test_every_option_of_every_command_says_what_it_does():
    """`synth --help` listed -q, and `face convert --help` --overwrite, without a word."""
    for words, command in _commands():
        silent = [param.opts[0] for param in command.params if param.param_type_name == "option" and not param.help]
        assert not silent, f"flowcli {' '.join(words)}: {silent}"


def test_every_command_documents_its_exit_codes():
    """Scripts branch on them; eval, synth, doctor, train, weights and face fit/convert did not say them. The
    weights subcommands share the weights group's line."""
    for words, command in _commands():
        if words == ["face"] or (words[:1] == ["weights"] and len(words) > 1):
            continue
        assert "Exit codes" in (command.help or ""), f"flowcli {' '.join(words)} --help"


HELP_PAGES = [words for words, _ in _commands()]


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("words", HELP_PAGES, ids=lambda words: " ".join(words) or "flowcli")
def test_help_paragraphs_break_only_at_the_terminal_width(words, columns, monkeypatch):
    """Help from docstrings kept their hard line breaks (`synth --help`, `face fit --help`): lines ended
    mid-sentence with room left for the next word, and the next line wrapped again."""
    from click.testing import CliRunner

    [root] = [command for command_words, command in _commands() if command_words == []]
    monkeypatch.setenv("COLUMNS", str(columns))
    run = CliRunner().invoke(root, [*words, "--help"], prog_name="flowcli")
    assert run.exit_code == 0, run.output
    description = run.output.split("╭")[0]  # the text above the option panels
    lines = [line[1:].rstrip() for line in description.splitlines()]  # rich pads the text by a space each side
    for line, following in zip(lines, lines[1:]):
        if line and following:  # within a paragraph: the next word did not fit
            assert len(line) + 1 + len(following.split()[0]) > columns - 2, f"{line!r} is broken early"


def test_usage_lines_name_arguments_in_upper_case():
    """`face fit --help` showed `flowcli face fit [OPTIONS] {inputs}...` (Typer shows an argument's parameter name
    unless it has a metavar), `synth --help` `{output}`, where estimate shows `[INPUTS]...`."""
    import click

    for words, command in _commands():
        pieces = command.collect_usage_pieces(click.Context(command))
        assert all(piece == piece.upper() for piece in pieces), f"flowcli {' '.join(words)}: {pieces}"


def test_eval_uses_the_default_device_of_every_command(monkeypatch, capsys, tmp_path):
    """--device auto (the GPU when there is one), as in estimate and stereo: eval ran on the CPU unless told."""
    from pathlib import Path

    from cli_harness import assert_one_line_error, in_process_cli

    from flowcli import inference
    from flowcli.errors import InputError

    chairs = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flow" / "chairs"
    if not chairs.is_dir():
        pytest.skip("../shared/data is absent")
    asked = []

    def stop_before_the_model(device):
        asked.append(device)
        raise InputError("stopped before the model")

    monkeypatch.setattr(inference, "resolve_device", stop_before_the_model)
    code, _, err = in_process_cli(monkeypatch, capsys, "eval")("-d", "chairs", "-r", chairs)
    assert_one_line_error(code, err, 2, "stopped before the model")
    assert asked == ["auto"]


def test_doctor_says_which_devices_it_checks(monkeypatch, capsys):
    """estimate and stereo run on mps: doctor must not say that flowcli runs on cpu or cuda only."""
    from cli_harness import assert_one_line_error, in_process_cli

    code, _, err = in_process_cli(monkeypatch, capsys, "doctor")("--device", "mps")
    assert_one_line_error(code, err, 2, "doctor checks cpu or cuda devices only")


def test_doctor_does_not_report_an_error_size_for_a_check_that_never_ran(monkeypatch, capsys):
    """An unknown FLOWCLI_CORR stops the self-check before it computes anything; it said 'max error nan'."""
    from cli_harness import in_process_cli

    monkeypatch.setenv("FLOWCLI_CORR", "bogus")
    code, out, err = in_process_cli(monkeypatch, capsys, "doctor")("--device", "cpu")
    assert code == 1 and "FLOWCLI_CORR='bogus' is not a backend" in err
    [line] = [line for line in out.splitlines() if line.startswith("self-check")]
    assert "FAILED: FLOWCLI_CORR='bogus'" in line and "nan" not in line


def test_synth_quiet_prints_nothing(monkeypatch, capsys, tmp_path):
    """-q is silent on stderr, as in estimate and stereo: no progress bar and no summary line in a log."""
    from cli_harness import in_process_cli

    run = in_process_cli(monkeypatch, capsys, "synth")
    code, out, err = run(tmp_path / "data", "-n", "1", "--size", "32x32", "-q")
    assert (code, out, err) == (0, "", "")
    assert (tmp_path / "data" / "00000_flow.flo").is_file()
    code, out, err = run(tmp_path / "clip.mp4", "--clip", "--size", "32x32", "-q")
    assert (code, out, err) == (0, "", "")
    assert (tmp_path / "clip.mp4").is_file()


def test_sigterm_stops_a_run_as_ctrl_c_does_and_leaves_no_temp_file(tmp_path):
    """kill, timeout and job schedulers send SIGTERM: Python died on the spot without a word, leaving hidden
    temp files (a half-written video among them) in the output folder."""
    import textwrap
    from pathlib import Path

    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import numpy as np
        from flowcli.cli import doctor, main
        from flowcli.io.atomic import atomic_path
        from flowcli.io.media import VideoWriter

        def environment():
            with VideoWriter({str(tmp_path / "v.mp4")!r}, fps=5) as video, \\
                    atomic_path({str(tmp_path / "a.flo")!r}) as tmp:
                video.write(np.zeros((16, 16, 3), np.uint8))
                tmp.write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)

        doctor.environment = environment
        main._COMMAND_MODULES = ["doctor"]
        sys.argv = ["flowcli", "doctor"]
        main.run()
    """)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip() == "terminated"
    assert list(tmp_path.iterdir()) == []


def test_repeated_source_names_get_numbers_in_linear_time():
    """{source} names: a repeat gets -2, -3..., never a name another input has. A --pairs list of 20,000
    '*/before.jpg' pairs used to take minutes: each repeat counted up from 2 again."""
    import time

    from flowcli.cli.options import unique_source_names

    assert unique_source_names(["a", "a", "a-2", "b", "a"]) == ["a", "a-3", "a-2", "b", "a-4"]
    start = time.perf_counter()
    names = unique_source_names(["before"] * 20000)
    assert time.perf_counter() - start < 2.0
    assert names[:3] == ["before", "before-2", "before-3"] and names[-1] == "before-20000"
    assert len(set(names)) == 20000


def test_flowcli_face_with_files_runs_face_fit(monkeypatch, capsys, tmp_path):
    """The brief's `flowcli face selfie.mp4`: the group runs `fit` when no subcommand is named."""
    from cli_harness import assert_one_line_error, in_process_cli

    from flowcli.cli.main import with_default_subcommand

    assert with_default_subcommand(["face", "selfie.mp4"]) == ["face", "fit", "selfie.mp4"]
    assert with_default_subcommand(["face", "--flow", "a.mp4"]) == ["face", "fit", "--flow", "a.mp4"]
    for unchanged in (["face", "fit", "a.mp4"], ["face", "convert", "dir", "-o", "m.npz"], ["face", "--help"],
                      ["face"], ["estimate", "a.png", "b.png"]):
        assert with_default_subcommand(unchanged) == unchanged

    cli = in_process_cli(monkeypatch, capsys, "face")
    missing = tmp_path / "selfie.mp4"
    short, fit = cli(missing), cli("fit", missing)
    assert short == fit  # the same one-line error from fit, not click's "No such command"
    assert_one_line_error(short[0], short[2], 2, "selfie.mp4 not found")
    code, out, _ = cli("--help")
    assert code == 0 and "flowcli face FILES... is short for flowcli face fit FILES..." in out


def test_a_file_name_too_long_for_the_file_system_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    """Path.exists() and friends raise ENAMETOOLONG on a 300-byte name: every command gave a traceback."""
    from cli_harness import assert_one_line_error, in_process_cli

    long_name = tmp_path / ("a" * 300 + ".png")
    for command, args in (("estimate", (long_name, long_name)), ("vis", (long_name.with_suffix(".flo"),))):
        code, _, err = in_process_cli(monkeypatch, capsys, command)(*args)
        assert_one_line_error(code, err, 2, "file name too long", "(304 bytes)")


@pytest.mark.parametrize("words", [["-h"], ["face", "-h"], ["weights", "list", "-h"]])
def test_dash_h_is_help_everywhere(words):
    """`flowcli face -h` answered "No such option: -h"."""
    proc = subprocess.run([sys.executable, "-m", "flowcli.cli.main", *words], capture_output=True, text=True)
    assert proc.returncode == 0 and "Usage: flowcli" in proc.stdout, proc.stderr



@pytest.mark.parametrize("command", ["estimate", "stereo", "export"])
def test_empty_weights_are_refused_not_taken_as_the_default(command, monkeypatch, capsys, tmp_path):
    """`-w "$WEIGHTS"` with the variable unset ran the bundled default, so a user scored the wrong model."""
    import imageio.v3 as iio
    import numpy as np
    from cli_harness import assert_one_line_error, in_process_cli

    from flowcli.errors import WeightsError
    from flowcli.models import load_model

    frames = [tmp_path / "a.png", tmp_path / "b.png"]
    for frame in frames:
        iio.imwrite(frame, np.zeros((64, 96, 3), np.uint8))
    inputs = [*frames, "-o", tmp_path / "out"] if command != "export" else ["-o", tmp_path / "m.onnx"]
    code, _, err = in_process_cli(monkeypatch, capsys, command)(*inputs, "-w", "")
    assert_one_line_error(code, err, 4, '""', "empty")
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()
    with pytest.raises(WeightsError, match="empty"):
        load_model("")


def test_say_prints_a_message_whole_on_one_line_as_given(monkeypatch):
    """Summary lines ("N pair(s) -> OUT", "wrote OUT", "resuming OUT") went through rich as markup and at 80
    columns: `-o 'run[/v2]'` ended in a traceback after the work was done, and a log cut long paths in two."""
    import io

    from rich.console import Console

    from flowcli import console

    log = io.StringIO()
    monkeypatch.setattr(console, "stderr", Console(file=log, width=80, force_terminal=False))
    message = "2 pair(s) -> /data/runs[/v2]/" + "a_long_folder_name/" * 8 + " [bold]done[/]"
    console.say(message)
    assert log.getvalue() == message + "\n"
