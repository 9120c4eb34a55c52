"""`flowcli face fit` end to end (MediaPipe through ai-edge-litert), including bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

FACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "face"
pytestmark = pytest.mark.skipif(not (FACE / "mediapipe" / "face_landmark.tflite").is_file(), reason="shared face data not present")
IMAGE = FACE / "aflw2000-3d" / "image00050.jpg"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ, FLOWCLI_FACE_ASSETS=str(FACE), FLOWCLI_CACHE=str(tmp_path_factory.mktemp("cache")), OMP_NUM_THREADS="1")
    return e


def flowcli(args, env):
    cmd = [sys.executable, "-c", "from flowcli.cli.main import run; run()", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_mediapipe_runner():
    import imageio.v3 as iio

    from flowcli.face.correspondence import MP_TO_68
    from flowcli.face.mediapipe import FaceMeshRunner, ssd_anchors

    assert ssd_anchors().shape == (896, 2)
    runner = FaceMeshRunner(FACE / "mediapipe")
    image = iio.imread(IMAGE)
    two = np.concatenate([image, image[:, ::-1]], 1)  # two faces side by side
    detections = runner.detect(two)
    assert len(detections) == 2
    lm = runner.landmarks(image, runner.detect(image)[0])
    assert lm.points.shape == (468, 3) and lm.score > 0.9
    text = (FACE / "aflw2000-3d" / "image00050_reannotated.pts").read_text()
    gt = np.array(text[text.index("{") + 1 : text.index("}")].split(), float).reshape(68, 2)
    size = np.sqrt(np.prod(gt.max(0) - gt.min(0)))
    assert np.linalg.norm(lm.points[MP_TO_68, :2] - gt, axis=1).mean() / size < 0.04
    assert runner.detect(np.full((200, 200, 3), 128, np.uint8)) == []


def test_image_outputs_and_grayscale(tmp_path, env):
    import imageio.v3 as iio

    from flowcli.face.writers import read_obj, read_ply

    gray = tmp_path / "gray.png"
    iio.imwrite(gray, iio.imread(IMAGE).mean(2).astype(np.uint8))  # a single-channel picture
    out = tmp_path / "out"
    run = flowcli(["face", "fit", IMAGE, gray, "-o", out, "--json", "--mesh-format", "both", "-q"], env)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert abs(records[0]["yaw"]) < 10 and abs(records[1]["yaw"] - records[0]["yaw"]) < 3
    mesh = read_obj(out / "image00050.obj")
    assert mesh["vertices"].shape == (9409, 3) and mesh["uvs"].shape[1] == 2
    assert read_ply(out / "image00050.ply")["triangles"].shape == (18460, 3)
    pose = json.loads((out / "image00050.pose.json").read_text())
    assert np.allclose(np.array(pose["rotation"]) @ np.array(pose["rotation"]).T, np.eye(3), atol=1e-5)
    assert np.load(out / "image00050.landmarks68.npy").shape == (68, 2)
    assert np.load(out / "image00050.landmarks468.npy").shape == (468, 3)
    header = (out / "image00050.blendshapes.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "frame" and "jawOpen" in header and len(header) == 53
    assert iio.imread(out / "image00050.overlay.png").shape == (450, 450, 3)
    # the same outputs again: refused before any work, exit code 3
    again = flowcli(["face", "fit", IMAGE, "-o", out], env)
    assert again.returncode == 3 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_bad_inputs(tmp_path, env):
    import imageio.v3 as iio

    blank, tiny = tmp_path / "blank.png", tmp_path / "tiny.png"
    iio.imwrite(blank, np.full((240, 320, 3), 90, np.uint8))
    iio.imwrite(tiny, np.zeros((20, 20, 3), np.uint8))
    run = flowcli(["face", "fit", blank, "-o", tmp_path / "out", "--json"], env)
    assert run.returncode == 2
    assert json.loads(run.stdout.splitlines()[0])["status"] == "no_face"
    assert run.stderr.strip().splitlines()[-1].startswith("error:") and "no face found" in run.stderr
    assert "Traceback" not in run.stderr
    run = flowcli(["face", "fit", tiny, "-o", tmp_path / "out"], env)
    assert run.returncode == 2 and "at least 64 px" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_video(tmp_path, env):
    import imageio.v3 as iio

    video = FACE / "video" / "obama.mp4"
    out = tmp_path / "out"
    run = flowcli(["face", "fit", video, "-o", out, "--json", "--max-frames", "5", "-q"], env)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["frame"] for r in records] == list(range(5)) and all(r["status"] == "ok" for r in records)
    assert np.load(out / "obama.landmarks68.npy").shape == (5, 68, 2)
    assert len((out / "obama.blendshapes.csv").read_text().splitlines()) == 6
    assert iio.imread(out / "obama.overlay.mp4").shape[:3] == (5, 720, 1280)
    frames = json.loads((out / "obama.pose.json").read_text())["frames"]
    assert len(frames) == 5 and len(json.loads((out / "obama.pose.json").read_text())["identity"]) == 100
