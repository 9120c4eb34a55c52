"""`flowcli stereo` end to end: outputs round-trip, the sign of disparity and depth = f B / d against a synthetic
stereo scene's ground truth, input forms and names, and one-line errors.

Accuracy-style checks replace the model's prediction with the scene's exact flows (`estimate_flow` patched),
so they test the command's arithmetic and files, not a network; input forms run a tiny random checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_harness import assert_one_line_error, in_process_cli, refuse_writes_before_the_model, snapshot, without_timing

from flowcli.checkpoint import save_checkpoint
from flowcli.cli.run_record import STAMP
from flowcli.inference import FlowResult
from flowcli.io.flow_formats import read_disparity_png, read_npy, read_pfm, read_png, write_png
from flowcli.io.media import VideoReader, VideoWriter
from flowcli.metrics import occlusion_f1
from flowcli.models.pwc import FlowNet, FlowNetConfig
from flowcli.stereo import disparity_to_rgb, read_ply
from flowcli.synth.stereo_video import StereoVideoConfig, generate_stereo_video

H, W = 48, 64
TINY = dict(pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,))
LR_F1_BOUND = 0.85  # left-right check on exact flows vs the scene's stereo occlusion (measured 0.97 on this scene)
PAIR_KEYS = {
    "type", "source", "index", "left", "right", "inputs", "width", "height", "outputs", "disparity_mean",
    "disparity_max", "negative_fraction", "vertical_median", "occluded_fraction", "camera", "depth_median", "points",
    "ms", "tiles", "model", "weights", "sha256",
}
HARNESS = """
import sys
from flowcli.cli import main
main._COMMAND_MODULES[:] = ["stereo"]
main.app.command("_noop", hidden=True)(lambda: None)
sys.argv[0] = "flowcli"
main.run()
"""


def _uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("stereo")
    torch.manual_seed(0)
    paths: dict = {"root": root, "weights": save_checkpoint(FlowNet(FlowNetConfig(**TINY)), root / "tiny.safetensors")}
    cfg = StereoVideoConfig(height=H, width=W, num_frames=3, photometric=False, real_texture_prob=0, max_disparity=12)
    scene = generate_stereo_video(cfg, torch.Generator().manual_seed(3))
    paths["scene"] = scene
    paths["left"] = write_png(root / "scene_left.png", _uint8(scene.left[0]))
    paths["right"] = write_png(root / "scene_right.png", _uint8(scene.right[0]))
    pairs = root / "pairs"  # one folder, pairs by name
    for t in range(2):
        write_png(pairs / f"shot{t}_left.png", _uint8(scene.left[t]))
        write_png(pairs / f"shot{t}_right.png", _uint8(scene.right[t]))
    paths["pairs"] = pairs
    for side in ("left", "right"):  # two folders, same names
        for t in range(3):
            write_png(root / f"cam_{side}" / f"{t:04d}.png", _uint8(getattr(scene, side)[t]))
    sbs = [np.concatenate((_uint8(scene.left[t]), _uint8(scene.right[t])), axis=1) for t in range(3)]
    paths["sbs"] = write_png(root / "sbs.png", sbs[0])
    with VideoWriter(root / "sbs.mp4", fps=5) as writer:
        for frame in sbs:
            writer.write(frame)
    paths["sbs_video"] = root / "sbs.mp4"
    for side in ("left", "right"):
        with VideoWriter(root / f"walk_{side}.mp4", fps=5) as writer:
            for t in range(3):
                writer.write(_uint8(getattr(scene, side)[t]))
        paths[f"video_{side}"] = root / f"walk_{side}.mp4"
    paths["small"] = write_png(root / "small.png", _uint8(scene.left[0])[:, :40])
    paths["odd"] = write_png(root / "odd.png", np.zeros((H, 63, 3), np.uint8))
    return paths


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `flowcli stereo ARGS` in-process: returns (exit code, stdout, stderr)."""
    return in_process_cli(monkeypatch, capsys, "stereo", show_every_warning=True)


@pytest.fixture
def exact_flow(monkeypatch, media):
    """The model 'predicts' the scene's exact stereo flows at frame 0 (optionally with a vertical offset)."""
    scene = media["scene"]
    state = {"vertical": 0.0}

    def fake(model, image1, image2, **kwargs):
        b = image1.shape[0]
        forward = scene.stereo_flow(0).clone()
        forward[1] += state["vertical"]
        d_right = scene.disparity_right[0]
        result = FlowResult(forward=forward[None].expand(b, -1, -1, -1).clone())
        if kwargs.get("backward"):
            result.backward = torch.cat((d_right, torch.zeros_like(d_right)))[None].expand(b, -1, -1, -1).clone()
        return result

    monkeypatch.setattr("flowcli.inference.estimate_flow", fake)
    return state


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_names_with_brackets_are_shown_as_given(media, tmp_path, cli, exact_flow):
    """`-o 'run[/v2]'` ended in a rich MarkupError traceback after the disparities were written, and the progress
    line showed 'left[v2]' as 'left'."""
    left = tmp_path / "left[v2].png"
    left.write_bytes(media["left"].read_bytes())
    weights = tmp_path / "tiny[best].safetensors"
    weights.write_bytes(media["weights"].read_bytes())
    out = tmp_path / "run[" / "v2]"
    code, _, err = cli(left, media["right"], "--weights", weights, "-o", out)
    assert code == 0, err
    assert f"model {weights} (" in err and f"1 pair(s) -> {out}\n" in err and "left[v2]" in err


# ----------------------------------------------------------------------------- outputs against ground truth


def test_depth_png_says_when_depths_beyond_its_range_were_written_as_invalid(media, tmp_path, cli, exact_flow):
    """A 16-bit millimetre PNG holds depths up to 65.535 m; farther pixels were written as 0 (invalid) without a
    word, so a far scene came out as holes."""
    scene = media["scene"]
    far = scene.focal * scene.baseline * 1000  # every depth x1000: tens of metres and more
    code, _, err = cli(media["left"], media["right"], "--weights", media["weights"], "--focal", far,
                       "--baseline", scene.baseline, "-o", tmp_path / "far", "--depth-png", "--depth", "-q")
    assert code == 0, err
    depth = read_npy(tmp_path / "far" / "scene_depth.npy")
    millimetres = read_png(tmp_path / "far" / "scene_depth.png")
    beyond = depth > 65.5355
    assert beyond.any() and (millimetres[beyond] == 0).all()
    assert "beyond 65.535 m" in err and "--depth-pfm" in err
    code, _, err = cli(media["left"], media["right"], "--weights", media["weights"], "--focal", scene.focal,
                       "--baseline", scene.baseline, "-o", tmp_path / "near", "--depth-png", "-q")
    assert code == 0 and "65.535" not in err, err




