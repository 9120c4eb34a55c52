"""`flowcli vis` end to end: colours of flow, disparity and depth files written with the project's writers, scales,
outputs, the video, and one-line errors that leave nothing written. Runs in-process (tests/cli_harness.py)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
from cli_harness import assert_one_line_error, in_process_cli

from flowcli.io.flow_formats import (
    read_png,
    write_disparity_png,
    write_flo,
    write_kitti_flow,
    write_npy,
    write_npz,
    write_pfm,
    write_png,
)
from flowcli.io.media import VideoReader
from flowcli.io.visualize import flow_to_rgb
from flowcli.stereo import PNG_DEPTH_SCALE, depth_to_png_array, disparity_to_rgb, turbo

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
H, W = 12, 16
VIS_KEYS = {"type", "input", "output", "kind", "backward", "width", "height", "scale", "max", "valid_fraction"}


@pytest.fixture
def run(monkeypatch, capsys):
    return in_process_cli(monkeypatch, capsys, "vis")


def _flow(seed: int = 0, size=(H, W), largest: float | None = None) -> np.ndarray:
    flow = np.random.default_rng(seed).uniform(-3, 3, (*size, 2)).astype(np.float32)
    if largest is not None:
        flow[-1, -1] = (largest, 0.0)
    return flow


def _depth(near: float = 1.5, far: float = 12.0) -> np.ndarray:
    """Metres: a near block on the left, a far one on the right, depths between in the middle, 0 (invalid) in a
    corner: as flowcli stereo writes depth."""
    depth = np.tile(np.geomspace(near, far, W, dtype=np.float32), (H, 1))
    depth[:, :4] = near
    depth[:, -4:] = far
    depth[:2, :2] = 0
    return depth


def _inverse_depth_rgb(depth: np.ndarray, nearest: float | None = None) -> np.ndarray:
    """What stereo --vis would show for the disparity the depth came from (disparity is proportional to 1/depth)."""
    valid = depth > 0
    inverse = np.where(valid, 1.0 / np.where(valid, depth.astype(np.float64), 1.0), 0.0)
    return disparity_to_rgb(inverse, max_disparity=None if nearest is None else 1.0 / nearest, valid=valid)


def _is_red(pixel) -> bool:
    return int(pixel[0]) > 2 * max(int(pixel[1]), int(pixel[2]))


def _is_blue(pixel) -> bool:
    return int(pixel[2]) > 2 * int(pixel[0])


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_flo_gives_the_colours_of_flow_to_rgb_with_unknown_pixels_black(run, tmp_path):
    flow = _flow()
    flow[0, 0] = (1e10, 1e10)  # Middlebury 'unknown'
    write_flo(tmp_path / "frame_0001.flo", flow)
    code, out, err = run(tmp_path / "frame_0001.flo", "-o", tmp_path / "vis", "-q")
    assert code == 0, err
    rgb = read_png(tmp_path / "vis" / "frame_0001_vis.png")
    np.testing.assert_array_equal(rgb, flow_to_rgb(flow))
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[1:].max() > 0
    assert out == "" and err == ""  # -q: no progress, no summary; no --json: nothing on stdout


def test_kitti_png_invalid_pixels_are_black_and_do_not_set_the_scale(run, tmp_path):
    flow = _flow(1)
    raw = np.empty((H, W, 3), np.uint16)
    raw[:, :, :2] = np.rint(flow * 64 + 2**15)
    raw[:, :, 2] = 1
    raw[0, :4] = (65000, 65000, 0)  # invalid pixels holding about 500 px of flow: KITTI says ignore them
    write_png(tmp_path / "000000_10.png", raw)
    code, out, err = run(tmp_path / "000000_10.png", "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    rgb = read_png(tmp_path / "vis" / "000000_10_vis.png")
    known = (raw[:, :, :2].astype(np.float32) - 2**15) / 64
    known[0, :4] = np.nan
    np.testing.assert_array_equal(rgb, flow_to_rgb(known))
    assert (rgb[0, :4] == 0).all()
    (line,) = _json_lines(out)
    largest = float(np.nanmax(np.sqrt((known**2).sum(-1))))
    assert largest < 5 and line["kind"] == "flow" and line["scale"] == pytest.approx(largest, abs=1e-3)
    assert line["valid_fraction"] == pytest.approx(1 - 4 / (H * W), abs=1e-5)


def test_kitti_png_written_by_the_project_writer_and_a_disparity_png_are_told_apart_by_channels(run, tmp_path):
    flow = _flow(2)
    write_kitti_flow(tmp_path / "flow.png", flow)
    disparity = np.linspace(1, 40, H * W, dtype=np.float32).reshape(H, W)
    disparity[3, 3] = 0  # KITTI disparity: 0 = invalid
    write_disparity_png(tmp_path / "disp.png", disparity, valid=disparity > 0)
    code, out, err = run(tmp_path / "flow.png", tmp_path / "disp.png", "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    assert [line["kind"] for line in _json_lines(out)] == ["flow", "disparity"]
    stored = np.rint(disparity * 256) / 256
    expected = disparity_to_rgb(stored, valid=disparity > 0)
    np.testing.assert_array_equal(read_png(tmp_path / "vis" / "disp_vis.png"), expected)
    assert read_png(tmp_path / "vis" / "disp_vis.png")[3, 3].tolist() == [0, 0, 0]


def test_the_kitti_example_of_the_help_runs_as_written(run, tmp_path, monkeypatch):
    """KITTI's flow_occ/ and disp_occ_0/ hold files of one name: the example must tell them apart."""
    from flowcli.cli.vis import HELP

    example = next(line for line in HELP.splitlines() if "flow_occ/000000_10.png" in line)
    args = shlex.split(example)[2:]  # after `flowcli vis`
    monkeypatch.chdir(tmp_path)
    write_kitti_flow(Path("kitti/training/flow_occ/000000_10.png"), _flow())
    disparity = np.full((H, W), 7.0, np.float32)
    write_disparity_png(Path("kitti/training/disp_occ_0/000000_10.png"), disparity, valid=disparity > 0)
    code, _, err = run(*args)
    assert code == 0, err
    assert sorted(str(p.relative_to("vis")) for p in Path("vis").rglob("*.png")) == [
        "disp_occ_0/000000_10_vis.png", "flow_occ/000000_10_vis.png"
    ]


