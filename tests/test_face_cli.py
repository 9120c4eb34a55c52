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


def test_detecting_in_a_long_panorama_needs_no_square_canvas_of_its_long_side(tmp_path):
    """Detection padded a picture to a square of its long side, then shrank that to the detector's 128 px: a
    1000 x 30000 panorama built a 30000 x 30000 canvas (2.7 GB). Measured in a fresh process, where the peak
    memory is the detection's."""
    code = """if True:
        import resource, sys
        import numpy as np
        from flowcli.face.mediapipe import FaceMeshRunner
        runner = FaceMeshRunner(sys.argv[1])
        image = np.full((8000, 64, 3), 128, np.uint8)  # a square of 8000 px side is 256 MB
        runner.detect(image[:64])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        runner.detect(image)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code, str(FACE / "mediapipe")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < 32, f"detection took {run.stdout.strip()} MB more"


def test_faces_in_letterboxed_pictures_are_found_where_they_are():
    import imageio.v3 as iio

    from flowcli.face.mediapipe import FaceMeshRunner

    runner = FaceMeshRunner(FACE / "mediapipe")
    image = iio.imread(IMAGE)
    (square,) = runner.detect(image)
    size = square.box[2] - square.box[0]
    for pad, shift in ((((0, 0), (137, 300)), 137), (((211, 90), (0, 0)), 211), (((0, 0), (0, 60)), 0)):
        (found,) = runner.detect(np.pad(image, (*pad, (0, 0))))
        offset = [shift, 0] if pad[1][0] else [0, shift]
        assert np.abs(found.box - offset * 2 - square.box).max() < 0.1 * size
        assert np.abs(found.keypoints[:4] - offset - square.keypoints[:4]).max() < 0.1 * size


def test_path_options_expand_a_tilde_the_shell_left(tmp_path, cli, monkeypatch):
    """--face-model=~/m.npz and --output=~/faces reach flowcli with their ~ (the shell expands it only at the start
    of a word); --face-assets expanded it, the others looked for a folder named ~ in the current one."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    (home / "own.npz").symlink_to(FACE / "ict-facekit" / "ict_face_region.npz")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    fast = ["--no-overlay", "--mesh-format", "none", "-q"]
    run = cli(["face", "fit", IMAGE, "--face-model=~/own.npz", "--output=~/faces", *fast])
    assert run.exit_code == 0, run.output
    assert (home / "faces" / "image00050.pose.json").is_file() and os.listdir(cwd) == []


def test_options_for_videos_only_warn_when_no_input_is_a_video(tmp_path, cli):
    """--flow, --max-frames, --video-mode with pictures only (and --max-faces with videos only) were accepted and
    ignored without a word."""
    import warnings

    from flowcli.errors import OutputError

    out = tmp_path / "out"
    out.mkdir()
    for name in ("image00050.pose.json", "obama.pose.json"):  # each run stops at an existing output, before any work
        (out / name).write_text("{}")
    video_only = ["--flow", "--max-frames", "3", "--video-mode", "joint"]
    message = "^--flow, --video-mode and --max-frames are left unused: no input is a video$"
    with pytest.warns(UserWarning, match=message) as record:
        run = cli(["face", "fit", IMAGE, *video_only, "-o", out, "-q"])
    assert isinstance(run.exception, OutputError), run.output
    assert len([w for w in record if "left unused" in str(w.message)]) == 1
    with pytest.warns(UserWarning, match="^--max-faces is left unused: no input is an image"):
        run = cli(["face", "fit", FACE / "video" / "obama.mp4", "--max-faces", "2", "-o", out, "-q"])
    assert isinstance(run.exception, OutputError), run.output
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "--.* left unused")  # an input each option acts on: no warning
        both = [IMAGE, FACE / "video" / "obama.mp4", "--max-faces", "2", *video_only[1:]]
        run = cli(["face", "fit", *both, "-o", out, "-q"])
        assert isinstance(run.exception, OutputError), run.output


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

    from flowcli.face.writers import read_obj

    out = tmp_path / "out"
    video = FACE / "video" / "obama.mp4"
    run = cli(["face", "fit", video, "-o", out, "--json", "--max-frames", "4", "--mesh-space", "image", "-q"])
    assert run.exit_code == 0, run.output
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [r["frame"] for r in records] == list(range(4)) and all(r["status"] == "ok" for r in records)
    assert all(r["outputs"]["overlay"] == str(out / "obama.overlay.mp4") for r in records)
    assert all(Path(p).is_file() for p in records[0]["outputs"].values())
    mesh = read_obj(out / "obama.obj")["vertices"]  # image space: pixels of the 1280x720 frame, not cm
    assert mesh[:, 0].min() > 0 and mesh[:, 0].max() < 1280 and np.ptp(mesh[:, 0]) > 100
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