def test_every_output_round_trips_and_depth_is_f_b_over_d(media, tmp_path, cli, exact_flow):
    scene = media["scene"]
    out = tmp_path / "out"
    code, stdout, err = cli(media["left"], media["right"], "--weights", media["weights"], "--focal", scene.focal,
                            "--baseline", scene.baseline, "-o", out, "--all", "--json", "-q")
    assert code == 0, err
    [record] = _records(stdout)
    assert set(record) == PAIR_KEYS and record["type"] == "pair"
    assert record["left"] == "scene_left" and (record["width"], record["height"]) == (W, H)
    assert record["negative_fraction"] == 0 and record["vertical_median"] == 0
    paths = {key: Path(p) for key, p in record["outputs"].items()}
    assert set(paths) == {"pfm", "kitti", "npy", "vis", "occlusion", "depth", "depth_pfm", "depth_png", "ply"}
    assert paths["pfm"] == out / "scene_disp.pfm" and paths["ply"] == out / "scene_cloud.ply"

    gt = scene.disparity_left[0][0].numpy()
    disparity = read_pfm(paths["pfm"])
    np.testing.assert_array_equal(disparity, gt)  # positive: the sign of -u
    np.testing.assert_array_equal(read_npy(paths["npy"]), gt)
    kitti, valid = read_disparity_png(paths["kitti"])
    assert valid.all() and np.abs(kitti - gt).max() <= 1 / 512 + 1e-6
    np.testing.assert_array_equal(read_png(paths["vis"]), disparity_to_rgb(gt))

    depth = read_npy(paths["depth"])
    np.testing.assert_allclose(depth, scene.depth_left[0][0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(scene.focal * scene.baseline / depth, gt, rtol=1e-5)
    np.testing.assert_array_equal(read_pfm(paths["depth_pfm"]), depth)
    millimetres = read_png(paths["depth_png"])
    assert millimetres.dtype == np.uint16 and np.abs(millimetres / 1000.0 - depth).max() <= 0.0005 + 1e-7
    assert record["depth_median"] == pytest.approx(float(np.median(depth)), rel=1e-3)

    occlusion = read_png(paths["occlusion"]) > 127
    f1 = occlusion_f1(torch.from_numpy(occlusion)[None, None].float(), scene.occlusion_stereo[0][None])
    assert f1 > LR_F1_BOUND
    assert record["occluded_fraction"] == pytest.approx(occlusion.mean(), abs=1e-4)

    points, colours = read_ply(paths["ply"])
    ys, xs = np.nonzero(~occlusion)
    assert record["points"] == len(points) == len(ys)
    np.testing.assert_allclose(points[:, 2], depth[ys, xs], rtol=1e-6)
    np.testing.assert_allclose(points[:, 0], (xs - (W - 1) / 2) * depth[ys, xs] / scene.focal, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(colours, read_png(media["left"])[ys, xs])
    assert record["camera"]["focal"] == pytest.approx(scene.focal)
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [".flowcli-stereo.json"]  # the run record for --resume; no temp files left


def test_non_rectified_pair_warns_but_succeeds(media, tmp_path, cli, exact_flow):
    exact_flow["vertical"] = 5.0
    code, stdout, err = cli(media["left"], media["right"], "--weights", media["weights"], "-o", tmp_path, "--json",
                            "-q", "--npy")
    assert code == 0, err
    assert "warning:" in err and "does not look rectified" in err and "Traceback" not in err
    assert _records(stdout)[0]["vertical_median"] == pytest.approx(5.0)


def test_a_vertical_error_within_the_models_own_is_not_called_non_rectified(media, tmp_path, cli, exact_flow):
    """The warning fired at 1 px of median vertical flow, on 4 of the 12 rectified OAK-D pairs (the model's own
    error there reaches 3 px), while Middlebury's disparity barely changes until a pair is 4 px off."""
    exact_flow["vertical"] = 3.0
    code, stdout, err = cli(media["left"], media["right"], "--weights", media["weights"], "-o", tmp_path, "--json",
                            "-q", "--npy")
    assert code == 0, err
    assert "rectified" not in err
    assert _records(stdout)[0]["vertical_median"] == pytest.approx(3.0)


# ----------------------------------------------------------------------------- input forms, tiny model


def test_input_forms_and_names(media, tmp_path, cli):
    out = tmp_path / "out"
    root = media["root"]
    code, stdout, err = cli(
        media["pairs"], root / "cam_left", root / "cam_right", "--weights", media["weights"], "-o", out, "--npy",
        "--video", "--json", "-q", "--name", "{source}/{stem}",
    )
    assert code == 0, err
    records = _records(stdout)
    pairs = [r for r in records if r["type"] == "pair"]
    assert [(r["left"], r["right"]) for r in pairs] == [
        ("shot0_left", "shot0_right"), ("shot1_left", "shot1_right"),
        ("0000", "0000"), ("0001", "0001"), ("0002", "0002"),
    ]
    assert pairs[0]["outputs"] == {"npy": str(out / "pairs" / "shot0_disp.npy")}
    assert pairs[2]["outputs"] == {"npy": str(out / media["root"].name / "0000_disp.npy")}
    assert pairs[2]["inputs"] == [str(root / "cam_left" / "0000.png"), str(root / "cam_right" / "0000.png")]
    videos = [r for r in records if r["type"] == "video"]
    assert [v["frames"] for v in videos] == [2, 3]
    assert read_npy(pairs[0]["outputs"]["npy"]).shape == (H, W)

    out2 = tmp_path / "sbs"
    code, stdout, err = cli("--sbs", media["sbs"], media["sbs_video"], "--weights", media["weights"], "-o", out2,
                            "--pfm", "--video", "--json", "-q", "--max-frames", "2")
    assert code == 0, err
    records = _records(stdout)
    assert [(r["type"], r.get("left")) for r in records] == [
        ("pair", "sbs"), ("pair", "frame_000000"), ("pair", "frame_000001"), ("video", None),
    ]
    # sbs.png is already source "sbs", so the video's frames are named after source "sbs-2"
    assert records[1]["outputs"] == {"pfm": str(out2 / "sbs-2_frame_000000_disp.pfm")}
    assert records[1]["inputs"] == [f"{media['sbs_video']}#0"] and (records[1]["width"], records[1]["height"]) == (W, H)
    assert VideoReader(records[3]["outputs"]["video"]).size == (W, H)

    code, stdout, err = cli(media["video_left"], media["video_right"], "--weights", media["weights"], "-o",
                            tmp_path / "videos", "--npy", "--json", "-q", "--step", "2")
    assert code == 0, err
    records = _records(stdout)
    assert [r["outputs"]["npy"] for r in records] == [
        str(tmp_path / "videos" / f"walk_frame_{n:06d}_disp.npy") for n in (0, 2)
    ]


def test_pairs_with_the_same_name_are_refused_before_any_work(media, tmp_path, cli):
    scene = media["scene"]
    folder = tmp_path / "f3"  # two pairs of one folder both named a: a_left / a_right and a_L / a_R
    for left, right in (("a_left", "a_right"), ("a_L", "a_R")):
        write_png(folder / f"{left}.png", _uint8(scene.left[0]))
        write_png(folder / f"{right}.png", _uint8(scene.right[0]))
    out = tmp_path / "out"
    w = ["--weights", media["weights"], "-o", out, "-q", "--npy"]
    for overwrite in ([], ["--overwrite"]):
        code, _, err = cli(folder, *w, *overwrite)
        assert_one_line_error(code, err, 3, "pair 0 (a)", "pair 1 (a)", "would both write", "add {index} to --name")
        code, _, err = cli(media["left"], media["right"], media["left"], media["right"], *w, *overwrite)
        assert_one_line_error(code, err, 3, "(input 1)", "(input 2)", "add {source} to --name")
        assert not out.exists()
    code, _, err = cli(folder, *w, "--name", "{index}_{stem}")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".flowcli-stereo.json", "0_a_disp.npy", "1_a_disp.npy"]


def test_inputs_of_the_same_name_get_distinct_sources(media, tmp_path, cli):
    root, out = media["root"], tmp_path / "out"
    folders = [root / "cam_left", root / "cam_right"] * 2
    args = [*folders, "--weights", media["weights"], "-o", out, "-q", "--npy", "--video", "--json"]
    code, _, err = cli(*args)
    assert_one_line_error(code, err, 3, "pair 0 (0000)", "add {source} to --name")
    assert not out.exists()
    code, stdout, err = cli(*args, "--name", "{source}/{stem}")
    assert code == 0, err
    records = _records(stdout)
    sources = [root.name, f"{root.name}-2"]
    assert [r["outputs"]["npy"] for r in records if r["type"] == "pair"] == [
        str(out / name / f"{t:04d}_disp.npy") for name in sources for t in range(3)
    ]
    videos = [r["outputs"]["video"] for r in records if r["type"] == "video"]
    assert videos == [str(out / f"{name}_disp_vis.mp4") for name in sources]
    # video frames are named {source}_frame_NNNNNN: distinct sources, distinct names
    clips = [tmp_path / folder / "clip.mp4" for folder in ("va", "vb")]
    for clip in clips:
        clip.parent.mkdir()
        clip.write_bytes(media["sbs_video"].read_bytes())
    out = tmp_path / "videos"
    code, stdout, err = cli("--sbs", *clips, "--max-frames", "1", "--weights", media["weights"], "-o", out, "--npy")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        ".flowcli-stereo.json", "clip-2_frame_000000_disp.npy", "clip_frame_000000_disp.npy"
    ]


def test_side_by_side_images_in_a_row_take_step_and_max_frames_as_a_folder_of_them_does(media, tmp_path, cli):
    frames = tmp_path / "frames"
    for t in range(4):
        write_png(frames / f"f{t}.png", read_png(media["sbs"]))
    shell_glob = [frames / f"f{t}.png" for t in range(4)]
    w = ["--weights", media["weights"], "--npy", "--json", "-q"]
    for inputs in ([frames], shell_glob):
        out = tmp_path / f"out{len(inputs)}"
        code, stdout, err = cli("--sbs", *inputs, "--step", "2", *w, "-o", out)
        assert code == 0, err
        assert [r["left"] for r in _records(stdout)] == ["f0", "f2"]
        code, stdout, err = cli("--sbs", *inputs, "--max-frames", "1", *w, "-o", out, "--overwrite")
        assert code == 0, err
        assert [r["left"] for r in _records(stdout)] == ["f0"]


def test_every_video_pair_name_is_checked_before_any_work(media, tmp_path, monkeypatch, capsys):
    # warnings filtered as for users: imageio-ffmpeg leaves ResourceWarnings behind when a video is closed early
    cli = in_process_cli(monkeypatch, capsys, "stereo")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sbs_frame_000002_disp.npy").write_bytes(b"keep me")
    w = ["--weights", media["weights"], "-o", out, "-q"]
    code, _, err = cli("--sbs", media["sbs_video"], "--step", "2", "--formats", "npy,video", *w)
    assert_one_line_error(code, err, 3, "sbs_frame_000002_disp.npy", "already exists")
    assert [p.name for p in out.iterdir()] == ["sbs_frame_000002_disp.npy"]


def test_swap_names_outputs_after_the_true_left_view(media, tmp_path, cli):
    w = ["--swap", "--weights", media["weights"], "-o", tmp_path, "--npy", "--json", "-q"]
    code, stdout, err = cli(media["right"], media["left"], *w)
    assert code == 0, err
    [record] = _records(stdout)
    assert (record["left"], record["right"]) == ("scene_left", "scene_right")
    assert record["inputs"] == [str(media["left"]), str(media["right"])]
    assert record["outputs"] == {"npy": str(tmp_path / "scene_disp.npy")}
    code, stdout, err = cli(media["video_right"], media["video_left"], "--max-frames", "1", *w)
    assert code == 0, err
    assert _records(stdout)[0]["inputs"] == [f"{media['video_left']}#0", f"{media['video_right']}#0"]
    import shutil  # videos without left/right tokens: named after the one given second, the true left

    shutil.copy(media["video_right"], tmp_path / "a.mp4")
    shutil.copy(media["video_left"], tmp_path / "b.mp4")
    code, stdout, err = cli(tmp_path / "a.mp4", tmp_path / "b.mp4", "--max-frames", "1", *w)
    assert code == 0, err
    assert Path(_records(stdout)[0]["outputs"]["npy"]).name.startswith("b_frame_")


def test_a_glob_across_middlebury_scenes_pairs_im0_im1_per_folder(media, tmp_path, cli):
    scene, scenes = media["scene"], tmp_path / "middlebury"
    for name in ("motorcycle", "venus"):
        write_png(scenes / name / "im0.png", _uint8(scene.left[0]))
        write_png(scenes / name / "im1.png", _uint8(scene.right[0]))
    out = tmp_path / "out"
    code, stdout, err = cli(scenes / "*" / "im[01].png", "--weights", media["weights"], "-o", out, "--npy", "--json")
    assert code == 0, err
    assert [(r["inputs"], r["outputs"]["npy"]) for r in _records(stdout)] == [
        ([str(scenes / name / "im0.png"), str(scenes / name / "im1.png")], str(out / f"{name}_disp.npy"))
        for name in ("motorcycle", "venus")
    ]


def test_left_right_names_pair_up(tmp_path):
    from flowcli.cli.stereo import _match_folders, _pair_by_tokens, _role

    assert (_role("desk_left").side, _role("desk_left").bare) == ("left", "desk")
    assert (_role("frame_0001_R").side, _role("frame_0001_R").bare) == ("right", "frame_0001")
    assert _role("a_left_b").bare == "a_b" and _role("im1").bare == "" and _role("im1").side == "right"
    assert _role("leftover") is None and _role("0001") is None
    names = [Path(n) for n in ("x_left.png", "x_right.png", "im0.png", "im1.png", "Y-L.png", "Y-R.png")]
    assert sorted((a.name, b.name, bare) for a, b, bare in _pair_by_tokens(names)) == [
        ("Y-L.png", "Y-R.png", "Y"), ("im0.png", "im1.png", ""), ("x_left.png", "x_right.png", "x"),
    ]
    assert _pair_by_tokens([Path("x_left.png"), Path("y_right.png")]) is None
    # names pair across folders (one glob over L/ and R/); links are paired where they are, not where they point
    across = [Path("L/x_left.png"), Path("R/x_right.png")]
    assert [(a.name, b.name, bare) for a, b, bare in _pair_by_tokens(across)] == [("x_left.png", "x_right.png", "x")]
    links = []
    for scene, targets in (("scene1", "ab"), ("scene2", "cd")):  # git-annex / DVC style: links into a store
        (tmp_path / scene).mkdir()
        for name, target in zip(("im0.png", "im1.png"), targets, strict=True):
            (tmp_path / "store" / target).mkdir(parents=True)
            (tmp_path / "store" / target / "x.png").touch()
            (tmp_path / scene / name).symlink_to(tmp_path / "store" / target / "x.png")
            links.append(tmp_path / scene / name)
    assert sorted((a.parent.name, b.parent.name) for a, b, _ in _pair_by_tokens(links)) == [
        ("scene1", "scene1"), ("scene2", "scene2"),
    ]
    lefts = [Path("l/a.png"), Path("l/b.png")]
    with pytest.warns(UserWarning, match="natural order"):
        pairs = _match_folders(lefts, [Path("r/c.png"), Path("r/d.png")], "l and r")
    assert [(a.name, b.name) for a, b, _ in pairs] == [("a.png", "c.png"), ("b.png", "d.png")]
    with pytest.raises(Exception, match="a.png has no right image"):
        _match_folders(lefts, [Path("r/c.png")], "l and r")


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_are_one_line_errors(media, tmp_path, cli):
    w = ["--weights", media["weights"], "-o", tmp_path / "out", "-q"]
    cases = [
        ((media["left"], media["small"]), 2, ("differ in size", "64x48", "40x48")),
        ((media["left"], media["right"], "--focal", "-100", "--baseline", "0.1"), 2, ("--focal must be a positive",)),
        ((media["left"], media["right"], "--focal", "100", "--baseline", "0"), 2, ("--baseline must be a positive",)),
        ((media["left"], media["right"], "--focal", "100"), 2, ("--baseline",)),
        ((media["left"], media["right"], "--ply"), 2, ("--ply needs a camera",)),
        ((media["left"], media["right"], "--calib", media["root"] / "nope.json"), 2, ("does not exist",)),
        ((media["left"], media["right"], media["left"]), 2, ("no partner",)),
        (("--sbs", media["odd"]), 2, ("odd width",)),
        ((media["sbs_video"],), 2, ("--sbs",)),
        ((media["left"], media["right"], "--formats", "pfm,zip"), 3, ("unknown output format 'zip'",)),
        ((media["left"], media["right"], "--name", "{frame1}"), 3, ("unknown placeholder {frame1}",)),
        ((media["left"], media["right"], "--name", ""), 3, ('--name "" is empty',)),
        ((media["left"], media["right"], "--precision", "fp8"), 2, ("unknown precision 'fp8'",)),
        ((media["left"], media["right"], "--batch-size", "0"), 2, ("--batch-size must be at least 1",)),
        ((media["left"], media["right"], "--lr-threshold", "0"), 2, ("--lr-threshold must be a positive",)),
        # below the video writer's least rate: refused before the model, not a traceback when the video opens
        ((media["pairs"], "--video", "--fps", "1e-9"), 3, ("--fps must be a positive number of at least 0.001",)),
        ((media["pairs"], "--video", "--fps", "2e6"), 3, ("--fps 2e+06 is above 1,001,000",)),
    ]
    for args, expected, needles in cases:
        code, _, err = cli(*args, *w)
        assert_one_line_error(code, err, expected, *needles)
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"fx": 451.0, "baseline_meters": 0.075, "width": 640, "height": 480}))
    code, _, err = cli(media["left"], media["right"], "--calib", calib, *w)
    assert_one_line_error(code, err, 2, "640x480", f"{W}x{H}")
    assert not (tmp_path / "out").exists()
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "scene_disp.pfm").write_bytes(b"x")
    code, _, err = cli(media["left"], media["right"], "--weights", media["weights"], "-o", existing, "-q")
    assert_one_line_error(code, err, 3, "already exists", "--overwrite")