def test_pfm_with_inf_is_coloured_as_disparity_with_inf_black(run, tmp_path):
    disparity = np.linspace(0, 20, H * W, dtype=np.float32).reshape(H, W)
    disparity[0, 0] = np.inf  # Middlebury: unknown
    disparity[0, 1] = np.nan
    disparity[0, 2] = 1e30  # would set the scale if it counted
    write_pfm(tmp_path / "disp0GT.pfm", disparity)
    code, out, err = run(tmp_path / "disp0GT.pfm", "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    rgb = read_png(tmp_path / "vis" / "disp0GT_vis.png")
    assert rgb[0, :3].tolist() == [[0, 0, 0]] * 3
    assert rgb[-1, -1].tolist() == turbo(1.0).tolist()  # the largest known disparity, 20 px, is full colour
    assert rgb[H // 2, W // 2].tolist() == turbo(disparity[H // 2, W // 2] / 20).tolist()
    (line,) = _json_lines(out)
    assert (line["kind"], line["scale"], line["max"]) == ("disparity", 20.0, 20.0)


def test_npy_maps_are_disparity_and_npy_pairs_are_flow(run, tmp_path):
    write_npy(tmp_path / "d.npy", np.full((H, W, 1), 3.0, np.float32))
    write_npy(tmp_path / "f.npy", _flow(3))
    code, out, err = run(tmp_path / "d.npy", tmp_path / "f.npy", "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    assert [line["kind"] for line in _json_lines(out)] == ["disparity", "flow"]
    np.testing.assert_array_equal(read_png(tmp_path / "vis" / "f_vis.png"), flow_to_rgb(_flow(3)))
    assert (read_png(tmp_path / "vis" / "d_vis.png") == turbo(1.0)).all()


def test_global_scale_gives_one_vector_one_colour_across_files_and_the_default_does_not(run, tmp_path):
    for name, largest in (("a", 4.0), ("b", 8.0)):
        flow = np.zeros((H, W, 2), np.float32)
        flow[0, 0] = (1.0, 0.5)  # the same vector in both files
        flow[-1, -1] = (largest, 0.0)
        write_flo(tmp_path / f"{name}.flo", flow)
    files = (tmp_path / "a.flo", tmp_path / "b.flo")

    code, out, err = run(*files, "-o", tmp_path / "own", "--json")
    assert code == 0, err
    a, b = (read_png(tmp_path / "own" / f"{n}_vis.png") for n in "ab")
    assert a[0, 0].tolist() != b[0, 0].tolist()
    assert [line["scale"] for line in _json_lines(out)] == [4.0, 8.0]

    code, out, err = run(*files, "-o", tmp_path / "global", "--max-flow", "global", "--json")
    assert code == 0, err
    a, b = (read_png(tmp_path / "global" / f"{n}_vis.png") for n in "ab")
    assert a[0, 0].tolist() == b[0, 0].tolist()
    vector = np.zeros((1, 1, 2), np.float32)
    vector[0, 0] = (1.0, 0.5)
    assert a[0, 0].tolist() == flow_to_rgb(vector, max_flow=8.0)[0, 0].tolist()
    assert [(line["scale"], line["max"]) for line in _json_lines(out)] == [(8.0, 4.0), (8.0, 8.0)]

    code, out, err = run(*files, "-o", tmp_path / "fixed", "--max-flow", "2")
    assert code == 0, err
    a = read_png(tmp_path / "fixed" / "a_vis.png")
    assert a[0, 0].tolist() == flow_to_rgb(vector, max_flow=2.0)[0, 0].tolist()


def test_global_disparity_scale_is_shared_by_disparity_files_only(run, tmp_path):
    write_pfm(tmp_path / "near.pfm", np.full((H, W), 30.0, np.float32))
    write_pfm(tmp_path / "far.pfm", np.full((H, W), 10.0, np.float32))
    write_flo(tmp_path / "flow.flo", _flow(4, largest=100.0))  # a larger flow does not count for disparity
    code, out, err = run(tmp_path / "near.pfm", tmp_path / "far.pfm", tmp_path / "flow.flo", "-o", tmp_path / "vis",
                         "--max-disparity", "global", "--json")
    assert code == 0, err
    assert [line["scale"] for line in _json_lines(out)] == [30.0, 30.0, 100.0]
    assert (read_png(tmp_path / "vis" / "far_vis.png") == turbo(10 / 30)).all()


def test_depth_maps_of_the_three_stereo_writers_are_near_red_far_blue_as_stereo_vis(run, tmp_path):
    """Depth was read as disparity (near = small = blue) and its PNG as KITTI disparity (px x 256, not mm)."""
    depth = _depth()
    write_npy(tmp_path / "scene_depth.npy", depth)
    write_pfm(tmp_path / "scene_depth.pfm", depth)
    write_png(tmp_path / "scene_depth.png", depth_to_png_array(depth))
    code, out, err = run(tmp_path, "--name", "{stem}_{format}", "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    rgb = {fmt: read_png(tmp_path / "vis" / f"scene_depth_{fmt}_vis.png") for fmt in ("npy", "pfm", "png")}
    expected = _inverse_depth_rgb(depth)
    np.testing.assert_array_equal(rgb["npy"], expected)
    np.testing.assert_array_equal(rgb["pfm"], expected)
    assert (rgb["npy"][2:, :4] == turbo(1.0)).all() and _is_red(turbo(1.0))  # the nearest depth: full colour
    assert all(_is_blue(pixel) for pixel in rgb["npy"][:, -4:].reshape(-1, 3))
    assert (rgb["npy"][:2, :2] == 0).all() and (rgb["png"][:2, :2] == 0).all()  # 0 = invalid: black

    millimetres = read_png(tmp_path / "scene_depth.png").astype(np.float64) / PNG_DEPTH_SCALE
    np.testing.assert_array_equal(rgb["png"], _inverse_depth_rgb(millimetres.astype(np.float32)))
    assert np.abs(rgb["png"].astype(int) - rgb["npy"].astype(int)).max() <= 2  # the same picture, to the mm

    lines = _json_lines(out)
    assert [(Path(line["input"]).name, line["kind"]) for line in lines] == [
        ("scene_depth.npy", "depth"), ("scene_depth.pfm", "depth"), ("scene_depth.png", "depth")]
    for line in lines:  # scale: the depth of full colour (the nearest), max: the farthest, in metres
        assert (line["scale"], line["max"]) == (pytest.approx(1.5, abs=5e-4), pytest.approx(12.0, abs=5e-4))
        assert line["valid_fraction"] == pytest.approx(1 - 4 / (H * W), abs=1e-6)


def test_depth_is_told_by_its_name_only(run, tmp_path):
    depth = _depth()
    write_npy(tmp_path / "pair" / "DEPTH.npy", depth)  # stereo --name '{stem}/{kind}', any case
    write_pfm(tmp_path / "x_Depth.pfm", depth)
    write_npy(tmp_path / "x_depthmap.npy", depth)  # not a depth name: a one-channel map, coloured as disparity
    code, out, err = run(tmp_path / "pair" / "DEPTH.npy", tmp_path / "x_Depth.pfm", tmp_path / "x_depthmap.npy",
                         "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    assert [line["kind"] for line in _json_lines(out)] == ["depth", "depth", "disparity"]
    np.testing.assert_array_equal(read_png(tmp_path / "vis" / "DEPTH_vis.png"), _inverse_depth_rgb(depth))


def test_min_depth_sets_the_depth_of_full_colour_and_global_the_nearest_of_all(run, tmp_path):
    near, far = _depth(near=1.0, far=8.0), _depth(near=4.0, far=20.0)
    write_npy(tmp_path / "a_depth.npy", near)
    write_npy(tmp_path / "b_depth.npy", far)
    write_pfm(tmp_path / "disp.pfm", np.full((H, W), 30.0, np.float32))  # disparity keeps its own scale
    inputs = (tmp_path / "a_depth.npy", tmp_path / "b_depth.npy", tmp_path / "disp.pfm")

    code, out, err = run(*inputs, "-o", tmp_path / "own", "--json")
    assert code == 0, err
    assert [(line["scale"], line["max"]) for line in _json_lines(out)] == [(1.0, 8.0), (4.0, 20.0), (30.0, 30.0)]
    np.testing.assert_array_equal(read_png(tmp_path / "own" / "b_depth_vis.png"), _inverse_depth_rgb(far))
    assert (read_png(tmp_path / "own" / "b_depth_vis.png")[2:, :4] == turbo(1.0)).all()

    code, out, err = run(*inputs, "-o", tmp_path / "global", "--min-depth", "global", "--json")
    assert code == 0, err
    assert [(line["scale"], line["max"]) for line in _json_lines(out)] == [(1.0, 8.0), (1.0, 20.0), (30.0, 30.0)]
    b = read_png(tmp_path / "global" / "b_depth_vis.png")
    np.testing.assert_array_equal(b, _inverse_depth_rgb(far, nearest=1.0))
    assert (b[2:, :4] == turbo(0.25)).all()  # 4 m against the nearest of all, 1 m: a quarter of the disparity
    np.testing.assert_array_equal(read_png(tmp_path / "global" / "a_depth_vis.png"),
                                  read_png(tmp_path / "own" / "a_depth_vis.png"))

    code, out, err = run(*inputs, "-o", tmp_path / "fixed", "--min-depth", "2", "--json")
    assert code == 0, err
    assert [line["scale"] for line in _json_lines(out)] == [2.0, 2.0, 30.0]
    a = read_png(tmp_path / "fixed" / "a_depth_vis.png")
    np.testing.assert_array_equal(a, _inverse_depth_rgb(near, nearest=2.0))
    assert (a[2:, :4] == turbo(1.0)).all()  # nearer than --min-depth: full colour too


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "lots"])
def test_a_min_depth_that_is_not_a_positive_number_is_refused(run, tmp_path, value):
    write_npy(tmp_path / "x_depth.npy", _depth())
    code, _, err = run(tmp_path / "x_depth.npy", "--min-depth", value, "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 3, "--min-depth must be a positive number of metres or 'global'", value)
    assert _files(tmp_path / "vis") == []


def test_a_min_depth_too_small_to_invert_is_refused_by_its_own_name(run, tmp_path):
    """1 / 1e-320 is inf: the run ended "max_disparity must be a positive number of pixels, got inf", an option the
    user never gave."""
    write_npy(tmp_path / "x_depth.npy", _depth())
    code, _, err = run(tmp_path / "x_depth.npy", "--min-depth", "1e-320", "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 3, "--min-depth 1e-320 is too small to invert; give at least 1e-300 metres")
    assert _files(tmp_path / "vis") == []
    code, _, err = run(tmp_path / "x_depth.npy", "--min-depth", "1e-300", "-o", tmp_path / "vis")
    assert code == 0, err


def test_video_of_depth_maps_has_their_colours(run, tmp_path):
    for index, (near, far) in enumerate(((1.0, 3.0), (5.0, 40.0))):
        write_npy(tmp_path / f"f{index}_depth.npy", _depth(near, far))
    code, out, err = run(tmp_path, "-o", tmp_path / "vis", "--video", "--min-depth", "global", "--json")
    assert code == 0, err
    frames = [frame.permute(1, 2, 0).numpy() * 255 for frame in VideoReader(tmp_path / "vis" / "vis.mp4")]
    assert len(frames) == 2
    for index, frame in enumerate(frames):
        png = read_png(tmp_path / "vis" / f"f{index}_depth_vis.png").astype(np.float32)
        assert np.abs(frame - png).mean() < 8, index
    assert [line.get("kind", line["type"]) for line in _json_lines(out)] == ["depth", "depth", "video"]


def test_stereo_depth_outputs_are_coloured_as_stereo_vis_colours_their_disparity(monkeypatch, capsys, tmp_path):
    """flowcli stereo --formats depth,depth_png,depth_pfm with a camera, then flowcli vis on its output folder."""
    import torch

    from flowcli.checkpoint import save_checkpoint
    from flowcli.inference import FlowResult
    from flowcli.models.pwc import FlowNet, FlowNetConfig

    disparity = np.tile(np.linspace(1.0, 12.0, W, dtype=np.float32), (H, 1))
    disparity[:, :2] = 0  # no disparity: invalid depth (black), where stereo --vis shows turbo(0)

    def exact_flow(model, image1, image2, **kwargs):  # the model 'predicts' (-disparity, 0)
        flow = torch.zeros(image1.shape[0], 2, H, W)
        flow[:, 0] = -torch.from_numpy(disparity)
        return FlowResult(forward=flow, backward=-flow if kwargs.get("backward") else None)

    monkeypatch.setattr("flowcli.inference.estimate_flow", exact_flow)
    tiny = FlowNetConfig(pyramid_channels=(8,) * 6, decoder_channels=(8, 8), context_channels=(8,),
                         context_dilations=(1,))
    weights = save_checkpoint(FlowNet(tiny), tmp_path / "tiny.safetensors")
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    write_png(tmp_path / "scene_left.png", image)
    write_png(tmp_path / "scene_right.png", image)
    stereo = in_process_cli(monkeypatch, capsys, "stereo")
    code, _, err = stereo(tmp_path / "scene_left.png", tmp_path / "scene_right.png", "--weights", weights, "--focal",
                          "120", "--baseline", "0.1", "--formats", "depth,depth_png,depth_pfm,vis", "-o",
                          tmp_path / "out", "-q")
    assert code == 0, err

    run = in_process_cli(monkeypatch, capsys, "vis")
    code, out, err = run(tmp_path / "out", "--name", "{stem}_{format}", "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    assert "1 PNG(s) that are pictures" in err  # stereo's own scene_disp_vis.png
    lines = _json_lines(out)
    assert [(Path(line["input"]).name, line["kind"]) for line in lines] == [
        ("scene_depth.npy", "depth"), ("scene_depth.pfm", "depth"), ("scene_depth.png", "depth")]
    # metres: 120 px x 0.1 m over the largest disparity, 12 px, and the smallest valid one
    assert (lines[0]["scale"], lines[0]["max"]) == (1.0, pytest.approx(12 / disparity[0, 2], abs=1e-4))
    stereo_vis = read_png(tmp_path / "out" / "scene_disp_vis.png").astype(int)
    for fmt in ("npy", "pfm", "png"):
        rgb = read_png(tmp_path / "vis" / f"scene_depth_{fmt}_vis.png").astype(int)
        assert (rgb[:, :2] == 0).all()
        assert np.abs(rgb[:, 2:] - stereo_vis[:, 2:]).max() <= (2 if fmt == "png" else 1), fmt  # float and mm rounding


def test_npz_bundle_gives_its_forward_flow_and_with_backward_both(run, tmp_path):
    forward, backward = _flow(5), _flow(6, largest=9.0)
    occlusion = np.zeros((H, W), bool)
    write_npz(tmp_path / "pair.npz", forward=forward, backward=backward, occlusion=occlusion)

    code, out, err = run(tmp_path / "pair.npz", "-o", tmp_path / "one")
    assert code == 0, err
    assert _files(tmp_path / "one") == ["pair_vis.png"]

    code, out, err = run(tmp_path / "pair.npz", "-o", tmp_path / "both", "--backward", "--json")
    assert code == 0, err
    assert _files(tmp_path / "both") == ["pair_backward_vis.png", "pair_vis.png"]
    np.testing.assert_array_equal(read_png(tmp_path / "both" / "pair_vis.png"), flow_to_rgb(forward))
    np.testing.assert_array_equal(read_png(tmp_path / "both" / "pair_backward_vis.png"), flow_to_rgb(backward))
    assert [(line["backward"], line["output"]) for line in _json_lines(out)] == [
        (False, str(tmp_path / "both" / "pair_vis.png")),
        (True, str(tmp_path / "both" / "pair_backward_vis.png")),
    ]


def test_an_existing_backward_output_is_refused_before_anything_is_written(run, tmp_path):
    write_npz(tmp_path / "pair.npz", forward=_flow(5), backward=_flow(6))
    vis = tmp_path / "vis"
    vis.mkdir()
    (vis / "pair_backward_vis.png").write_bytes(b"keep me")
    code, _, err = run(tmp_path / "pair.npz", "-o", vis, "--backward")
    assert_one_line_error(code, err, 3, "pair_backward_vis.png already exists")
    assert _files(vis) == ["pair_backward_vis.png"]
    code, _, err = run(tmp_path / "pair.npz", "-o", vis)  # without --backward it is no output of the run
    assert code == 0, err
    assert _files(vis) == ["pair_backward_vis.png", "pair_vis.png"]


def test_npz_without_forward_is_refused(run, tmp_path):
    write_npz(tmp_path / "other.npz", flow=_flow())
    code, _, err = run(tmp_path / "other.npz", "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 2, "has no 'forward' array (it has: flow)")


def test_an_existing_output_is_refused_before_anything_is_written(run, tmp_path):
    write_flo(tmp_path / "a.flo", _flow(7))
    write_flo(tmp_path / "b.flo", _flow(8))
    vis = tmp_path / "vis"
    vis.mkdir()
    (vis / "b_vis.png").write_bytes(b"keep me")
    code, _, err = run(tmp_path / "a.flo", tmp_path / "b.flo", "-o", vis)
    assert_one_line_error(code, err, 3, "b_vis.png already exists", "--overwrite")
    assert _files(vis) == ["b_vis.png"] and (vis / "b_vis.png").read_bytes() == b"keep me"

    code, _, err = run(tmp_path / "a.flo", tmp_path / "b.flo", "-o", vis, "--overwrite")
    assert code == 0, err
    np.testing.assert_array_equal(read_png(vis / "b_vis.png"), flow_to_rgb(_flow(8)))


def test_two_inputs_of_one_stem_are_refused_naming_both(run, tmp_path):
    write_flo(tmp_path / "a" / "x.flo", _flow())
    write_pfm(tmp_path / "b" / "x.pfm", np.ones((H, W), np.float32))
    code, _, err = run(tmp_path / "a" / "x.flo", tmp_path / "b", "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 3, str(tmp_path / "a" / "x.flo"), str(tmp_path / "b" / "x.pfm"),
                          "would both write", "x_vis.png", "--name '{parent}/{stem}'")
    assert _files(tmp_path / "vis") == []


def test_one_name_in_two_formats_is_told_apart_by_the_format_field(run, tmp_path):
    """estimate --flo --npz writes x_flow.flo and x_flow.npz side by side: the clash error points at {format}."""
    write_flo(tmp_path / "x_flow.flo", _flow(1))
    write_npz(tmp_path / "x_flow.npz", forward=_flow(2))
    inputs = (tmp_path / "x_flow.flo", tmp_path / "x_flow.npz")
    code, _, err = run(*inputs, "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 3, "would both write", "--name '{stem}_{format}'")
    assert not (tmp_path / "vis").exists()
    code, _, err = run(*inputs, "--name", "{stem}_{format}", "-o", tmp_path / "vis")
    assert code == 0, err
    assert _files(tmp_path / "vis") == ["x_flow_flo_vis.png", "x_flow_npz_vis.png"]
    np.testing.assert_array_equal(read_png(tmp_path / "vis" / "x_flow_npz_vis.png"), flow_to_rgb(_flow(2)))


def test_files_of_one_name_in_several_folders_are_named_by_folder_with_the_name_template(run, tmp_path):
    """Datasets repeat names across folders (Sintel's flow/*/frame_0002.flo): {parent} tells them apart."""
    for scene, seed in (("alley_1", 1), ("cave_2", 2)):
        write_flo(tmp_path / "flow" / scene / "frame_0002.flo", _flow(seed))
    pattern = str(tmp_path / "flow" / "*" / "frame_0002.flo")
    code, out, err = run(pattern, "--name", "{parent}/{stem}", "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    for scene, seed in (("alley_1", 1), ("cave_2", 2)):
        written = read_png(tmp_path / "vis" / scene / "frame_0002_vis.png")
        np.testing.assert_array_equal(written, flow_to_rgb(_flow(seed)))
    assert [Path(line["output"]).parent.name for line in _json_lines(out)] == ["alley_1", "cave_2"]
    code, _, err = run(pattern, "--name", "{parent}_{stem}", "-o", tmp_path / "flat")
    assert code == 0, err
    assert _files(tmp_path / "flat") == ["alley_1_frame_0002_vis.png", "cave_2_frame_0002_vis.png"]
    code, _, err = run(pattern, "--name", "{scene}/{stem}", "-o", tmp_path / "bad")
    assert_one_line_error(code, err, 3, "unknown placeholder {scene}", "{stem} {parent} {format} {kind} {ext}")
    assert not (tmp_path / "bad").exists()


def test_an_output_over_an_input_is_refused(run, tmp_path):
    write_flo(tmp_path / "x.flo", _flow())
    write_kitti_flow(tmp_path / "x_vis.png", _flow(1))  # a flow file whose name is x.flo's output in this folder
    code, _, err = run(tmp_path / "x.flo", tmp_path / "x_vis.png", "-o", tmp_path)
    assert_one_line_error(code, err, 3, "would replace the input")
    assert _files(tmp_path) == ["x.flo", "x_vis.png"]


def test_the_same_file_given_twice_is_refused(run, tmp_path):
    write_flo(tmp_path / "in" / "x.flo", _flow())
    code, _, err = run(tmp_path / "in", tmp_path / "in" / "x.flo", "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 2, "is given twice")


def test_folders_and_globs_take_their_flow_files_in_natural_order_leaving_out_pictures(run, tmp_path):
    folder = tmp_path / "out"
    for index in (10, 2, 1):
        write_flo(folder / f"frame_{index}_flow.flo", _flow(index))
    write_png(folder / "frame_1_vis.png", np.zeros((H, W, 3), np.uint8))  # an earlier picture: left out
    (folder / ".frame_3_flow.abc.flo").write_bytes(b"a temp file of a write in progress")
    (folder / "notes.txt").write_text("not flow")
    code, out, err = run(folder, "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    inputs = [Path(line["input"]).name for line in _json_lines(out)]
    assert inputs == ["frame_1_flow.flo", "frame_2_flow.flo", "frame_10_flow.flo"]
    assert "1 PNG(s) that are pictures" in err

    code, out, err = run(str(folder / "frame_1*.flo"), "-o", tmp_path / "glob", "--json")
    assert code == 0, err
    assert [Path(line["input"]).name for line in _json_lines(out)] == ["frame_1_flow.flo", "frame_10_flow.flo"]


@pytest.mark.parametrize(
    "make, needles",
    [
        (lambda d: (d / "a.jpg").write_bytes(b"x") and d / "a.jpg", ("unknown extension '.jpg'", ".flo")),
        (lambda d: d / "missing.flo", ("missing.flo does not exist",)),
        (lambda d: (d / "bad.flo").write_bytes(b"not a flo file") and d / "bad.flo",
         ("bad.flo", "missing .flo magic number")),
        (lambda d: write_png(d / "picture.png", np.zeros((4, 4, 3), np.uint8)),
         ("8-bit RGB PNG, a picture", "16-bit")),
        (lambda d: write_npy(d / "cube.npy", np.zeros((4, 4, 3), np.float32)),
         ("shape [4, 4, 3]", "neither flow")),
        (lambda d: (d / "empty").mkdir() or d / "empty", ("no flow or disparity files",)),
        (lambda d: str(d / "*.nothing"), ("no files match",)),
        # 0-pixel arrays passed the check, then were a traceback from the PNG writer after good.flo's PNG was written
        (lambda d: write_npy(d / "none.npy", np.zeros((0, 0), np.float32)), ("none.npy holds an empty 0x0 array",)),
        (lambda d: write_npy(d / "flat.npy", np.zeros((0, 4, 2), np.float32)), ("flat.npy holds an empty 4x0 array",)),
        (lambda d: write_npz(d / "none.npz", forward=np.zeros((3, 0, 2), np.float32)),
         ("none.npz holds an empty 0x3 array",)),
        (lambda d: write_npy(d / "x_depth.npy", np.zeros((4, 4, 2), np.float32)),
         ("x_depth.npy is named as a depth map but holds a flow field of shape [4, 4, 2]",)),
        (lambda d: write_pfm(d / "depth.pfm", np.zeros((4, 4, 3), np.float32)),
         ("depth.pfm is named as a depth map but holds a flow field of shape [4, 4, 3]",)),
        (lambda d: write_kitti_flow(d / "x_depth.png", np.zeros((4, 4, 2), np.float32)),
         ("x_depth.png is named as a depth map but is a 16-bit RGB PNG", "16-bit gray millimetres")),
        (lambda d: write_npy(d / "x_depth.npy", np.zeros((2, 4, 4), np.float32)),
         ("x_depth.npy holds an array of shape [2, 4, 4], not a depth map [H, W]",)),
    ],
    ids=["extension", "missing", "corrupt", "8-bit png", "npy shape", "empty folder", "glob", "empty map",
         "empty flow", "empty bundle", "flow as depth npy", "flow as depth pfm", "flow as depth png",
         "depth shape"],
)
def test_bad_inputs_are_one_line_errors_and_nothing_is_written(run, tmp_path, make, needles):
    write_flo(tmp_path / "good.flo", _flow())  # first in line: must not be written either
    bad = make(tmp_path)
    code, _, err = run(tmp_path / "good.flo", bad, "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 2, *needles)
    assert _files(tmp_path / "vis") == []


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "lots"])
def test_a_scale_that_is_not_a_positive_number_is_refused(run, tmp_path, value):
    write_flo(tmp_path / "a.flo", _flow())
    for flag in ("--max-flow", "--max-disparity"):
        code, _, err = run(tmp_path / "a.flo", flag, value, "-o", tmp_path / "vis")
        assert_one_line_error(code, err, 3, f"{flag} must be a positive number of pixels or 'global'", value)
    assert _files(tmp_path / "vis") == []


def test_video_has_one_frame_per_input_in_order(run, tmp_path):
    names = []
    for index, largest in enumerate((2.0, 30.0, 5.0)):
        flow = np.zeros((H, W, 2), np.float32)
        flow[:, :, index % 2] = largest  # frames of different colours: the order shows in the video
        write_flo(tmp_path / f"f{index}.flo", flow)
        names.append(tmp_path / f"f{index}.flo")
    code, out, err = run(*names, "-o", tmp_path / "vis", "--video", "--fps", "4", "--json")
    assert code == 0, err
    video = tmp_path / "vis" / "vis.mp4"
    reader = VideoReader(video)
    frames = [frame.permute(1, 2, 0).numpy() * 255 for frame in reader]
    assert len(frames) == 3 and reader.size == (W, H) and reader.fps == pytest.approx(4.0)
    for index, frame in enumerate(frames):
        png = read_png(tmp_path / "vis" / f"f{index}_vis.png").astype(np.float32)
        assert np.abs(frame - png).mean() < 8, index  # H.264 is lossy, the frames differ by far more
    assert _json_lines(out)[-1] == {"type": "video", "output": str(video), "frames": 3, "fps": 4.0}


def test_video_refuses_inputs_of_different_sizes_before_writing(run, tmp_path):
    write_flo(tmp_path / "a.flo", _flow())
    write_flo(tmp_path / "b.flo", _flow(size=(H, W + 2)))
    code, _, err = run(tmp_path / "a.flo", tmp_path / "b.flo", "-o", tmp_path / "vis", "--video")
    assert_one_line_error(code, err, 2, "--video needs inputs of one size", f"{W}x{H}", f"{W + 2}x{H}")
    assert _files(tmp_path / "vis") == []


def test_json_has_one_line_per_file_with_its_values(run, tmp_path):
    flow = np.zeros((H, W, 2), np.float32)
    flow[0, 0] = (3.0, 4.0)
    flow[1, 1] = np.nan
    write_flo(tmp_path / "a.flo", flow)
    write_pfm(tmp_path / "b.pfm", np.full((H, W + 1), 7.0, np.float32))
    code, out, err = run(tmp_path / "a.flo", tmp_path / "b.pfm", "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    first, second = _json_lines(out)
    assert set(first) == set(second) == VIS_KEYS
    assert first == {"type": "vis", "input": str(tmp_path / "a.flo"), "output": str(tmp_path / "vis" / "a_vis.png"),
                     "kind": "flow", "backward": False, "width": W, "height": H, "scale": 5.0, "max": 5.0,
                     "valid_fraction": round(1 - 1 / (H * W), 6)}
    assert (second["kind"], second["width"], second["height"], second["valid_fraction"]) == ("disparity", W + 1, H, 1.0)
    assert "2 input(s) -> 2 file(s)" in err


def test_ground_truth_of_sintel_and_middlebury_is_coloured_at_its_size(run, tmp_path):
    sintel = DATA / "flow" / "sintel" / "training" / "flow" / "alley_1" / "frame_0002.flo"
    middlebury = DATA / "stereo" / "middlebury" / "tsukuba" / "disp0GT.pfm"
    if not (sintel.is_file() and middlebury.is_file()):
        pytest.skip("../shared/data is absent")
    from flowcli.io.flow_formats import read_flo, read_pfm

    code, out, err = run(sintel, middlebury, "-o", tmp_path / "vis", "--json")
    assert code == 0, err
    flow_line, disparity_line = _json_lines(out)
    flow_rgb = read_png(tmp_path / "vis" / "frame_0002_vis.png")
    np.testing.assert_array_equal(flow_rgb, flow_to_rgb(read_flo(sintel)))
    disparity = read_pfm(middlebury)
    disparity_rgb = read_png(tmp_path / "vis" / "disp0GT_vis.png")
    assert disparity_rgb.shape == (*disparity.shape, 3) and flow_line["kind"] == "flow"
    known = np.isfinite(disparity)
    assert not known.all() and (disparity_rgb[~known] == 0).all() and (disparity_rgb[known].max(axis=-1) > 0).all()
    assert disparity_line["kind"] == "disparity" and disparity_line["max"] == pytest.approx(disparity[known].max())


def test_fps_without_video_is_refused_instead_of_ignored(run, tmp_path):
    write_flo(tmp_path / "a.flo", _flow())
    code, _, err = run(tmp_path / "a.flo", "--fps", "24", "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 3, "--fps", "--video")
    assert _files(tmp_path / "vis") == []


def test_a_scale_for_a_kind_no_input_has_is_warned_of(run, tmp_path):
    """--max-disparity on flow files, or --min-depth without a depth map, changed nothing without a word."""
    write_flo(tmp_path / "a.flo", _flow())
    code, _, err = run(tmp_path / "a.flo", "--max-disparity", "16", "--min-depth", "2", "--max-flow", "3",
                       "-o", tmp_path / "vis", "-q")
    assert code == 0, err
    assert "--max-disparity is left unused: no input is a disparity map" in err
    assert "--min-depth is left unused: no input is a depth map" in err
    assert "--max-flow" not in err


def test_a_glob_matching_only_folders_says_so(run, tmp_path):
    for scene in ("alley_1", "cave_2"):
        write_flo(tmp_path / "flow" / scene / "frame_0001.flo", _flow())
    code, _, err = run(str(tmp_path / "flow" / "*"), "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 2, "matches 2 folder(s) and no files", str(tmp_path / "flow" / "*" / "*"))
    assert _files(tmp_path / "vis") == []


def test_an_input_without_a_valid_pixel_is_warned_of(run, tmp_path):
    """A KITTI PNG whose valid channel is 0 everywhere, or a .flo of NaN, became an all-black picture without a
    word."""
    raw = np.full((H, W, 3), 2**15, np.uint16)
    raw[:, :, 2] = 0
    write_png(tmp_path / "none_valid.png", raw)
    write_flo(tmp_path / "nan.flo", np.full((H, W, 2), np.nan, np.float32))
    write_flo(tmp_path / "good.flo", _flow())
    code, out, err = run(tmp_path / "none_valid.png", tmp_path / "nan.flo", tmp_path / "good.flo",
                         "-o", tmp_path / "vis", "-q", "--json")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, err
    assert "none_valid.png: its flow has no valid pixel" in warnings[0] and "KITTI" in warnings[0]
    assert "nan.flo: its flow has no valid pixel" in warnings[1] and "all black" in warnings[1]
    assert [line["valid_fraction"] for line in _json_lines(out)] == [0.0, 0.0, 1.0]


def test_values_beyond_float32_are_unknown_without_a_numpy_warning(monkeypatch, capsys, tmp_path):
    """float64 arrays beyond float32's range gave 'warning: overflow encountered in cast', naming no file."""
    run = in_process_cli(monkeypatch, capsys, "vis", show_every_warning=True)
    flow = _flow().astype(np.float64)
    flow[0, 0] = (1e300, 0.0)
    disparity = np.full((H, W), 5.0)
    disparity[1, 1] = -1e300
    write_npy(tmp_path / "flow.npy", flow)
    write_npy(tmp_path / "disparity.npy", disparity)
    code, out, err = run(tmp_path / "flow.npy", tmp_path / "disparity.npy", "-o", tmp_path / "vis", "-q", "--json")
    assert code == 0, err
    assert "overflow" not in err and err == ""
    flow_line, disparity_line = _json_lines(out)
    assert flow_line["valid_fraction"] == disparity_line["valid_fraction"] == round(1 - 1 / (H * W), 6)


def test_paths_with_brackets_are_shown_as_given(run, tmp_path):
    """-o 'o[/b]x' ended in a rich MarkupError traceback after every file was written, and a file or folder name
    with [red] in it lost it on stderr (yz.flo)."""
    write_flo(tmp_path / "y[red]z.flo", _flow())
    for output in (tmp_path / "o[/b]x", tmp_path / "o [bold]y"):
        code, _, err = run(tmp_path / "y[red]z.flo", "-o", output)
        assert code == 0, err
        assert "Traceback" not in err and f"1 input(s) -> 1 file(s) in {output}" in err
        assert "y[red]z.flo" in err  # the progress bar's file name
        assert _files(output) == ["y[red]z_vis.png"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_is_refused_as_no_regular_file_not_as_missing(run, tmp_path):
    """A pipe, as `flowcli vis <(cat x.flo)` gives, was said not to exist."""
    write_flo(tmp_path / "good.flo", _flow())
    os.mkfifo(tmp_path / "pipe.flo")
    code, _, err = run(tmp_path / "good.flo", tmp_path / "pipe.flo", "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 2, "pipe.flo is not a regular file or folder", "save it to a file first")
    assert _files(tmp_path / "vis") == []


@pytest.mark.parametrize("output", ["out.mp4", "OUT.MOV", "clip.gif", "file.mp4"])
def test_a_video_name_as_output_folder_is_refused_with_where_the_video_goes(run, tmp_path, output):
    """`-o out.mp4 --video` made a folder out.mp4 holding vis.mp4. A file of that name is refused too."""
    write_flo(tmp_path / "a.flo", _flow())
    (tmp_path / "file.mp4").write_bytes(b"")
    before = _files(tmp_path)
    code, out, err = run(tmp_path / "a.flo", "--video", "-o", tmp_path / output)
    folder = (tmp_path / output).with_suffix("")
    assert_one_line_error(code, err, 2, f"-o {tmp_path / output} names the output folder",
                          f"-o {folder} writes {folder / 'vis.mp4'}")  # fmt: skip
    assert out == "" and _files(tmp_path) == before


def test_an_existing_folder_named_like_a_video_is_an_output_folder(run, tmp_path):
    write_flo(tmp_path / "a.flo", _flow())
    (tmp_path / "x.mp4").mkdir()
    code, _, err = run(tmp_path / "a.flo", "--video", "-o", tmp_path / "x.mp4", "-q")
    assert code == 0, err
    assert _files(tmp_path / "x.mp4") == ["a_vis.png", "vis.mp4"]


@pytest.mark.parametrize("max_flow", [1e-300, 1e-160, 1.7976931348623157e308])
def test_flow_to_rgb_takes_any_finite_positive_max_flow_without_overflow(max_flow):
    """max_flow=1e-300 gave numpy's 'overflow encountered in square' (flow / 1e-300, squared), and every pixel
    white, as if no flow."""
    flow = _flow()
    with np.errstate(all="raise", under="ignore"):
        rgb = flow_to_rgb(flow, max_flow=max_flow)
    if max_flow < 1:  # every vector is beyond max_flow: the saturated colour of its direction
        unit = flow / np.linalg.norm(flow, axis=-1, keepdims=True)
        np.testing.assert_array_equal(rgb, flow_to_rgb(unit, max_flow=1.0))
    else:
        assert (rgb == 255).all()  # nothing beyond the pale centre of the wheel


def test_a_tiny_max_flow_colours_without_a_numpy_warning(monkeypatch, capsys, tmp_path):
    run = in_process_cli(monkeypatch, capsys, "vis", show_every_warning=True)
    write_flo(tmp_path / "a.flo", _flow())
    code, _, err = run(tmp_path / "a.flo", "--max-flow", "1e-300", "-o", tmp_path / "vis", "-q")
    assert code == 0, err
    assert err == ""
    np.testing.assert_array_equal(read_png(tmp_path / "vis" / "a_vis.png"), flow_to_rgb(_flow(), max_flow=1e-300))


def test_video_of_frames_larger_than_h264_takes_is_refused_before_writing(run, tmp_path):
    """2x17000 flows wrote every PNG, then ffmpeg failed: 'Nothing was written into output file'."""
    write_flo(tmp_path / "thin.flo", np.zeros((17000, 2, 2), np.float32))
    code, out, err = run(tmp_path / "thin.flo", "--video", "-o", tmp_path / "vis")
    assert_one_line_error(code, err, 3, "of 2x17000 frames", "at most 16384 pixels a side")
    assert out == "" and _files(tmp_path / "vis") == []
    # odd sizes are padded: 1x16383 is encoded at 2x16384, the most a side takes
    write_flo(tmp_path / "odd.flo", np.zeros((16383, 1, 2), np.float32))
    code, _, err = run(tmp_path / "odd.flo", "--video", "-o", tmp_path / "odd", "-q")
    assert code == 0, err
    assert VideoReader(tmp_path / "odd" / "vis.mp4").size == (2, 16384)


@pytest.mark.parametrize(("width", "height", "fits"), [(16384, 16128, True), (16383, 16129, False),
                                                       (16385, 2, False), (1, 1, True)])  # fmt: skip
def test_the_video_size_rule_is_ffmpegs(width, height, fits):
    """ffmpeg refuses (width + 128) * (height + 128) of 2^28 or more after the odd side's padding, libx264 a side
    over 16384 (tried: 16384x16128 encodes, 16383x16129, padded to 16384x16130, is 'Picture size invalid')."""
    from flowcli.errors import OutputError
    from flowcli.io.media import check_video_size

    if fits:
        check_video_size("v.mp4", width, height)
    else:
        with pytest.raises(OutputError, match=f"v.mp4 of {width}x{height} frames"):
            check_video_size("v.mp4", width, height)
