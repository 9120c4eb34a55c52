"""`flowcli face fit` end to end (MediaPipe through ai-edge-litert), including bad input.

Most runs are in-process (Typer's CliRunner on an app with only the face commands); one subprocess goes
through the real entry point to check exit codes and the absence of tracebacks.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

FACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "face"
pytestmark = pytest.mark.skipif(
    not (FACE / "mediapipe" / "face_landmark.tflite").is_file(), reason="shared face data not present"
)
IMAGE = FACE / "aflw2000-3d" / "image00050.jpg"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "flowcli-face-cache"  # shared by the face test modules
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def cli(cache, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from flowcli.cli import face

    monkeypatch.setenv("FLOWCLI_FACE_ASSETS", str(FACE))
    monkeypatch.setenv("FLOWCLI_CACHE", str(cache))
    app = typer.Typer()
    app.command("noop")(lambda: None)  # keeps "face" a subcommand group
    face.register(app)
    runner = CliRunner()

    def invoke(args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=True)

    return invoke


def test_mediapipe_runner():
    import imageio.v3 as iio

    from flowcli.face.correspondence import MP_TO_68
    from flowcli.face.mediapipe import FaceMeshRunner, ssd_anchors

    assert ssd_anchors().shape == (896, 2)
    runner = FaceMeshRunner(FACE / "mediapipe")
    image = iio.imread(IMAGE)
    two = np.concatenate([image, image[:, ::-1]], 1)  # two faces side by side
    assert len(runner.detect(two)) == 2
    lm = runner.landmarks(image, runner.detect(image)[0])
    assert lm.points.shape == (468, 3) and lm.score > 0.9
    text = (FACE / "aflw2000-3d" / "image00050_reannotated.pts").read_text()
    gt = np.array(text[text.index("{") + 1 : text.index("}")].split(), float).reshape(68, 2)
    size = np.sqrt(np.prod(gt.max(0) - gt.min(0)))
    assert np.linalg.norm(lm.points[MP_TO_68, :2] - gt, axis=1).mean() / size < 0.04
    assert runner.detect(np.full((200, 200, 3), 128, np.uint8)) == []


def test_image_outputs_grayscale_and_two_faces(tmp_path, cli):
    import imageio.v3 as iio

    from flowcli.errors import OutputError
    from flowcli.face.writers import read_obj, read_ply

    image = iio.imread(IMAGE)
    gray, two = tmp_path / "gray.png", tmp_path / "two.png"
    iio.imwrite(gray, image.mean(2).astype(np.uint8))  # a single-channel picture
    iio.imwrite(two, np.concatenate([image, image[:, ::-1]], 1))
    out = tmp_path / "out"
    run = cli(["face", "fit", IMAGE, gray, two, "-o", out, "--json", "--mesh-format", "both", "--max-faces", "2", "-q"])
    assert run.exit_code == 0, run.output
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [(r["status"], r["face"]) for r in records] == [("ok", 1), ("ok", 1), ("ok", 1), ("ok", 2)]
    assert abs(records[0]["yaw"]) < 10 and abs(records[1]["yaw"] - records[0]["yaw"]) < 3
    assert abs(records[2]["yaw"] + records[3]["yaw"]) < 5  # the mirrored face turns the other way
    mesh = read_obj(out / "image00050.obj")
    assert mesh["vertices"].shape == (9409, 3) and mesh["uvs"].shape[1] == 2
    assert read_ply(out / "image00050.ply")["triangles"].shape == (18460, 3)
    assert (out / "two.face2.obj").is_file()
    pose = json.loads((out / "image00050.pose.json").read_text())
    assert np.allclose(np.array(pose["rotation"]) @ np.array(pose["rotation"]).T, np.eye(3), atol=1e-5)
    assert np.load(out / "image00050.landmarks68.npy").shape == (68, 2)
    assert np.load(out / "image00050.landmarks468.npy").shape == (468, 3)
    header = (out / "image00050.blendshapes.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "frame" and "jawOpen" in header and len(header) == 53
    assert iio.imread(out / "image00050.overlay.png").shape == (450, 450, 3)
    again = cli(["face", "fit", IMAGE, "-o", out])  # existing outputs: refused before any work
    assert isinstance(again.exception, OutputError) and again.exception.exit_code == 3


def test_video(tmp_path, cli):
    import imageio.v3 as iio

    out = tmp_path / "out"
    run = cli(["face", "fit", FACE / "video" / "obama.mp4", "-o", out, "--json", "--max-frames", "4", "-q"])
    assert run.exit_code == 0, run.output
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [r["frame"] for r in records] == list(range(4)) and all(r["status"] == "ok" for r in records)
    assert np.load(out / "obama.landmarks68.npy").shape == (4, 68, 2)
    assert len((out / "obama.blendshapes.csv").read_text().splitlines()) == 5
    assert iio.imread(out / "obama.overlay.mp4").shape[:3] == (4, 720, 1280)
    pose = json.loads((out / "obama.pose.json").read_text())
    assert len(pose["frames"]) == 4 and len(pose["identity"]) == 100


def test_bad_inputs_exit_codes(tmp_path, cache):
    """Through the real entry point: one-line errors, exit code 2, a JSON record for the faceless image."""
    import imageio.v3 as iio

    blank, tiny = tmp_path / "blank.png", tmp_path / "tiny.png"
    iio.imwrite(blank, np.full((240, 320, 3), 90, np.uint8))
    iio.imwrite(tiny, np.zeros((20, 20, 3), np.uint8))
    env = dict(os.environ, FLOWCLI_FACE_ASSETS=str(FACE), FLOWCLI_CACHE=str(cache), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "from flowcli.cli.main import run; run()", "face", "fit", "--json", "-q"]
    run = subprocess.run(
        [*cmd, str(blank), str(tiny), "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 2, run.stderr
    assert json.loads(run.stdout.splitlines()[0])["status"] == "no_face"
    lines = run.stderr.strip().splitlines()
    assert "Traceback" not in run.stderr and all(line.startswith("error:") for line in lines)
    assert "no face found" in lines[0] and "at least 64 px" in lines[1] and "2 of 2 inputs failed" in lines[2]