def test_a_video_rate_below_the_writers_least_from_step_is_refused_before_the_model(media, tmp_path, monkeypatch,
                                                                                   capsys):
    """5 fps / --step 10000 = 0.0005 fps was a traceback (ValueError) from the video writer, after the model loaded.
    (Not `cli`: it shows every warning, and the header reads of the videos leave ResourceWarnings, a media.py
    matter.)"""
    run = in_process_cli(monkeypatch, capsys, "stereo")
    out = tmp_path / "out"
    code, _, err = run(media["video_left"], media["video_right"], "--video", "--step", "10000", "--weights",
                       media["weights"], "-o", out, "-q")
    assert_one_line_error(code, err, 3, "video would have 0.0005 fps", "below the least of 0.001; give --fps")
    assert not out.exists()
    code, stdout, err = run(media["video_left"], media["video_right"], "--video", "--step", "10000", "--fps", "1",
                            "--json", "--weights", media["weights"], "-o", out, "-q")
    assert code == 0, err
    assert _records(stdout)[-1]["fps"] == 1.0


def test_model_options_are_spelled_as_in_the_other_commands(media, tmp_path, cli):
    """-w is --weights in eval and adapt, and --precision auto is adapt's default: both work here too."""
    code, _, err = cli(media["left"], media["right"], "-w", media["weights"], "--precision", "auto",
                       "--device", "cpu", "-o", tmp_path / "out")
    assert code == 0, err
    assert "on cpu, fp32" in err
    assert (tmp_path / "out" / "scene_disp.pfm").is_file()


def test_real_process_error_has_no_traceback(media, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", HARNESS, "stereo", str(media["left"]), str(media["right"]), "--focal", "0",
         "--baseline", "0.1", "-o", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == "error: --focal must be a positive number of pixels, got 0"


def test_a_pair_given_from_a_subfolder_is_named_after_its_real_folder(media, tmp_path, cli, monkeypatch):
    scene, rig = media["scene"], tmp_path / "rig"
    write_png(rig / "left.png", _uint8(scene.left[0]))
    write_png(rig / "right.png", _uint8(scene.right[0]))
    (rig / "sub").mkdir()
    monkeypatch.chdir(rig / "sub")
    code, stdout, err = cli("../left.png", "../right.png", "--weights", media["weights"], "-o", tmp_path / "o", "--npy",
                            "--json")
    assert code == 0, err
    assert [r["outputs"]["npy"] for r in _records(stdout)] == [str(tmp_path / "o" / "rig_disp.npy")]


def test_a_glob_from_the_parent_folder_names_its_real_folder(media, tmp_path, cli, monkeypatch):
    # '../*.png' was named '..', and --name '{source}/...' then wrote next to the output folder, not in it
    scene, rig = media["scene"], tmp_path / "rig"
    write_png(rig / "x_left.png", _uint8(scene.left[0]))
    write_png(rig / "x_right.png", _uint8(scene.right[0]))
    (rig / "sub").mkdir()
    monkeypatch.chdir(rig / "sub")
    code, stdout, err = cli("../*.png", "--weights", media["weights"], "-o", "out", "--name", "{source}/{index}",
                            "--npy", "--json", "-q")
    assert code == 0, err
    assert [r["outputs"] for r in _records(stdout)] == [{"npy": "out/rig/0_disp.npy"}]
    assert Path("out/rig/0_disp.npy").is_file() and not Path("0_disp.npy").exists()


def _rig_of_two_sizes(media, tmp_path) -> Path:
    """A folder of two left/right pairs by name, the second narrower (40 px) than the first."""
    scene, rig = media["scene"], tmp_path / "rig"
    write_png(rig / "a_left.png", _uint8(scene.left[0]))
    write_png(rig / "a_right.png", _uint8(scene.right[0]))
    write_png(rig / "b_left.png", _uint8(scene.left[1])[:, :40])
    write_png(rig / "b_right.png", _uint8(scene.right[1])[:, :40])
    return rig


def test_a_calibration_size_is_checked_against_every_pair_before_any_output(media, tmp_path, cli):
    # only the folder's first pair was checked up front: the first pairs' files were written, then the run failed
    rig = _rig_of_two_sizes(media, tmp_path)
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"fx": 100.0, "baseline_meters": 0.1, "width": W, "height": H}))
    out = tmp_path / "out"
    code, stdout, err = cli(rig, "--calib", calib, "--weights", media["weights"], "-o", out, "--json", "-q")
    assert_one_line_error(code, err, 2, f"{W}x{H}", f"40x{H}")
    assert stdout == "" and not out.exists()


