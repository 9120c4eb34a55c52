"""A path argument or option given as "" (`flowcli vis "$FLOWS"` with FLOWS unset) is a one-line input error naming
it, before any work: read as a path, "" is ".", and the commands read or wrote the current folder. Runs in-process
(tests/cli_harness.py) in a folder holding tiny inputs that such a run would have taken."""

from __future__ import annotations

import numpy as np
import pytest
from cli_harness import assert_one_line_error, in_process_cli, snapshot

from flowcli.io.flow_formats import write_flo, write_png

OUTPUT_FOLDER = 'is "" (empty); give the output folder'

CASES = [
    # command, arguments, what the error names
    ("estimate", ["a.png", "b.png", "-o", ""], f"-o {OUTPUT_FOLDER}"),
    ("estimate", [""], 'an input is "" (empty)'),
    ("estimate", ["a.png", "b.png", ""], 'an input is "" (empty)'),
    ("estimate", ["--pairs", ""], '--pairs is "" (empty); give a text file'),
    ("stereo", ["a.png", "b.png", "-o", ""], f"-o {OUTPUT_FOLDER}"),
    ("stereo", [""], 'an input is "" (empty)'),
    ("stereo", ["--pairs", ""], '--pairs is "" (empty); give a text file'),
    ("stereo", ["a.png", "b.png", "--calib", ""], '--calib is "" (empty); give the calibration file'),
    ("vis", ["f.flo", "-o", ""], f"-o {OUTPUT_FOLDER}"),
    ("vis", [""], 'an input is "" (empty)'),
    ("adapt", ["frames", "-o", ""], '-o is "" (empty); give the checkpoint file'),
    ("export", ["-o", ""], '-o is "" (empty); give the .onnx file'),
    ("train", ["--config", ""], '--config is "" (empty); give a JSON recipe'),
    ("face", ["fit", ""], 'an input is "" (empty)'),
    ("face", ["fit", "a.png", "-o", ""], '-o is "" (empty); give the folder for the results'),
    ("face", ["convert", "", "-o", "ict.npz"], 'FOLDER is "" (empty); give ICT-FaceKit\'s FaceXModel folder'),
    ("face", ["convert", "frames", "-o", ""], '-o is "" (empty); give the .npz file'),
]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The current folder, with two images, a flow file and a folder of frames: what "" would have read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWCLI_FACE_ASSETS", raising=False)
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    image = np.zeros((8, 8, 3), np.uint8)
    for name in ("a.png", "b.png", "frames/0.png", "frames/1.png", "frames/2.png"):
        write_png(tmp_path / name, image)
    write_flo(tmp_path / "f.flo", np.zeros((4, 4, 2), np.float32))
    return tmp_path


@pytest.mark.parametrize(
    ("command", "args", "needle"), CASES, ids=[" ".join([c, *(a or '""' for a in args)]) for c, args, _ in CASES]
)
def test_an_empty_path_is_refused_before_any_work(folder, monkeypatch, capsys, command, args, needle):
    before = snapshot(folder)
    code, stdout, err = in_process_cli(monkeypatch, capsys, command)(*args)
    assert_one_line_error(code, err, 2, needle, "an unset shell variable?")
    assert stdout == "" and snapshot(folder) == before


def test_vis_still_writes_into_the_current_folder_when_told_so(folder, monkeypatch, capsys):
    code, _, err = in_process_cli(monkeypatch, capsys, "vis")("f.flo", "-o", ".", "-q")
    assert code == 0, err
    assert (folder / "f_vis.png").is_file()