def test_same_names_and_folders(tmp_path, cli):
    """Inputs that share a name keep their own results; a folder stands for its images in natural order."""
    import imageio.v3 as iio

    from flowcli.cli.face import _unique_stems

    paths = [Path("a/X.jpg"), Path("b/x.png"), Path("two.face2.jpg"), Path("two.jpg")]  # ignoring case, as macOS
    assert _unique_stems(paths, max_faces=2) == ["X", "x-2", "two.face2", "two-2"]
    image, other = iio.imread(IMAGE), iio.imread(FACE / "aflw2000-3d" / "image00251.jpg")
    for name, picture in (("d1/x.jpg", image), ("d2/x.jpg", image[:, ::-1]), ("x-2.jpg", other)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        iio.imwrite(tmp_path / name, picture)
    out, fast = tmp_path / "out", ["--no-overlay", "--mesh-format", "none", "--json", "-q"]
    run = cli(["face", "fit", tmp_path / "d1/x.jpg", tmp_path / "d2/x.jpg", tmp_path / "x-2.jpg", "-o", out, *fast])
    assert run.exit_code == 0, run.output
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [Path(r["outputs"]["pose"]).name for r in records] == ["x.pose.json", "x-3.pose.json", "x-2.pose.json"]
    for record in records:  # each photo's results are its own, none overwritten by another's
        assert json.loads(Path(record["outputs"]["pose"]).read_text())["input"] == record["input"]
    folder = tmp_path / "folder"
    folder.mkdir()
    iio.imwrite(folder / "img10.jpg", image)
    iio.imwrite(folder / "img2.png", image)
    (folder / "notes.txt").write_text("not a picture")
    run = cli(["face", "fit", folder, "-o", tmp_path / "out2", *fast])
    assert run.exit_code == 0, run.output
    assert [Path(json.loads(line)["input"]).name for line in run.stdout.splitlines()] == ["img2.png", "img10.jpg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    run = cli(["face", "fit", empty, "-o", tmp_path / "out3"])
    assert run.exception.exit_code == 2 and "holds no images" in str(run.exception)


def test_image_layouts_fit(tmp_path, cli):
    """Gray + alpha, CMYK and an EXIF-rotated copy of a frontal face all fit, upright."""
    from PIL import Image

    picture = Image.open(IMAGE)
    picture.convert("LA").save(tmp_path / "la.png")
    picture.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown upright
    picture.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    inputs = [IMAGE, tmp_path / "la.png", tmp_path / "cmyk.jpg", tmp_path / "rotated.jpg"]
    run = cli(["face", "fit", *inputs, "-o", tmp_path / "out", "--no-overlay", "--mesh-format", "none", "--json", "-q"])
    assert run.exit_code == 0, run.output
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok"] * 4
    for record in records[1:]:
        assert abs(record["roll"] - records[0]["roll"]) < 3 and abs(record["yaw"] - records[0]["yaw"]) < 3


def test_a_larger_face_like_region_does_not_hide_the_face(tmp_path, cli):
    """An upside-down face is detected (larger) but takes no landmarks: the smaller upright face is fitted,
    not reported as no face, and no warning invites --max-faces 2 for a face that is not there."""
    from PIL import Image

    picture = Image.open(IMAGE)
    canvas = Image.new("RGB", (700, 450), (200, 200, 200))
    canvas.paste(picture.transpose(Image.Transpose.ROTATE_180), (0, 0))
    canvas.paste(picture.resize((220, 220)), (470, 100))
    canvas.save(tmp_path / "poster.jpg", quality=95)
    run = cli(["face", "fit", tmp_path / "poster.jpg", "-o", tmp_path / "out", "--no-overlay", "--json", "-q"])
    assert run.exit_code == 0, run.output
    record = json.loads(run.stdout.splitlines()[0])
    assert record["status"] == "ok" and record["faces_found"] == 1 and abs(record["yaw"]) < 10
    landmarks = np.load(tmp_path / "out" / "poster.landmarks68.npy")
    assert landmarks[:, 0].min() > 470 and landmarks[:, 1].min() > 100  # on the small upright face
    assert "--max-faces" not in run.stderr


def test_bad_face_models(tmp_path, cli):
    """An incomplete OBJ folder, an empty model and a picture given as a model: one line, exit 2 or 4."""
    from flowcli.errors import WeightsError

    neutral = tmp_path / "neutral"
    neutral.mkdir()
    (neutral / "generic_neutral_mesh.obj").symlink_to(FACE / "ict-facekit" / "FaceXModel" / "generic_neutral_mesh.obj")
    run = cli(["face", "convert", neutral, "-o", tmp_path / "m.npz"])
    assert run.exception.exit_code == 2
    assert "no identity modes" in str(run.exception) and "no expression" in str(run.exception)
    assert not (tmp_path / "m.npz").exists()
    with np.load(FACE / "ict-facekit" / "ict_face_region.npz") as data:
        mean, names = data["mean"], data["exp_names"]
    empty = np.zeros((0, *mean.shape))
    np.savez(tmp_path / "empty.npz", mean=mean, id=empty, exp=empty, exp_names=names[:0])
    models = [(tmp_path / "empty.npz", "no identity modes"), (IMAGE, "not a face model .npz"), (neutral, "no identity")]
    for model, message in models:
        run = cli(["face", "fit", IMAGE, "--face-model", model, "-o", tmp_path / "out", "-q"])
        assert isinstance(run.exception, WeightsError) and run.exception.exit_code == 4, run.output
        assert message in str(run.exception) and "\n" not in str(run.exception)
    assert not (tmp_path / "out").exists()  # a run that cannot start leaves no folder behind


def test_convert_refuses_an_output_that_is_not_npz(tmp_path, cli):
    """A wrong -o is an output error (exit 3) in every command, said with what to give instead."""
    run = cli(["face", "convert", FACE / "ict-facekit" / "FaceXModel", "-o", tmp_path / "ict.npy"])
    assert run.exception.exit_code == 3, run.output
    assert "give e.g. -o ict.npz" in str(run.exception)
    assert not (tmp_path / "ict.npy").exists()


def test_library_fit_image_takes_float_gray_and_rgba_pictures(monkeypatch):
    """FacePipeline.fit_image is the library entry point: it converts pictures as the CLI's reader does."""
    from flowcli.face.assets import FaceAssets
    from flowcli.face.media import read_image
    from flowcli.face.pipeline import FacePipeline

    monkeypatch.setenv("FLOWCLI_FACE_ASSETS", str(FACE))
    pipeline = FacePipeline(FaceAssets.locate(offline=True))
    rgb = read_image(IMAGE)
    reference = pipeline.fit_image(rgb)[0][0].landmarks68[:, :2]
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    for picture in (rgb / 255.0, rgba, rgb.mean(axis=2).astype(np.uint8)):
        results, total = pipeline.fit_image(picture)
        assert total == 1 and np.abs(results[0].landmarks68[:, :2] - reference).mean() < 3  # pixels


@pytest.fixture
def emitted(monkeypatch):
    """The --json records, each checked when printed: every file it names must already exist."""
    from flowcli.cli import face

    records, emit = [], face.FaceJob._emit

    def checked(self, record):
        missing = [p for p in record.get("outputs", {}).values() if not Path(p).is_file()]
        assert not missing, f"record printed before its files exist: {missing}"
        records.append(record)
        emit(self, record)

    monkeypatch.setattr(face.FaceJob, "_emit", checked)
    return records


def test_every_face_record_names_existing_files(tmp_path, cli, emitted):
    """With several faces, each face's `outputs` name files that exist when the record is printed, the
    overlay included (one picture shows all faces; there is no NAME.face2.overlay.png)."""
    import imageio.v3 as iio

    image = iio.imread(IMAGE)
    two = tmp_path / "two.png"
    iio.imwrite(two, np.concatenate([image, image[:, ::-1]], 1))
    out = tmp_path / "out"
    run = cli(["face", "fit", two, "-o", out, "--max-faces", "2", "--mesh-format", "none", "--json", "-q"])
    assert run.exit_code == 0, run.output
    assert [r["face"] for r in emitted] == [1, 2]
    assert {r["outputs"]["overlay"] for r in emitted} == {str(out / "two.overlay.png")}


def test_video_independent_identity_and_interrupted_overlay(tmp_path, cli, emitted, monkeypatch):
    """--video-mode independent: each frame's pose entry carries its own identity, so the per-frame pose,
    identity and blendshapes reproduce the written landmarks. A run stopped while writing the overlay
    leaves no mesh, no temp file and no output folder behind."""
    import imageio.v3 as iio

    from flowcli.errors import InputError
    from flowcli.face import render
    from flowcli.face.assets import FaceAssets
    from flowcli.face.fit import landmark68_surface_points

    frames = [iio.imread(IMAGE), iio.imread(FACE / "aflw2000-3d" / "image03614.jpg")]  # two people
    video = tmp_path / "two.mp4"
    iio.imwrite(video, np.stack(frames), fps=5, macro_block_size=1)
    out = tmp_path / "out"
    args = ["face", "fit", video, "-o", out, "--video-mode", "independent", "--blendshape-names", "ict", "-q"]
    calls, real_overlay = [], render.render_overlay

    def failing_overlay(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise InputError("stopped while writing the overlay")
        return real_overlay(*a, **k)

    monkeypatch.setattr(render, "render_overlay", failing_overlay)
    run = cli(args)
    assert isinstance(run.exception, InputError) and "stopped while writing" in str(run.exception)
    assert not out.exists() and [(r["status"], r["error"]) for r in emitted] == [
        ("error", "stopped while writing the overlay")
    ]  # the record of the failed input, which names no file
    emitted.clear()
    monkeypatch.setattr(render, "render_overlay", real_overlay)
    run = cli([*args, "--no-overlay", "--json"])
    assert run.exit_code == 0, run.output
    assert [r["status"] for r in emitted] == ["ok", "ok"]
    model = FaceAssets.locate(FACE).model()
    vids, bary = landmark68_surface_points(model)
    pose = json.loads((out / "two.pose.json").read_text())
    blend = json.loads((out / "two.blendshapes.json").read_text())["frames"]
    lm68 = np.load(out / "two.landmarks68.npy")
    identities = [np.array(f["identity"]) for f in pose["frames"]]
    assert np.abs(identities[0] - identities[1]).max() > 0.1  # two people, two identities
    for t, (frame, b) in enumerate(zip(pose["frames"], blend)):
        weights = [b["blendshapes"][n] for n in model.exp_names]
        v = model.vertices(identities[t], weights)
        image = frame["scale"] * v @ (np.diag([1.0, -1.0, -1.0]) @ np.array(frame["rotation"])).T
        image += np.array(frame["translation"])
        assert np.abs((image[vids] * bary[..., None]).sum(1)[:, :2] - lm68[t]).max() < 0.05  # pixels


def test_flow_with_independent_video_mode_is_refused(tmp_path, cli):
    """--flow acts only on joint video fits: with --video-mode independent it is an error before any work."""
    from flowcli.errors import InputError

    out = tmp_path / "out"
    run = cli(["face", "fit", FACE / "video" / "obama.mp4", "--flow", "--video-mode", "independent", "-o", out])
    assert isinstance(run.exception, InputError) and run.exception.exit_code == 2
    assert "--flow needs --video-mode joint" in str(run.exception) and not out.exists()


@pytest.mark.parametrize("options", [["--device", "cuda9"], ["--precision", "fp9"], ["--device", "cpu"]])
def test_device_and_precision_without_flow_are_refused(tmp_path, cli, options):
    """--device and --precision set the --flow model only: without --flow they were ignored, even misspelt, and a
    user asking for the GPU ran on the CPU without a word."""
    from flowcli.errors import InputError

    out = tmp_path / "out"
    run = cli(["face", "fit", FACE / "video" / "obama.mp4", *options, "-o", out])
    assert isinstance(run.exception, InputError) and run.exception.exit_code == 2
    assert f"{options[0]} set the --flow model" in str(run.exception) and not out.exists()


def test_flow_model_follows_device_and_precision(tmp_path, cli, monkeypatch):
    """--flow loaded the flow model on the CPU whatever the machine had: it runs on --device (auto: the GPU), at
    --precision (auto: fp16 on CUDA; fp16 asked for on the CPU runs in fp32), and a GPU asked for but absent
    is an error before any work."""
    import torch

    from flowcli.errors import FlowcliError
    from flowcli.face import video

    class Loaded(Exception):
        """Stops the run once the flow model would be loaded."""

    asked = []

    def flow_function(**kwargs):
        asked.append(kwargs)
        raise Loaded

    monkeypatch.setattr(video, "flow_function", flow_function)
    clip = FACE / "video" / "obama.mp4"
    with pytest.warns(UserWarning, match="fp16 is not supported on CPU"):
        run = cli(["face", "fit", clip, "--flow", "--device", "cpu", "--precision", "fp16", "-o", tmp_path / "a"])
    assert isinstance(run.exception, Loaded), run.output
    assert asked == [{"device": torch.device("cpu"), "precision": "fp32"}]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = cli(["face", "fit", clip, "--flow", "--device", "cuda", "-o", tmp_path / "b"])
    assert isinstance(run.exception, FlowcliError) and run.exception.exit_code == 2
    assert "no CUDA GPU" in str(run.exception) and not (tmp_path / "b").exists() and len(asked) == 1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for args, expected in (([], ("cuda", "fp16")), (["--device", "cuda:1", "--precision", "bf16"], ("cuda:1", "bf16"))):
        run = cli(["face", "fit", clip, "--flow", *args, "-o", tmp_path / "c"])
        assert isinstance(run.exception, Loaded), run.output
        assert asked[-1] == {"device": torch.device(expected[0]), "precision": expected[1]}


def test_folder_expansion_skips_flowcli_overlays_only(tmp_path):
    """An output folder given as input: flowcli's NAME.overlay.png/.mp4 (next to NAME.pose.json) are not
    inputs; a user's picture that merely ends in .overlay.png is."""
    from flowcli.cli.face import _expand_inputs

    for name in ("x.jpg", "x.overlay.png", "x.pose.json", "clip.mp4", "clip.overlay.mp4", "clip.pose.json"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "mine.overlay.png").write_bytes(b"")  # no mine.pose.json: a user's file
    assert [p.name for p in _expand_inputs([tmp_path])] == ["clip.mp4", "mine.overlay.png", "x.jpg"]
    assert _expand_inputs([tmp_path / "x.overlay.png"]) == [tmp_path / "x.overlay.png"]  # named explicitly


def test_overwrite_into_the_input_folder_replaces_the_earlier_run(tmp_path, cli):
    """-o the input folder, --overwrite: the earlier overlay is no input, and the earlier run's outputs for
    that stem that this run does not rewrite (NAME.ply, NAME.face2.*) are removed; other files stay."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(IMAGE, folder / "x.jpg")
    earlier = ["x.overlay.png", "x.pose.json", "x.obj", "x.ply", "x.face2.obj", "x.face2.pose.json"]
    shutil.copy(IMAGE, folder / earlier[0])  # stands in for the earlier run's overlay
    for name in earlier[1:]:
        (folder / name).write_text("earlier run")
    users = ["x.notes.txt", "x-2.obj", "x.face2.txt", "xy.obj", "x.face1.obj"]
    for name in users:
        (folder / name).write_text("mine")
    run = cli(["face", "fit", folder, "-o", folder, "--overwrite", "--json", "-q"])
    assert run.exit_code == 0, run.output
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [Path(r["input"]).name for r in records] == ["x.jpg"]
    expected = {"x.jpg", *users, *(Path(p).name for p in records[0]["outputs"].values())}
    assert {p.name for p in folder.iterdir()} == expected
    assert "x.ply" not in expected and (folder / "x.obj").read_text() != "earlier run"


def test_json_records_for_unreadable_inputs(tmp_path, cli):
    """--json: an unreadable or tiny image gets a record with status "error"; the exit code is as before (2)."""
    import imageio.v3 as iio

    from flowcli.errors import InputError

    tiny, broken = tmp_path / "tiny.png", tmp_path / "broken.jpg"
    iio.imwrite(tiny, np.zeros((20, 20, 3), np.uint8))
    broken.write_text("not a picture")
    run = cli(["face", "fit", tiny, broken, "-o", tmp_path / "out", "--json", "-q"])
    assert isinstance(run.exception, InputError) and run.exception.exit_code == 2
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [(Path(r["input"]).name, r["status"], r["face"]) for r in records] == [
        ("tiny.png", "error", None),
        ("broken.jpg", "error", None),
    ]
    assert "at least 64 px" in records[0]["error"] and records[1]["error"]
    run = cli(["face", "fit", tiny, "-o", tmp_path / "out", "--json", "-q"])  # one input: its own error, exit 2
    assert run.exception.exit_code == 2 and json.loads(run.stdout)["status"] == "error"


def test_a_variable_frame_rate_ts_clip_keeps_its_timing(tmp_path, cli, emitted):
    """A dashcam-style .ts clip could not be opened (imageio's reader refused the file), and the overlay and
    pose.json took the 30 fps the container states for a clip whose first frames are 0.25 s apart."""
    import subprocess

    import imageio.v3 as iio
    import imageio_ffmpeg

    image = iio.imread(IMAGE)
    for n in range(6):
        iio.imwrite(tmp_path / f"frame{n}.png", image if n % 2 else image[:, ::-1])
    clip = tmp_path / "dashcam.ts"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-framerate", "30", "-i", str(tmp_path / "frame%d.png"),
               "-vf", "setpts='if(lt(N,3),N*0.25,0.5+(N-2)/30)/TB'", "-fps_mode", "passthrough",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)]  # fmt: skip
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        pytest.skip("this ffmpeg cannot encode a .ts test video")
    out = tmp_path / "out"
    run = cli(["face", "fit", clip, "-o", out, "--video-mode", "independent", "--mesh-format", "none", "--json", "-q"])
    assert run.exit_code == 0, run.output
    assert [(r["frame"], r["status"]) for r in emitted] == [(t, "ok") for t in range(6)]
    fps = json.loads((out / "dashcam.pose.json").read_text())["fps"]
    assert fps == pytest.approx(5 / 0.6, abs=0.05)  # 6 frames over 0.6 s, not the stated 30 fps
    overlay = out / "dashcam.overlay.mp4"
    assert iio.imread(overlay).shape[0] == 6
    assert iio.immeta(overlay, plugin="FFMPEG")["fps"] == pytest.approx(fps, abs=0.01)


def test_flow_with_a_broken_checkpoint_stops_the_run(tmp_path, cli, monkeypatch):
    """--flow with a corrupt or missing flow checkpoint used to fit without the flow term after a warning blaming
    "unavailable" flow: it is the checkpoint's own one-line error (exit 4), once, before any video is fitted."""
    import imageio.v3 as iio

    from flowcli import models
    from flowcli.errors import WeightsError

    attempts = []

    def load_model(*args, **kwargs):
        attempts.append(1)
        raise WeightsError("flowcli-pwc-synth.safetensors is corrupt; reinstall flowcli")

    monkeypatch.setattr(models, "load_model", load_model)
    second = tmp_path / "second.mp4"
    iio.imwrite(second, np.stack([iio.imread(IMAGE)] * 2), fps=5, macro_block_size=1)
    out = tmp_path / "out"
    run = cli(["face", "fit", FACE / "video" / "obama.mp4", second, "--flow", "--max-frames", "2", "-o", out, "-q"])
    assert isinstance(run.exception, WeightsError) and run.exception.exit_code == 4, run.output
    assert "is corrupt; reinstall flowcli" in str(run.exception) and "unavailable" not in run.output
    assert attempts == [1] and not out.exists()


def test_a_failed_run_removes_every_output_folder_it_created(tmp_path, cli):
    """-o new/deep/out with an unreadable input: neither out nor the new folders above it are left behind."""
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a picture")
    run = cli(["face", "fit", broken, "-o", tmp_path / "new" / "deep" / "out", "-q"])
    assert run.exception.exit_code == 2, run.output
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that existed before the run stays, even when empty
    run = cli(["face", "fit", broken, "-o", tmp_path / "kept" / "deep" / "out", "-q"])
    assert run.exception.exit_code == 2 and sorted(os.listdir(tmp_path)) == ["broken.jpg", "kept"]
    assert os.listdir(tmp_path / "kept") == []


def test_a_face_model_with_too_few_vertices_is_a_weights_error(tmp_path, cli):
    """A --face-model cut short of ICT-FaceKit's face region is a model of the wrong shape: exit 4, before any work."""
    from flowcli.errors import WeightsError

    with np.load(FACE / "ict-facekit" / "ict_face_region.npz") as data:
        cut = {"mean": data["mean"][:9000], "id": data["id"][:2, :9000], "exp": data["exp"][:, :9000]}
        np.savez(tmp_path / "cut.npz", **cut, exp_names=data["exp_names"])
    run = cli(["face", "fit", IMAGE, "--face-model", tmp_path / "cut.npz", "-o", tmp_path / "out", "-q"])
    assert isinstance(run.exception, WeightsError) and run.exception.exit_code == 4, run.output
    assert "has 9000 vertices" in str(run.exception) and "flowcli face convert" in str(run.exception)
    assert not (tmp_path / "out").exists()


def test_a_face_model_without_arkit_or_ict_names_warns_that_arkit_weights_would_be_zero(tmp_path, cli):
    """A --face-model whose expressions have names of its own wrote ARKit columns of zeros, without a word."""
    import warnings

    with np.load(FACE / "ict-facekit" / "ict_face_region.npz") as data:
        own = np.array([f"shape{k}" for k in range(len(data["exp_names"]))])
        np.savez(tmp_path / "own.npz", mean=data["mean"], id=data["id"][:2], exp=data["exp"], exp_names=own)
    fast = ["--no-overlay", "--mesh-format", "none", "-q"]
    with pytest.warns(UserWarning, match="every ARKit blendshape weight would be 0.*--blendshape-names ict"):
        run = cli(["face", "fit", IMAGE, "--face-model", tmp_path / "own.npz", "-o", tmp_path / "out", *fast])
    assert run.exit_code == 0, run.output
    names = ["--blendshape-names", "ict"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "none of the face model")  # not for its own names, nor for ICT's
        run = cli(["face", "fit", IMAGE, "--face-model", tmp_path / "own.npz", "-o", tmp_path / "ict", *names, *fast])
        assert run.exit_code == 0, run.output
        run = cli(["face", "fit", IMAGE, "-o", tmp_path / "arkit", *fast])
        assert run.exit_code == 0, run.output
    assert "shape0" in (tmp_path / "ict" / "image00050.blendshapes.csv").read_text()


@pytest.mark.parametrize("landmarker", ["face_detection_short_range.tflite", None])
def test_a_landmark_model_that_is_another_model_or_broken_is_a_weights_error(tmp_path, cli, landmarker):
    """The detector's file in the landmarker's place (a valid TFLite model of other shapes) was a traceback at
    the first face; a file that does not load named neither its folder nor what to do."""
    from flowcli.errors import WeightsError

    assets = tmp_path / "assets"
    (assets / "mediapipe").mkdir(parents=True)
    (assets / "ict-facekit").symlink_to(FACE / "ict-facekit")
    (assets / "mediapipe" / "face_detection_short_range.tflite").symlink_to(
        FACE / "mediapipe" / "face_detection_short_range.tflite"
    )
    placed = assets / "mediapipe" / "face_landmark.tflite"
    if landmarker:
        placed.symlink_to(FACE / "mediapipe" / landmarker)
    else:
        placed.write_bytes(b"not a model")
    run = cli(["face", "fit", IMAGE, "--face-assets", assets, "-o", tmp_path / "out", "-q"])
    assert isinstance(run.exception, WeightsError) and run.exception.exit_code == 4, run.output
    message = str(run.exception)
    assert str(placed) in message and "flowcli weights download mediapipe-face" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("length", [235, 240])
def test_output_names_too_long_for_the_file_system_stop_the_run_before_any_work(tmp_path, cli, length):
    """An input whose output names (240: NAME.landmarks468.npy) or their temp files (235) exceed the file system's
    255 bytes: one line, exit 3, nothing written, instead of a traceback or a run that fails half-written."""
    from flowcli.errors import OutputError

    image = tmp_path / ("b" * length + ".jpg")
    image.symlink_to(IMAGE)
    run = cli(["face", "fit", image, "-o", tmp_path / "out", "-q"])
    assert isinstance(run.exception, OutputError) and run.exception.exit_code == 3, run.output
    assert "too long" in str(run.exception) and "shorter name" in str(run.exception)
    assert not (tmp_path / "out").exists()


def test_a_faceless_video_says_why_in_its_records(tmp_path, cli):
    """A video without a face fails (exit 2) like a faceless image: its records carry the error message, as a
    failed input's do; they had status no_face only, where the image's record had an error."""
    import imageio.v3 as iio

    from flowcli.errors import InputError

    video = tmp_path / "wall.mp4"
    iio.imwrite(video, np.full((3, 96, 96, 3), 128, np.uint8), fps=5, macro_block_size=1)
    run = cli(["face", "fit", video, "-o", tmp_path / "out", "--json", "-q"])
    assert isinstance(run.exception, InputError) and run.exception.exit_code == 2
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["frame"], r["status"], r["error"]) for r in records] == [
        (t, "no_face", "no face found in any of 3 frames") for t in range(3)
    ]
    assert "try a clip with a larger" in str(run.exception) and not (tmp_path / "out").exists()


def test_video_progress_names_the_file_as_given_and_counts_the_frames_with_a_face(tmp_path, cli):
    """The progress lines read a video named [red]take.mp4 as markup (it showed as take.mp4), and with
    --video-mode independent the fitting count went past its total, the frames with a face (3/2)."""
    import imageio.v3 as iio

    face = iio.imread(IMAGE)
    video = tmp_path / "[red]take.mp4"
    iio.imwrite(video, np.stack([np.full_like(face, 128), face, face]), fps=5, macro_block_size=1)
    run = cli(["face", "fit", video, "-o", tmp_path / "out", "--video-mode", "independent", "--no-overlay"])
    assert run.exit_code == 0, run.output
    fitting = [line for line in run.stderr.splitlines() if ": fitting" in line]
    assert fitting and fitting[-1].startswith("[red]take.mp4: fitting") and " 2/2 " in fitting[-1], run.stderr


def test_images_show_progress(tmp_path, cli):
    """Only videos had a progress bar: a folder of photos ran for minutes without a line, with or without -q."""
    import imageio.v3 as iio

    blank = tmp_path / "blank.png"
    iio.imwrite(blank, np.full((100, 100, 3), 128, np.uint8))
    run = cli(["face", "fit", IMAGE, blank, "-o", tmp_path / "out", "--no-overlay", "--mesh-format", "none"])
    assert run.exception.exit_code == 2, run.output  # a faceless image counts too
    images = [line for line in run.stderr.splitlines() if line.startswith("images")]
    assert images and " 2/2 " in images[-1], run.stderr
    quiet = cli(["face", "fit", IMAGE, "-o", tmp_path / "quiet", "--no-overlay", "--mesh-format", "none", "-q"])
    assert quiet.exit_code == 0 and "images" not in quiet.stderr, quiet.stderr


def test_an_output_that_cannot_be_written_stops_a_run_of_several_inputs(tmp_path, cli, monkeypatch):
    """A full disk while writing the first of two images was counted as a failed input: the run went on to the
    next and ended with exit 2 ("1 of 2 inputs failed"); it is an output error, exit 3, and the run stops."""
    import shutil

    from flowcli.errors import OutputError
    from flowcli.face import writers

    second = tmp_path / "second.jpg"
    shutil.copy(IMAGE, second)

    def full_disk(path, *args, **kwargs):
        raise OutputError(f"cannot write {path}: No space left on device; choose another output")

    monkeypatch.setattr(writers, "write_png", full_disk)
    run = cli(["face", "fit", IMAGE, second, "-o", tmp_path / "out", "--mesh-format", "none", "--json", "-q"])
    assert isinstance(run.exception, OutputError) and run.exception.exit_code == 3, run.output
    assert [(Path(r["input"]).name, r["status"]) for r in map(json.loads, run.stdout.splitlines())] == [
        ("image00050.jpg", "error")
    ]
    assert not list((tmp_path / "out").glob("second.*"))


def test_a_video_that_ends_early_when_read_again_is_one_line(tmp_path, cli, monkeypatch):
    """The joint fit decodes the clip a second time; a clip that gave fewer frames then (rewritten meanwhile) ended
    the run with a bare StopIteration traceback."""
    from itertools import islice

    import imageio.v3 as iio

    from flowcli.errors import InputError
    from flowcli.face import media

    video = tmp_path / "growing.mp4"
    iio.imwrite(video, np.stack([iio.imread(IMAGE)] * 3), fps=5, macro_block_size=1)
    opened = []

    class ShorterWhenReadAgain(media.VideoReader):
        def __iter__(self):
            opened.append(self.path)
            frames = super().__iter__()
            return frames if len(opened) == 1 else islice(frames, 1)

    monkeypatch.setattr(media, "VideoReader", ShorterWhenReadAgain)
    run = cli(["face", "fit", video, "-o", tmp_path / "out", "-q"])
    assert isinstance(run.exception, InputError) and run.exception.exit_code == 2, run.output
    assert str(run.exception).startswith(f"{video}: frame 1 could not be decoded again")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["video", "image"])
def test_an_input_interrupted_between_its_files_leaves_none_of_them(tmp_path, cli, monkeypatch, kind):
    """A video's overlay .mp4 was renamed into place before its mesh and JSON files were written: a Ctrl-C in
    between left NAME.overlay.mp4 without NAME.pose.json, and a re-run without --overwrite refused (an image's
    mesh, likewise, came before its JSON files). An input's files are now renamed into place together."""
    import shutil

    import imageio.v3 as iio

    from flowcli.face import writers

    if kind == "video":
        source = tmp_path / "clip.mp4"
        iio.imwrite(source, np.stack([iio.imread(IMAGE)] * 2), fps=5, macro_block_size=1)
    else:
        source = tmp_path / "photo.jpg"
        shutil.copy(IMAGE, source)
    real_write_json = writers.write_json

    def interrupted(path, *args, **kwargs):
        if str(path).endswith(".pose.json"):  # after the mesh (and a video's overlay) was written
            raise KeyboardInterrupt
        return real_write_json(path, *args, **kwargs)

    monkeypatch.setattr(writers, "write_json", interrupted)
    args = ["face", "fit", source, "-o", tmp_path / "out", "-q"]
    if kind == "video":
        args += ["--video-mode", "independent"]
    run = cli(args)
    assert run.exit_code != 0 and not (tmp_path / "out").exists(), run.output  # no file, no temp file, no folder
    monkeypatch.setattr(writers, "write_json", real_write_json)
    run = cli(args)  # the re-run finds nothing of the interrupted one in its way
    assert run.exit_code == 0, run.output
    assert (tmp_path / "out" / f"{source.stem}.pose.json").is_file()


def test_an_input_named_like_another_inputs_overlay_is_never_replaced_nor_removed(tmp_path, cli):
    """A folder fitted into itself with --overwrite: the picture x.overlay.png next to x.jpg (no x.pose.json, so a
    user's file and an input) was removed as a stale output of x, or replaced by x's overlay."""
    import shutil

    import imageio.v3 as iio

    from flowcli.errors import OutputError

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(IMAGE, folder / "x.jpg")
    iio.imwrite(folder / "x.overlay.png", np.full((100, 100, 3), 128, np.uint8))  # faceless: fails, x.jpg is fitted
    picture = (folder / "x.overlay.png").read_bytes()
    run = cli(["face", "fit", folder, "-o", folder, "--overwrite", "--no-overlay", "--mesh-format", "none", "-q"])
    assert run.exception.exit_code == 2 and "1 of 2 inputs failed" in str(run.exception), run.output
    assert (folder / "x.pose.json").is_file() and (folder / "x.overlay.png").read_bytes() == picture
    (folder / "x.pose.json").unlink()  # else x.overlay.png reads as the earlier run's overlay, not an input
    run = cli(["face", "fit", folder, "-o", folder, "--overwrite", "--mesh-format", "none", "-q"])
    assert isinstance(run.exception, OutputError) and run.exception.exit_code == 3, run.output
    assert "x.overlay.png is one of the inputs" in str(run.exception) and "another folder with -o" in str(run.exception)
    assert (folder / "x.overlay.png").read_bytes() == picture


def test_a_video_faster_than_an_mp4_overlay_stores_is_refused_before_its_fit(tmp_path, cli):
    """A clip timed in microseconds plays at millions of fps: its overlay was written at 1,001,000 fps (ffmpeg's
    most), shorter than the clip, while pose.json stated the clip's rate. It is refused before any work, saying
    that --no-overlay fits it."""
    import subprocess

    import imageio.v3 as iio
    import imageio_ffmpeg

    from flowcli.errors import InputError

    plain, clip = tmp_path / "plain.mp4", tmp_path / "fast.mp4"
    iio.imwrite(plain, np.full((2, 96, 96, 3), 128, np.uint8), fps=5, macro_block_size=1)
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i"]
    fine = tmp_path / "fine.mp4"
    commands = [
        [*ffmpeg, str(plain), "-c", "copy", "-video_track_timescale", "100000000", str(fine)],
        [*ffmpeg, str(fine), "-c", "copy", "-bsf:v", "setts=ts=N", str(clip)],  # frames 10 ns apart
    ]
    if any(subprocess.run(c, capture_output=True, check=False).returncode for c in commands):
        pytest.skip("this ffmpeg cannot re-time a test video")
    out = tmp_path / "out"
    run = cli(["face", "fit", clip, "-o", out, "--json", "-q"])
    assert isinstance(run.exception, InputError) and run.exception.exit_code == 2, run.output
    assert "plays at 1e+08 fps, above the 1,001,000 fps" in str(run.exception) and "--no-overlay" in str(run.exception)
    assert not out.exists()