def test_an_output_folder_that_refuses_files_fails_before_the_model(media, tmp_path, cli, monkeypatch):
    # as root, os.access says yes for read-only and special folders (/sys); the first write then gave a traceback
    refuse_writes_before_the_model(monkeypatch)
    code, stdout, err = cli(media["left"], media["right"], "--weights", media["weights"], "-o", tmp_path, "--json")
    assert_one_line_error(code, err, 3, "cannot write in output folder", "Permission denied")
    assert stdout == ""


def test_a_middlebury_scene_folder_leaves_out_images_without_a_partner(media, tmp_path, cli):
    # MiddEval3 / Middlebury 2014 scenes hold mask0nocc.png (and im1E.png, im1L.png) beside im0 / im1: the folder
    # was refused as not pairing up by name
    scene, scenes = media["scene"], tmp_path / "trainingQ"
    for name in ("Adirondack", "Motorcycle"):
        write_png(scenes / name / "im0.png", _uint8(scene.left[0]))
        write_png(scenes / name / "im1.png", _uint8(scene.right[0]))
        write_png(scenes / name / "mask0nocc.png", np.full((H, W), 255, np.uint8))
    out = tmp_path / "out"
    code, stdout, err = cli(scenes / "Adirondack", scenes / "*" / "*.png", "--weights", media["weights"], "-o", out,
                            "--npy", "--json", "-q", "--name", "{source}/{stem}")
    assert code == 0, err
    assert [r["inputs"] for r in _records(stdout)] == [
        [str(scenes / name / "im0.png"), str(scenes / name / "im1.png")]
        for name in ("Adirondack", "Adirondack", "Motorcycle")
    ]
    assert "1 image(s) without a left/right partner by name were left out (Adirondack/mask0nocc.png)" in err
    assert "2 image(s) without" in err and "left out (Adirondack/mask0nocc.png, Motorcycle/mask0nocc.png)" in err


def test_all_leaves_out_the_video_of_a_folder_whose_pairs_differ_in_size(media, tmp_path, cli):
    # --all means every format that applies, but a folder of two sizes was refused for the video
    rig = _rig_of_two_sizes(media, tmp_path)
    out = tmp_path / "out"
    code, stdout, err = cli(rig, "--weights", media["weights"], "-o", out, "--all", "--json", "-q")
    assert code == 0, err
    assert [r["type"] for r in _records(stdout)] == ["pair", "pair"]
    assert (out / "b_disp_vis.png").is_file() and not list(out.glob("*.mp4"))
    code, _, err = cli(rig, "--weights", media["weights"], "-o", tmp_path / "out2", "--video", "-q")
    assert_one_line_error(code, err, 2, "pairs differ in size", "--video")
    # without its video the folder is still listed: its image outputs are refused among its frames
    code, _, err = cli(rig, "--weights", media["weights"], "-o", rig, "--all", "-q")
    assert_one_line_error(code, err, 3, "would be an image among the frames of")


def test_fps_without_video_is_refused_instead_of_ignored(media, tmp_path, cli, monkeypatch):
    """`stereo l.png r.png --fps 24` wrote the pair's files and exited 0, the rate going nowhere."""
    from cli_harness import assert_refused_before_the_model

    assert_refused_before_the_model(monkeypatch, cli, media["left"], media["right"], "--fps", "24", "--weights",
                                    media["weights"], output=tmp_path / "out", exit_code=3,
                                    needle="--fps sets the frame rate of --video")  # fmt: skip


def test_video_of_image_pairs_only_is_refused_before_any_work(media, tmp_path, cli, monkeypatch):
    """`stereo l.png r.png --video` warned that single image pairs get no video, wrote the other files and exited 0,
    unlike `estimate a.png b.png --video`."""
    pair_list = tmp_path / "pairs.txt"
    pair_list.write_text(f"{media['left']} {media['right']}\n")
    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        patched.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
        for inputs in ([media["left"], media["right"]], ["--pairs", pair_list], ["--sbs", media["sbs"]]):
            code, stdout, err = cli(*inputs, "--video", "--npy", "--weights", media["weights"], "-o", out)
            assert_one_line_error(code, err, 2, "--video writes one video per sequence", "drop --video")
            assert stdout == "" and not out.exists()
    # --all writes every format that applies; a sequence among the inputs gets its video
    code, stdout, err = cli(media["left"], media["right"], "--all", "--weights", media["weights"], "-o", out, "-q")
    assert code == 0 and not list(out.glob("*.mp4")), err
    mixed = [media["left"], media["right"], media["pairs"], "--video", "--npy", "--json", "-q"]
    code, stdout, err = cli(*mixed, "--weights", media["weights"], "-o", tmp_path / "mixed")
    assert code == 0, err
    assert [r["type"] for r in _records(stdout)] == ["pair", "pair", "pair", "video"]


def test_formats_all_is_all_with_spaces_after_the_commas_too(media, tmp_path, cli):
    """--formats 'npy, all' (parse_formats strips the spaces) was not taken as 'all' when the depth formats were
    left out for want of a camera: it failed with '--depth needs a camera', while 'npy,all' worked."""
    for formats in ("npy,all", "npy, all", " ALL "):
        out = tmp_path / f"out{len(formats)}"
        code, _, err = cli(media["left"], media["right"], "--formats", formats, "--weights", media["weights"],
                           "-o", out, "-q")
        assert code == 0, err
        assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
            "scene_disp.npy", "scene_disp.pfm", "scene_disp.png", "scene_disp_vis.png", "scene_occ.png",
        ]


def test_a_baseline_in_millimetres_warns(media, tmp_path, cli, exact_flow):
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"fx": 100.0, "baseline_meters": 75}))  # 75 mm written as metres
    for camera in (("--calib", calib), ("--focal", "100", "--baseline", "120")):
        code, _, err = cli(media["left"], media["right"], *camera, "--weights", media["weights"], "-o",
                           tmp_path / camera[0], "-q")
        assert code == 0, err
        assert "warning: the baseline is" in err and "is it in millimetres?" in err
    # a calib.txt already takes millimetres: asking "is it in millimetres?" would mislead
    calib_txt = _middlebury_calib(tmp_path / "calib.txt", "193000")
    code, _, err = cli(media["left"], media["right"], "--calib", calib_txt, "--weights", media["weights"], "-o",
                       tmp_path / "calib_txt", "-q")  # fmt: skip
    assert code == 0 and "the baseline is 193 m" in err and "takes millimetres (193000 here)" in err, err
    assert "is it in millimetres?" not in err
    code, _, err = cli(media["left"], media["right"], "--focal", "100", "--baseline", "0.12", "--weights",
                       media["weights"], "-o", tmp_path / "metres", "-q")
    assert code == 0 and "baseline" not in err, err


def _middlebury_calib(path: Path, baseline: str) -> Path:
    path.write_text(
        f"cam0=[100 0 31.5; 0 100 23.5; 0 0 1]\ncam1=[100 0 31.5; 0 100 23.5; 0 0 1]\ndoffs=0\n"
        f"baseline={baseline}\nwidth={W}\nheight={H}\n"
    )
    return path


@pytest.mark.parametrize(
    "source, expected",
    [
        ("calib.txt", ("the baseline is 0.000193 m", "baseline= in", "takes millimetres", "meant in metres, give 193")),
        ("flag", ("the baseline is 0.0005 m", "--baseline takes metres (0.5 mm here)")),
        ("json_metres", ("the baseline is 0.0002 m", "baseline_meters in", "takes metres (0.2 mm here)")),
        ("json_mm", ("the baseline is 0.000193 m", "baseline_mm in", "takes millimetres", "give 193 there")),
    ],
)
def test_a_baseline_in_metres_where_millimetres_are_taken_warns(media, tmp_path, cli, exact_flow, source, expected):
    """A Middlebury calib.txt takes its baseline in millimetres: baseline=0.193 (metres) became 0.000193 m and depths
    a thousand times too small without a word, while a baseline in millimetres given as metres is warned about;
    --baseline 0.0005 was as silent."""
    if source == "calib.txt":
        camera = ("--calib", _middlebury_calib(tmp_path / "calib.txt", "0.193"))
    elif source == "flag":
        camera = ("--focal", "100", "--baseline", "0.0005")
    else:
        baseline = {"baseline_meters": 0.0002} if source == "json_metres" else {"baseline_mm": 0.193}
        (tmp_path / "rig.json").write_text(json.dumps({"fx": 100.0, **baseline}))
        camera = ("--calib", tmp_path / "rig.json")
    code, _, err = cli(
        media["left"], media["right"], *camera, "--weights", media["weights"], "-o", tmp_path / "out", "-q"
    )
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and all(part in warned[0] for part in expected), err


def test_a_baseline_of_a_few_centimetres_gives_no_warning(media, tmp_path, cli, exact_flow):
    calib = tmp_path / "rig.json"
    calib.write_text(json.dumps({"fx": 100.0, "baseline_meters": 0.075}))
    cameras = [
        ("--calib", _middlebury_calib(tmp_path / "calib.txt", "75")),
        ("--calib", calib),
        ("--focal", "100", "--baseline", "0.075"),
    ]
    for number, camera in enumerate(cameras):
        code, _, err = cli(
            media["left"], media["right"], *camera, "--weights", media["weights"], "-o", tmp_path / f"out{number}", "-q"
        )
        assert code == 0 and "baseline" not in err, err


def test_a_calibration_for_another_size_says_to_drop_it(media, tmp_path, cli):
    # the advice 'give --focal and --baseline' failed again when they were added to --calib
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"fx": 451.0, "baseline_meters": 0.075, "width": 640, "height": 480}))
    code, _, err = cli(media["left"], media["right"], "--calib", calib, "--focal", "50", "--baseline", "0.075",
                       "--weights", media["weights"], "-o", tmp_path / "out", "-q")
    assert_one_line_error(code, err, 2, "640x480", f"{W}x{H}", "instead of --calib")


def test_a_warning_about_every_pair_of_a_video_is_given_once(media, tmp_path, cli, monkeypatch):
    """A video with left and right swapped printed "are left and right swapped?" once per pair: 100 lines
    for a 100-pair clip, even with -q."""
    from flowcli import stereo

    real = stereo.estimate_disparity

    def swapped(*args, **kwargs):
        result = real(*args, **kwargs)
        result.negative_fraction = [0.9] * len(result.negative_fraction)
        return result

    monkeypatch.setattr(stereo, "estimate_disparity", swapped)
    code, _, err = cli("--sbs", media["sbs_video"], "--weights", media["weights"], "-o", tmp_path, "--npy", "-q")
    assert code == 0, err
    assert err.count("swapped?") == 1 and "said once for" in err


# ----------------------------------------------------------------------------- --resume


def _count_model_pairs(monkeypatch) -> list[int]:
    """Pairs per call of estimate_disparity (the model), appended as the run goes."""
    from flowcli import stereo

    batches: list[int] = []
    real = stereo.estimate_disparity

    def counting(model, left, right, **kwargs):
        batches.append(left.shape[0])
        return real(model, left, right, **kwargs)

    monkeypatch.setattr(stereo, "estimate_disparity", counting)
    return batches


def _recorded_settings(folder: Path) -> dict:
    """The run record's settings per source, without the time each was recorded (it differs from run to run)."""
    record = json.loads((folder / ".flowcli-stereo.json").read_text())
    return {key: {name: value for name, value in entry.items() if name != STAMP} for key, entry in record.items()}


def _rig_of_three_pairs(media, tmp_path) -> Path:
    scene, rig = media["scene"], tmp_path / "rig"
    for t in range(3):
        write_png(rig / f"p{t}_left.png", _uint8(scene.left[t]))
        write_png(rig / f"p{t}_right.png", _uint8(scene.right[t]))
    return rig


def test_resume_writes_only_the_outputs_an_interrupted_run_left_missing(media, tmp_path, cli, monkeypatch):
    rig, out = _rig_of_three_pairs(media, tmp_path), tmp_path / "out"
    args = [rig, "--weights", media["weights"], "-o", out, "--pfm", "--vis", "--npy", "--ply", "--focal", "50",
            "--baseline", "0.1", "--json"]
    code, _, err = cli(*args, "-q")
    assert code == 0, err
    complete = snapshot(out)
    # killed while publishing pair 0 (its .pfm not renamed yet) and before pair 2: SIGKILL leaves hidden temp files
    deleted = ["p0_disp.pfm", "p2_disp.pfm", "p2_disp_vis.png", "p2_disp.npy", "p2_cloud.ply"]
    for name in deleted:
        (out / name).unlink()
    temps = {".p0_disp.k2j4_x.pfm", ".p2_cloud.q8w1za.ply"}
    for temp in temps:
        (out / temp).write_bytes(b"half written")
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = cli(*args, "--resume", "--batch-size", "2")
    assert code == 0, err
    assert model_pairs == [1, 1]  # pairs 0 and 2; skipping pair 1 flushes pair 0 first, so lines stay in order
    records = _records(stdout)
    assert [(r["type"], r["index"]) for r in records] == [("pair", 0), ("skipped", 1), ("pair", 2)]
    assert records[1] == {
        "type": "skipped", "source": str(rig), "index": 1, "left": "p1_left", "right": "p1_right",
        "inputs": [str(rig / "p1_left.png"), str(rig / "p1_right.png")],
        "outputs": {key: str(out / name) for key, name in (("pfm", "p1_disp.pfm"), ("npy", "p1_disp.npy"),
                                                           ("vis", "p1_disp_vis.png"), ("ply", "p1_cloud.ply"))},
    }
    assert set(records[0]["outputs"]) == {"pfm", "npy", "vis", "ply"}  # every output of the pair, kept ones too
    assert records[2]["points"] > 0
    assert "3 pair(s)" in err and "2 computed, 1 skipped" in err
    resumed = snapshot(out)
    assert set(resumed) == set(complete) | temps
    for name, (data, mtime) in complete.items():
        assert resumed[name][0] == data, name  # the recomputed files are the ones the run would have written
        if name not in deleted:
            assert resumed[name][1] == mtime, f"{name} was rewritten"
    assert all(resumed[temp][0] == b"half written" for temp in temps)  # temp files are neither outputs nor touched


def test_resume_of_a_complete_run_runs_no_model_and_reads_no_images(media, tmp_path, cli, monkeypatch):
    out = tmp_path / "out"
    args = [media["pairs"], "--sbs", media["sbs_video"], "--max-frames", "2", "--weights", media["weights"], "-o",
            out, "--pfm", "--vis", "--video", "--json", "-q"]
    code, _, err = cli(*args[:1], *args[3:])  # the folder alone: --sbs applies to every input
    assert code == 0, err
    code, _, err = cli(*args[1:])
    assert code == 0, err
    complete = snapshot(out)
    assert {"pairs_disp_vis.mp4", "sbs_disp_vis.mp4"} <= set(complete)
    model_pairs = _count_model_pairs(monkeypatch)
    from flowcli.io import media as media_module

    real_read_image = media_module.read_image
    read_image_calls = []
    monkeypatch.setattr(media_module, "read_image",
                        lambda *a, **k: read_image_calls.append(a) or real_read_image(*a, **k))
    for run in (args[:1] + args[3:], args[1:]):
        code, stdout, err = cli(*run, "--resume")
        assert code == 0, err
        assert [r["type"] for r in _records(stdout)] == ["skipped", "skipped"]  # kept videos get no line
    assert model_pairs == [] and read_image_calls == []
    assert _records(stdout)[1]["inputs"] == [f"{media['sbs_video']}#1"]
    assert snapshot(out) == complete


def test_resume_makes_a_missing_video_again(media, tmp_path, cli, monkeypatch):
    out = tmp_path / "out"
    with_vis = [media["pairs"], "--weights", media["weights"], "-o", out, "--vis", "--video", "--json", "-q"]
    code, _, err = cli(*with_vis)
    assert code == 0, err
    video = out / "pairs_disp_vis.mp4"
    original = list(VideoReader(video))
    video.unlink()  # Ctrl-C while the video was being written: it never appeared
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = cli(*with_vis, "--resume")
    assert code == 0, err
    assert model_pairs == []  # the frames of skipped pairs come from their vis PNGs
    assert [r["type"] for r in _records(stdout)] == ["skipped", "skipped", "video"]
    remade = list(VideoReader(video))
    assert len(remade) == 2 and all(np.array_equal(a, b) for a, b in zip(original, remade))

    # without --vis the video needs the disparity of every pair; the per-pair files are kept as they are
    out2 = tmp_path / "out2"
    npy_only = [media["pairs"], "--weights", media["weights"], "-o", out2, "--npy", "--video", "--json", "-q"]
    code, _, err = cli(*npy_only)
    assert code == 0, err
    (out2 / "pairs_disp_vis.mp4").unlink()
    kept = snapshot(out2)
    model_pairs.clear()
    code, stdout, err = cli(*npy_only, "--resume")
    assert code == 0, err
    assert model_pairs == [1, 1]
    assert [r["type"] for r in _records(stdout)] == ["pair", "pair", "video"]
    assert {name: value for name, value in snapshot(out2).items() if name in kept} == kept
    assert sum(1 for _ in VideoReader(out2 / "pairs_disp_vis.mp4")) == 2


def test_resume_refuses_overwrite_and_a_vis_png_it_cannot_put_in_a_missing_video(media, tmp_path, cli, monkeypatch):
    out = tmp_path / "out"
    args = [media["pairs"], "--weights", media["weights"], "-o", out, "--npy", "--vis", "--video", "-q"]
    with monkeypatch.context() as patch:
        patch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
        code, stdout, err = cli(*args, "--resume", "--overwrite")
        assert_one_line_error(code, err, 2, "--resume", "--overwrite")
        assert stdout == "" and not out.exists()
    code, _, err = cli(*args)
    assert code == 0, err
    (out / "pairs_disp_vis.mp4").unlink()
    (out / "shot1_disp.npy").unlink()  # pair 1 runs the model: its colours follow pair 0's from the PNG
    vis = out / "shot0_disp_vis.png"
    vis.unlink()
    write_png(vis, np.zeros((H // 2, W // 2, 3), np.uint8))  # e.g. left by a run on images of another size
    code, _, err = cli(*args, "--resume")
    assert_one_line_error(code, err, 3, str(vis), f"{W}x{H}", "delete it and run again with --resume")
    assert not any(p.suffix == ".mp4" for p in out.iterdir())  # no video, not even a temp one


def test_resume_with_another_camera_or_swap_is_refused_before_any_work(media, tmp_path, cli, monkeypatch):
    rig, out = _rig_of_three_pairs(media, tmp_path), tmp_path / "out"

    def run(*options, baseline="0.1"):
        return cli(rig, "--weights", media["weights"], "-o", out, "--pfm", "--depth", "--focal", "50", "--baseline",
                   baseline, "--json", "-q", *options)

    code, _, err = run()
    assert code == 0, err
    (out / "p2_depth.npy").unlink()  # interrupted before pair 2 was complete
    before = snapshot(out)
    model_pairs = _count_model_pairs(monkeypatch)
    # --swap makes the left view the right one: the same files are the source (and key), their outputs differ
    code, stdout, err = run("--resume", "--swap", baseline="0.2")
    assert_one_line_error(code, err, 2, f"--resume: {out} holds outputs of {rig} made with other settings",
                          "swap: off -> on", "baseline: 0.1 -> 0.2", "or use --overwrite to start afresh")
    assert stdout == "" and model_pairs == [] and snapshot(out) == before
    code, _, err = run("--resume", "--batch-size", "2", "--precision", "fp32", "--max-pixels", "0", "--npy")
    assert code == 0, err
    assert (out / "p2_depth.npy").is_file() and (out / "p0_disp.npy").is_file()
    record = json.loads((out / ".flowcli-stereo.json").read_text())
    assert list(record) == [" ".join(str((rig / f"p0_{side}.png").resolve()) for side in ("left", "right"))]
    assert record[next(iter(record))]["baseline"] == 0.1 and "batch_size" not in record[next(iter(record))]


@pytest.mark.parametrize("new_setting", [["--max-disparity", "4"], ["--baseline", "0.2"]])
def test_resume_after_an_interrupted_overwrite_with_new_settings_makes_the_old_files_again(
    new_setting, media, tmp_path, cli, monkeypatch
):
    rig = _rig_of_three_pairs(media, tmp_path)

    def run(out, *options):
        return cli(rig, "--weights", media["weights"], "-o", out, "--pfm", "--vis", "--depth", "--video", "--focal",
                   "50", "--baseline", "0.1", "--json", "-q", *options)  # the last --baseline given counts

    code, _, err = run(tmp_path / "fresh", *new_setting)
    assert code == 0, err
    expected = {name: data for name, (data, _) in snapshot(tmp_path / "fresh").items() if name.startswith("p")}
    out = tmp_path / "out"
    code, _, err = run(out)
    assert code == 0, err
    for path in out.glob("[pr]*"):  # made a second earlier, not in the clock tick of the file system when the next run
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - 10**9))  # records its settings
    old_files = {name: data for name, (data, _) in snapshot(out).items() if name.startswith("p2_")}
    from flowcli import stereo

    model_pairs, real = [], stereo.estimate_disparity

    def ctrl_c_at_the_second_pair(model, left, right, **kwargs):
        if model_pairs:
            raise KeyboardInterrupt
        model_pairs.append(left.shape[0])
        return real(model, left, right, **kwargs)

    monkeypatch.setattr(stereo, "estimate_disparity", ctrl_c_at_the_second_pair)
    code, _, err = run(out, "--overwrite", *new_setting)
    assert code == 130, err
    assert {name: data for name, (data, _) in snapshot(out).items() if name.startswith("p2_")} == old_files
    monkeypatch.setattr(stereo, "estimate_disparity", real)
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = run(out, "--resume", *new_setting)
    assert code == 0, err
    assert model_pairs == [1, 1]  # every pair but the one the interrupted run wrote
    assert [r["type"] for r in _records(stdout)] == ["skipped", "pair", "pair", "video"]
    assert "7 output file(s) in" in err and "predated the settings recorded" in err and "made again" in err
    resumed = snapshot(out)
    assert {name: resumed[name][0] for name in expected} == expected
    fresh_video, resumed_video = (list(VideoReader(run / "rig_disp_vis.mp4")) for run in (tmp_path / "fresh", out))
    assert len(resumed_video) == 3 and all(np.array_equal(a, b) for a, b in zip(fresh_video, resumed_video))
    # what is made again now belongs to the recorded settings: the next --resume keeps everything
    code, stdout, err = run(out, "--resume", *new_setting)
    assert code == 0, err
    assert model_pairs == [1, 1] and snapshot(out) == resumed and "predated" not in err


def test_resume_makes_a_video_of_other_max_frames_again(media, tmp_path, cli):
    out = tmp_path / "out"
    rig = _rig_of_three_pairs(media, tmp_path)
    for source, video in [([rig], "rig_disp_vis.mp4"), (["--sbs", media["sbs_video"]], "sbs_disp_vis.mp4")]:
        args = [*source, "--weights", media["weights"], "-o", out, "--vis", "--video", "--json", "-q"]
        code, _, err = cli(*args, "--max-frames", "2")
        assert code == 0, err
        code, stdout, err = cli(*args, "--max-frames", "3", "--resume")
        assert code == 0, err
        records = _records(stdout)
        assert [r["type"] for r in records] == ["skipped", "skipped", "pair", "video"]
        assert records[-1]["frames"] == 3 and "made by a run with other --max-frames" in err
        assert sum(1 for _ in VideoReader(out / video)) == 3
        kept = snapshot(out)
        code, stdout, err = cli(*args, "--max-frames", "3", "--resume")  # now it has a frame per pair: kept
        assert code == 0, err
        assert [r["type"] for r in _records(stdout)] == ["skipped"] * 3 and snapshot(out) == kept


def test_resume_makes_a_video_of_another_fps_again(media, tmp_path, cli):
    """--fps is not in the run record (it changes no pair's files), so a resume asking for another rate kept the
    old video at the old rate."""
    out = tmp_path / "out"
    args = [_rig_of_three_pairs(media, tmp_path), "--weights", media["weights"], "-o", out, "--vis", "--video", "-q"]
    code, _, err = cli(*args, "--fps", "5")
    assert code == 0, err
    code, _, err = cli(*args, "--fps", "20", "--resume")
    assert code == 0, err
    assert "plays at 5 fps and this run asks for 20 (--fps): made again" in err
    with VideoReader(out / "rig_disp_vis.mp4") as reader:
        assert reader.fps == pytest.approx(20)


@pytest.mark.parametrize("layout", ["folder", "glob", "two folders", "side-by-side images in a row",
                                    "subfolder from --name"])
def test_image_outputs_among_the_input_frames_are_refused_before_any_work(layout, media, tmp_path, cli, monkeypatch):
    scene = media["scene"]
    rig = _rig_of_three_pairs(media, tmp_path)
    for t in range(2):
        write_png(tmp_path / "cam_left" / f"{t:04d}.png", _uint8(scene.left[t]))
        write_png(tmp_path / "cam_right" / f"{t:04d}.png", _uint8(scene.right[t]))
        write_png(tmp_path / "sbs" / f"f_{t}.png", np.concatenate((_uint8(scene.left[t]), _uint8(scene.right[t])), 1))
    inputs, frames = {
        "folder": ([rig], rig), "glob": ([str(rig / "*.png")], rig),
        "two folders": ([tmp_path / "cam_left", tmp_path / "cam_right"], tmp_path / "cam_right"),
        "side-by-side images in a row": (["--sbs", *sorted((tmp_path / "sbs").iterdir())], tmp_path / "sbs"),
        "subfolder from --name": ([rig], rig),
    }[layout]
    output = ["-o", tmp_path, "--name", "rig/{stem}"] if layout == "subfolder from --name" else ["-o", frames]
    args = [*inputs, "--weights", media["weights"], *output, "-q"]
    before = snapshot(tmp_path)
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    for images in [["--vis"], ["--kitti"], ["--occlusion"], ["--depth-png", "--focal", "50", "--baseline", "0.1"]]:
        code, stdout, err = cli(*args, *images)
        assert_one_line_error(code, err, 3, f"{frames}{os.sep}", "would be an image among the frames of",
                              "choose another output folder with -o")
        assert stdout == "" and snapshot(tmp_path) == before
    monkeypatch.undo()
    images = sorted(p.name for p in frames.glob("*.png"))
    code, _, err = cli(*args, "--pfm", "--npy")  # not images: a later run over the frames does not list them
    assert code == 0, err
    assert sorted(p.name for p in frames.glob("*.png")) == images and any(frames.glob("*_disp.pfm"))
    # an explicit pair names its images: nothing is listed from their folder
    code, _, err = cli(rig / "p0_left.png", rig / "p0_right.png", "--weights", media["weights"], "-o", rig, "--vis",
                       "-q")
    assert code == 0, err
    assert (rig / "p0_disp_vis.png").is_file()


# ----------------------------------------------------------------------------- --pairs LIST


@pytest.fixture
def listed_rigs(media, tmp_path) -> Path:
    """tmp_path/data: a Middlebury-style scene with a space in its folder name ('rig one/im0.png', im1) and a pair
    of another frame by name (p1_left.png, p1_right.png)."""
    scene, data = media["scene"], tmp_path / "data"
    write_png(data / "rig one" / "im0.png", _uint8(scene.left[0]))
    write_png(data / "rig one" / "im1.png", _uint8(scene.right[0]))
    write_png(data / "p1_left.png", _uint8(scene.left[1]))
    write_png(data / "p1_right.png", _uint8(scene.right[1]))
    return data


def test_a_pair_list_gives_what_each_pair_gives_in_a_run_of_its_own(media, listed_rigs, tmp_path, cli, monkeypatch):
    lists = tmp_path / "lists"
    lists.mkdir()
    pair_list = lists / "pairs.txt"
    pair_list.write_text("# scenes\n\"../data/rig one/im0.png\" '../data/rig one/im1.png'\n\n"
                         "../data/p1_left.png\t../data/p1_right.png\r\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # relative paths are relative to the list's folder, not to this one
    pairs = [[str(lists / "../data" / name) for name in pair] for pair in
             [("rig one/im0.png", "rig one/im1.png"), ("p1_left.png", "p1_right.png")]]
    options = ["--weights", media["weights"], "--pfm", "--npy", "--json"]
    from flowcli.cli import run_record

    record_writes = []
    real_atomic_path = run_record.atomic_path
    monkeypatch.setattr(run_record, "atomic_path",
                        lambda path, *a, **k: record_writes.append(path) or real_atomic_path(path, *a, **k))
    # INPUTS first, then the list's lines
    code, stdout, err = cli(media["left"], media["right"], "--pairs", pair_list, "-o", tmp_path / "listed", *options)
    assert code == 0, err
    assert "3 pair(s) -> " in err and len(record_writes) == 1  # one record write for the run, not one per line
    first, *listed = _records(stdout)
    assert first["inputs"] == [str(media["left"]), str(media["right"])]
    assert [r["inputs"] for r in listed] == pairs
    assert [r["source"] for r in listed] == [" ".join(pair) for pair in pairs]
    assert [(r["left"], r["right"]) for r in listed] == [("im0", "im1"), ("p1_left", "p1_right")]
    alone = []
    for pair in pairs:
        code, stdout, err = cli(*pair, "-o", tmp_path / "alone", *options, "-q")
        assert code == 0, err
        alone += _records(stdout)
    assert without_timing(listed) == [
        {**r, "outputs": {k: p.replace(str(tmp_path / "alone"), str(tmp_path / "listed"))
                          for k, p in r["outputs"].items()}}
        for r in without_timing(alone)
    ]
    names = sorted(p.name for p in (tmp_path / "listed").iterdir())
    assert names == [".flowcli-stereo.json", "p1_disp.npy", "p1_disp.pfm", "rig one_disp.npy", "rig one_disp.pfm",
                     "scene_disp.npy", "scene_disp.pfm"]
    disparities = []
    for stem in ("rig one", "p1"):
        disparity = read_pfm(tmp_path / "listed" / f"{stem}_disp.pfm")
        assert disparity.shape == (H, W)
        np.testing.assert_array_equal(disparity, read_pfm(tmp_path / "alone" / f"{stem}_disp.pfm"))
        np.testing.assert_array_equal(read_npy(tmp_path / "listed" / f"{stem}_disp.npy"), disparity)
        disparities.append(disparity)
    assert not np.array_equal(*disparities)  # two pairs, not one pair twice
    recorded = _recorded_settings(tmp_path / "listed")
    assert set(recorded) == {
        " ".join(sorted(str(Path(p).resolve()) for p in pair)) for pair in [*pairs, [media["left"], media["right"]]]
    }
    listed_entries = {key: value for key, value in recorded.items() if str(media["left"].resolve()) not in key}
    assert listed_entries == _recorded_settings(tmp_path / "alone")


def test_swap_swaps_the_images_of_every_line(media, listed_rigs, tmp_path, cli):
    pair_list = listed_rigs / "pairs.txt"
    pair_list.write_text("'rig one/im1.png' 'rig one/im0.png'\np1_right.png p1_left.png\n")
    code, stdout, err = cli("--pairs", pair_list, "--swap", "--weights", media["weights"], "-o", tmp_path / "swapped",
                            "--npy", "--json", "-q")
    assert code == 0, err
    records = _records(stdout)
    assert [(r["left"], r["right"], r["inputs"]) for r in records] == [
        ("im0", "im1", [str(listed_rigs / "rig one/im0.png"), str(listed_rigs / "rig one/im1.png")]),
        ("p1_left", "p1_right", [str(listed_rigs / "p1_left.png"), str(listed_rigs / "p1_right.png")]),
    ]
    assert [r["source"] for r in records] == [
        f"{listed_rigs / 'rig one/im1.png'} {listed_rigs / 'rig one/im0.png'}",
        f"{listed_rigs / 'p1_right.png'} {listed_rigs / 'p1_left.png'}",
    ]
    pair_list.write_text("'rig one/im0.png' 'rig one/im1.png'\np1_left.png p1_right.png\n")
    code, _, err = cli("--pairs", pair_list, "--weights", media["weights"], "-o", tmp_path / "straight", "--npy", "-q")
    assert code == 0, err
    for stem in ("rig one", "p1"):
        np.testing.assert_array_equal(read_npy(tmp_path / "swapped" / f"{stem}_disp.npy"),
                                      read_npy(tmp_path / "straight" / f"{stem}_disp.npy"))
    assert json.loads((tmp_path / "swapped" / ".flowcli-stereo.json").read_text()).keys() == json.loads(
        (tmp_path / "straight" / ".flowcli-stereo.json").read_text()).keys()


PAIR_LIST_ERRORS = {
    "three paths": ("p1_left.png p1_right.png p1_left.png", ":3: expected two image paths, found 3"),
    "missing image": ("p1_left.png nope.png", ":3: {data}/nope.png does not exist; check the path"),
    "not an image": ("p1_left.png {video}", ":3: {video} is not an image file"),
    "sizes differ": ("p1_left.png small.png", ":3: left and right differ in size: {data}/p1_left.png is 64x48, "
                     "{data}/small.png is 40x48"),
    "no pairs": ("# nothing", " has no pairs: give one pair per line"),
}


@pytest.mark.parametrize("case", PAIR_LIST_ERRORS)
def test_a_bad_line_is_one_line_error_naming_it_before_any_work(case, media, listed_rigs, tmp_path, cli, monkeypatch):
    write_png(listed_rigs / "small.png", _uint8(media["scene"].right[1])[:, :40])
    line, needle = PAIR_LIST_ERRORS[case]
    pair_list = listed_rigs / "pairs.txt"
    listed_video = line.format(video=media["video_left"])
    text = f"'rig one/im0.png' 'rig one/im1.png'\n\n{listed_video}\np1_left.png p1_right.png\n"
    pair_list.write_text("# line 1\n\n# nothing\n" if case == "no pairs" else text)
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    code, stdout, err = cli("--pairs", pair_list, "--weights", media["weights"], "-o", out, "--all")
    assert_one_line_error(code, err, 2, f"{pair_list}{needle.format(data=listed_rigs, video=media['video_left'])}")
    assert stdout == "" and not out.exists()


def test_a_pair_list_with_sbs_or_no_inputs_at_all_is_refused(media, listed_rigs, tmp_path, cli, monkeypatch):
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    pair_list = listed_rigs / "pairs.txt"
    pair_list.write_text("p1_left.png p1_right.png\n")
    out = tmp_path / "out"
    code, stdout, err = cli("--sbs", media["sbs"], "--pairs", pair_list, "--weights", media["weights"], "-o", out)
    assert_one_line_error(code, err, 2, "--pairs lists LEFT RIGHT pairs of two images, not side-by-side ones")
    code, stdout, err = cli("--weights", media["weights"], "-o", out)
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert "stereo [OPTIONS] [INPUTS]..." in err and "Invalid value for 'INPUTS': give INPUTS, --pairs LIST" in err
    assert not out.exists()


def test_two_images_after_pairs_are_called_inputs_not_an_unpaired_image(media, tmp_path, cli, monkeypatch):
    """`--pairs l.png r.png` meant l.png r.png as INPUTS: INPUTS were read first, and the error was 'r.png has no
    partner'."""
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    code, stdout, err = cli("--pairs", media["left"], media["right"], "--weights", media["weights"], "-o", out)
    assert_one_line_error(code, err, 2, f"--pairs {media['left']} is an image, not a list of pairs",
                          "give it among INPUTS")
    assert stdout == "" and not out.exists()


def test_a_second_pair_list_is_refused_instead_of_replacing_the_first(media, listed_rigs, tmp_path, cli, monkeypatch):
    """`--pairs a.txt --pairs b.txt` ran b.txt's pairs alone and exited 0, a.txt's dropped unsaid."""
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    first, second = listed_rigs / "first.txt", listed_rigs / "second.txt"
    first.write_text("'rig one/im0.png' 'rig one/im1.png'\n")
    second.write_text("p1_left.png p1_right.png\n")
    out = tmp_path / "out"
    code, stdout, err = cli("--pairs", first, "--pairs", second, "--weights", media["weights"], "-o", out)
    assert_one_line_error(code, err, 2, "--pairs is given 2 times; a run reads one list",
                          "put the pairs in one file", "or run once per list")
    assert stdout == "" and not out.exists()


STEP_OF_PAIRS_ONLY = {  # accepted and ignored: --max-frames 1 still ran every pair
    "a pair list": (["--pairs", "{list}", "--step", "2", "--max-frames", "1"],
                    "--step and --max-frames: pairs are picked from sequences only",
                    "drop --step and --max-frames, or shorten the --pairs list to run fewer pairs"),
    "two image pairs": (["{left}", "{right}", "{p1_left}", "{p1_right}", "--max-frames", "1"],
                        "--max-frames: pairs are picked from sequences only", "each run whole; drop --max-frames"),
    "one side-by-side image": (["--sbs", "{sbs}", "--step", "2"], "--step: pairs are picked from sequences only",
                               "drop --step"),
}


@pytest.mark.parametrize("case", STEP_OF_PAIRS_ONLY)
def test_step_and_max_frames_of_image_pairs_only_are_refused_before_any_work(case, media, listed_rigs, tmp_path,
                                                                             cli, monkeypatch):
    pair_list = listed_rigs / "pairs.txt"
    pair_list.write_text("'rig one/im0.png' 'rig one/im1.png'\np1_left.png p1_right.png\n")
    args, *needles = STEP_OF_PAIRS_ONLY[case]
    args = [arg.format(list=pair_list, left=media["left"], right=media["right"], sbs=media["sbs"],
                       p1_left=listed_rigs / "p1_left.png", p1_right=listed_rigs / "p1_right.png") for arg in args]
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    code, stdout, err = cli(*args, "--npy", "--weights", media["weights"], "-o", out)
    assert_one_line_error(code, err, 2, *needles)
    if case != "a pair list":
        assert "--pairs" not in err
    assert stdout == "" and not out.exists()


def test_max_frames_with_a_sequence_among_image_pairs_picks_the_sequences_pairs(media, tmp_path, cli):
    w = ["--weights", media["weights"], "--npy", "--json", "-q"]
    code, stdout, err = cli(media["left"], media["right"], media["pairs"], "--max-frames", "1", *w,
                            "-o", tmp_path / "mixed")
    assert code == 0, err
    assert [r["left"] for r in _records(stdout)] == ["scene_left", "shot0_left"]
    # --all leaves out the video of a folder of two sizes: it is still a sequence whose pairs --max-frames picks
    code, stdout, err = cli(_rig_of_two_sizes(media, tmp_path), "--all", "--max-frames", "2", *w,
                            "-o", tmp_path / "all")
    assert code == 0, err
    assert [r["left"] for r in _records(stdout)] == ["a_left", "b_left"]


def test_the_help_says_a_pair_list_may_come_from_a_pipe(cli):
    code, stdout, _ = cli("--help")
    assert code == 0
    assert "for a pipe such as <(...)" in " ".join(stdout.split())


def test_resume_of_a_pair_list_writes_only_the_missing_file(media, listed_rigs, tmp_path, cli, monkeypatch):
    pair_list = listed_rigs / "pairs.txt"
    pair_list.write_text("'rig one/im0.png' 'rig one/im1.png'\np1_left.png p1_right.png\n")
    out = tmp_path / "out"
    args = ["--pairs", pair_list, "--weights", media["weights"], "-o", out, "--pfm", "--vis", "--json", "-q"]
    code, _, err = cli(*args)
    assert code == 0, err
    complete = snapshot(out)
    (out / "p1_disp_vis.png").unlink()  # interrupted while writing the second pair
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = cli(*args, "--resume")
    assert code == 0, err
    assert model_pairs == [1]
    records = _records(stdout)
    assert [(r["type"], r["left"]) for r in records] == [("skipped", "im0"), ("pair", "p1_left")]
    assert records[0]["outputs"] == {"pfm": str(out / "rig one_disp.pfm"), "vis": str(out / "rig one_disp_vis.png")}
    resumed = snapshot(out)
    assert set(resumed) == set(complete)
    for name, (data, mtime) in complete.items():
        assert resumed[name][0] == data, name
        if name not in ("p1_disp_vis.png", ".flowcli-stereo.json"):
            assert resumed[name][1] == mtime, f"{name} was rewritten"
    code, _, err = cli(*args, "--resume", "--swap")  # a changed setting is refused for a line as for any pair
    assert_one_line_error(code, err, 2, f"holds outputs of {listed_rigs / 'rig one/im0.png'} "
                          f"{listed_rigs / 'rig one/im1.png'}", "swap: off -> on")


def test_pairs_in_a_row_share_batches_and_give_the_files_of_single_pairs(media, listed_rigs, tmp_path, cli,
                                                                         monkeypatch):
    scene, data = media["scene"], listed_rigs
    write_png(data / "p2_left.png", _uint8(scene.left[2]))
    write_png(data / "p2_right.png", _uint8(scene.right[2]))
    write_png(data / "p0_left.png", _uint8(scene.left[0]))
    write_png(data / "p0_right.png", _uint8(scene.right[0]))
    write_png(data / "narrow_left.png", _uint8(scene.left[1])[:, :40])
    write_png(data / "narrow_right.png", _uint8(scene.right[1])[:, :40])
    pair_list = data / "pairs.txt"
    pair_list.write_text("'rig one/im0.png' 'rig one/im1.png'\np1_left.png p1_right.png\np2_left.png p2_right.png\n"
                         "narrow_left.png narrow_right.png\np0_left.png p0_right.png\n")
    # a LEFT RIGHT pair, a folder of 2 pairs, then the list: 3 pairs of 64x48, one of 40x48, one of 64x48
    args = [media["left"], media["right"], media["pairs"], "--pairs", pair_list, "--weights", media["weights"],
            "--pfm", "--vis", "--json", "-q"]
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = cli(*args, "-o", tmp_path / "single")
    assert code == 0, err
    single = _records(stdout)
    assert model_pairs == [1] * 8
    model_pairs.clear()
    code, stdout, err = cli(*args, "-o", tmp_path / "batched", "--batch-size", "2")
    assert code == 0, err
    batched = _records(stdout)
    # the pair before the folder runs alone, the folder on its own; two lines of the list share one model call,
    # the third waits for the next line, which the change of size runs alone, as the size after it does
    assert model_pairs == [1, 2, 2, 1, 1, 1]
    stems = ["scene", "shot0", "shot1", "rig one", "p1", "p2", "narrow", "p0"]
    assert [Path(r["outputs"]["pfm"]).name for r in batched] == [f"{stem}_disp.pfm" for stem in stems]
    # the same records, but for the statistics, which batching changes by float rounding at most
    stats = ("disparity_mean", "disparity_max", "negative_fraction", "vertical_median")

    def comparable(record: dict) -> dict:  # without the statistics, and outputs named as in the batched run
        outputs = {key: path.replace(str(tmp_path / "single"), str(tmp_path / "batched"))
                   for key, path in record["outputs"].items()}
        return {**{key: value for key, value in record.items() if key not in stats}, "outputs": outputs}

    assert [comparable(r) for r in without_timing(batched)] == [comparable(r) for r in without_timing(single)]
    for one, shared in zip(single, batched):
        assert [shared[k] for k in stats] == pytest.approx([one[k] for k in stats], abs=2e-4)
    assert sorted(p.name for p in (tmp_path / "batched").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir())
    for stem in stems:
        # torch's CPU convolutions pick their kernels by batch size: a pair in a batch of 2 differs from the same
        # pair alone in the last bits of float32, as a sequence's pairs always have
        np.testing.assert_allclose(read_pfm(tmp_path / "batched" / f"{stem}_disp.pfm"),
                                   read_pfm(tmp_path / "single" / f"{stem}_disp.pfm"), rtol=0, atol=1e-5)
        colours = [read_png(tmp_path / run / f"{stem}_disp_vis.png").astype(int) for run in ("single", "batched")]
        assert np.abs(colours[1] - colours[0]).max() <= 1
    for stem in ("scene", "p2", "narrow", "p0"):  # the pairs that ran alone in both runs: byte for byte the same
        for name in (f"{stem}_disp.pfm", f"{stem}_disp_vis.png"):
            assert (tmp_path / "batched" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name


def test_resume_of_a_batched_pair_list_runs_the_pairs_before_a_skipped_one_first(media, listed_rigs, tmp_path, cli,
                                                                                  monkeypatch):
    scene, data = media["scene"], listed_rigs
    write_png(data / "p2_left.png", _uint8(scene.left[2]))
    write_png(data / "p2_right.png", _uint8(scene.right[2]))
    pair_list = data / "pairs.txt"
    pair_list.write_text("'rig one/im0.png' 'rig one/im1.png'\np1_left.png p1_right.png\np2_left.png p2_right.png\n")
    out = tmp_path / "out"
    args = ["--pairs", pair_list, "--weights", media["weights"], "-o", out, "--pfm", "--json", "-q"]
    code, _, err = cli(*args)
    assert code == 0, err
    complete = snapshot(out)
    disparities = {stem: read_pfm(out / f"{stem}_disp.pfm") for stem in ("rig one", "p1")}
    for stem in ("rig one", "p2"):
        (out / f"{stem}_disp.pfm").unlink()
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = cli(*args, "--resume", "--batch-size", "3")
    assert code == 0, err
    assert model_pairs == [1, 1]  # the skipped line between them runs the first one first: the lines stay in order
    assert [(r["type"], r["left"]) for r in _records(stdout)] == [
        ("pair", "im0"), ("skipped", "p1_left"), ("pair", "p2_left")]
    resumed = snapshot(out)
    assert {name: data for name, (data, _) in resumed.items()} == {name: data for name, (data, _) in complete.items()}
    for stem in ("rig one", "p1"):
        (out / f"{stem}_disp.pfm").unlink()
    model_pairs.clear()
    code, stdout, err = cli(*args, "--resume", "--batch-size", "3")
    assert code == 0, err
    assert model_pairs == [2]
    assert [(r["type"], r["left"]) for r in _records(stdout)] == [
        ("pair", "im0"), ("pair", "p1_left"), ("skipped", "p2_left")]
    again = snapshot(out)
    assert set(again) == set(complete) and again["p2_disp.pfm"] == resumed["p2_disp.pfm"]  # not touched
    for stem in ("rig one", "p1"):  # a batch of two: the same disparity up to float rounding (see the test above)
        np.testing.assert_allclose(read_pfm(out / f"{stem}_disp.pfm"), disparities[stem], rtol=0, atol=1e-5)


def test_max_depth_without_a_camera_and_ascii_ply_without_ply_are_refused_instead_of_ignored(media, tmp_path, cli,
                                                                                            monkeypatch):
    """`stereo l.png r.png --max-depth 5` and `... --ascii-ply` wrote the disparity files and exited 0, the option
    going nowhere."""
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    code, stdout, err = cli(media["left"], media["right"], "--max-depth", "5", "--weights", media["weights"], "-o", out)
    assert_one_line_error(code, err, 2, "--max-depth limits depth, which needs a camera", "--focal")
    camera = ("--focal", "100", "--baseline", "0.1")
    code, stdout, err = cli(media["left"], media["right"], *camera, "--depth", "--ascii-ply", "--weights",
                            media["weights"], "-o", out)
    assert_one_line_error(code, err, 3, "--ascii-ply sets how --ply writes the point cloud", "add --ply")
    assert stdout == "" and not out.exists()


def test_left_and_right_videos_of_different_frame_rates_warn(media, tmp_path, cli):
    """A 5 fps left and a 10 fps right video were paired frame by frame without a word: views of other times."""
    fast = tmp_path / "walk_right.mp4"
    with VideoWriter(fast, fps=10) as writer:
        for t in range(3):
            writer.write(_uint8(media["scene"].right[t]))
    args = ("--max-frames", "1", "--npy", "--weights", media["weights"], "-q")
    code, _, err = cli(media["video_left"], fast, *args, "-o", tmp_path / "out")
    assert code == 0, err
    assert f"{media['video_left']} plays at 5 fps and {fast} at 10 fps, but their frames are paired by number" in err
    code, _, err = cli(media["video_left"], media["video_right"], *args, "-o", tmp_path / "same")
    assert code == 0 and "fps" not in err, err
