"""`flowcli estimate` end to end, on tiny synthetic images, frame folders and videos, with a tiny real checkpoint.

Most runs go through `flowcli.cli.main.run()` in-process (same error handling as the installed command, with
only `estimate` registered so other commands' modules are not imported); two runs use a real subprocess to
check stdout/stderr separation and that errors never show a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_harness import assert_one_line_error, in_process_cli, refuse_writes_before_the_model, snapshot, without_timing
from safetensors.torch import load_file, save_file

from flowcli.checkpoint import read_metadata, save_checkpoint
from flowcli.cli.run_record import STAMP
from flowcli.io.flow_formats import read_flo, read_kitti_flow, read_npy, read_npz, read_png, write_png
from flowcli.io.media import VideoReader, VideoWriter, read_image
from flowcli.io.visualize import flow_to_rgb
from flowcli.models.pwc import FlowNet, FlowNetConfig
from flowcli.ops.warp import backward_warp

H, W = 48, 80
TINY = dict(pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,))
PAIR_KEYS = {
    "type", "source", "index", "frame1", "frame2", "inputs", "width", "height", "outputs",
    "flow_mean", "flow_max", "occluded_fraction", "ms", "tiles", "model", "weights", "sha256",
}
ALL_PAIR_OUTPUTS = {
    "flo", "kitti", "npy", "npz", "vis", "occlusion", "warp",
    "flo_backward", "kitti_backward", "npy_backward", "vis_backward", "occlusion_backward",
}

# Harness for a real process: only `estimate` registered, plus a hidden no-op so Typer keeps subcommands.
HARNESS = """
import sys
from flowcli.cli import main
main._COMMAND_MODULES[:] = ["estimate"]
main.app.command("_noop", hidden=True)(lambda: None)
sys.argv[0] = "flowcli"
main.run()
"""


def _frame(shift: int, rng_seed: int = 0, size=(H, W)) -> np.ndarray:
    base = np.random.default_rng(rng_seed).integers(0, 256, (size[0], size[1] + 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(base[:, shift : shift + size[1]])


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    paths = {"root": root}
    ckpt = save_checkpoint(FlowNet(FlowNetConfig(**TINY)), root / "tiny.safetensors")
    paths["weights"] = ckpt
    paths["a"], paths["b"] = write_png(root / "a.png", _frame(0)), write_png(root / "b.png", _frame(2))
    frames = root / "frames"
    for i in range(3):
        write_png(frames / f"f_{i}.png", _frame(i))
    paths["frames"] = frames
    with VideoWriter(root / "clip.mp4", fps=12.5) as writer:
        for i in range(5):
            writer.write(_frame(i, rng_seed=1))
    paths["clip"] = root / "clip.mp4"
    return paths


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on 2 cores shared with other work, torch's default of 2 spins and runs ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `flowcli estimate ARGS` in-process: returns (exit code, stdout, stderr)."""
    return in_process_cli(monkeypatch, capsys, "estimate")


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- outputs


def test_every_output_kind_is_written_and_readable(media, tmp_path, cli):
    out = tmp_path / "out"
    code, stdout, err = cli(media["frames"], "--weights", media["weights"], "-o", out, "--all", "--json",
                            "--max-flow", "3", "-q")
    assert code == 0, err
    records = _json_lines(stdout)
    pairs = [r for r in records if r["type"] == "pair"]
    videos = [r for r in records if r["type"] == "video"]
    assert len(pairs) == 2 and len(videos) == 1
    sha = hashlib.sha256(media["weights"].read_bytes()).hexdigest()
    for index, record in enumerate(pairs):
        assert set(record) == PAIR_KEYS
        assert record["index"] == index and record["frame1"] == f"f_{index}" and record["frame2"] == f"f_{index + 1}"
        assert record["inputs"] == [str(media["frames"] / f"f_{i}.png") for i in (index, index + 1)]
        assert (record["width"], record["height"]) == (W, H)
        assert record["sha256"] == sha and record["model"] == str(media["weights"])
        assert 0 <= record["occluded_fraction"] <= 1 and record["flow_max"] >= record["flow_mean"] >= 0
        assert set(record["outputs"]) == ALL_PAIR_OUTPUTS
        paths = {key: Path(p) for key, p in record["outputs"].items()}
        assert paths["flo"] == out / f"f_{index}_flow.flo"

        bundle = read_npz(paths["npz"])
        forward, backward = bundle["forward"], bundle["backward"]
        assert forward.shape == (H, W, 2) and bundle["occlusion"].shape == (H, W)
        np.testing.assert_array_equal(read_flo(paths["flo"]), forward)
        np.testing.assert_array_equal(read_npy(paths["npy"]), forward)
        np.testing.assert_array_equal(read_flo(paths["flo_backward"]), backward)
        np.testing.assert_array_equal(read_npy(paths["npy_backward"]), backward)
        kitti, valid = read_kitti_flow(paths["kitti"])
        assert valid.all() and np.abs(kitti - forward).max() <= 1 / 128 + 1e-6
        assert np.abs(read_kitti_flow(paths["kitti_backward"])[0] - backward).max() <= 1 / 128 + 1e-6
        np.testing.assert_array_equal(read_png(paths["vis"]), flow_to_rgb(forward, max_flow=3))
        np.testing.assert_array_equal(read_png(paths["vis_backward"]), flow_to_rgb(backward, max_flow=3))
        np.testing.assert_array_equal(read_png(paths["occlusion"]), bundle["occlusion"].astype(np.uint8) * 255)
        np.testing.assert_array_equal(
            read_png(paths["occlusion_backward"]), bundle["occlusion_backward"].astype(np.uint8) * 255
        )
        assert record["occluded_fraction"] == pytest.approx(bundle["occlusion"].mean(), abs=1e-4)
        magnitude = np.linalg.norm(forward, axis=-1)
        assert record["flow_mean"] == pytest.approx(magnitude.mean(), abs=1e-3)
        frame2 = read_image(media["frames"] / f"f_{index + 1}.png")[None]
        expected = backward_warp(frame2, torch.from_numpy(forward).permute(2, 0, 1)[None])[0]
        expected = (expected.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(read_png(paths["warp"]), expected)
    video = Path(videos[0]["outputs"]["video"])
    assert video == out / "frames_vis.mp4"
    reader = VideoReader(video)
    assert reader.fps == pytest.approx(10.0) and reader.size == (W, H) and sum(1 for _ in reader) == 2
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert hidden == [".flowcli-estimate.json"]  # the run record for --resume; no temp files left


def test_default_outputs_for_an_image_pair(media, tmp_path, cli):
    out = tmp_path / "out"
    code, stdout, err = cli(media["a"], media["b"], "--weights", media["weights"], "-o", out, "--json", "-q")
    assert code == 0, err
    [record] = _json_lines(stdout)
    assert record["outputs"] == {"flo": str(out / "a_flow.flo"), "vis": str(out / "a_vis.png")}
    assert record["occluded_fraction"] is None and record["inputs"] == [str(media["a"]), str(media["b"])]
    assert sorted(p.name for p in out.iterdir()) == [".flowcli-estimate.json", "a_flow.flo", "a_vis.png"]
    assert err == ""  # --quiet


def test_model_options_are_spelled_as_in_the_other_commands(media, tmp_path, cli):
    """-w is --weights in eval and adapt, and --precision auto is adapt's default: both work here too."""
    code, _, err = cli(media["a"], media["b"], "-w", media["weights"], "--precision", "auto", "--device", "cpu",
                       "-o", tmp_path / "out")
    assert code == 0, err
    assert "on cpu, fp32" in err
    assert (tmp_path / "out" / "a_flow.flo").is_file()


def test_video_input_keeps_fps_and_streams_batches(media, tmp_path, cli):
    out = tmp_path / "out"
    args = [media["clip"], "--weights", media["weights"], "-o", out, "--video", "--npy", "--json", "-q"]
    code, stdout, err = cli(*args, "--batch-size", "2")
    assert code == 0, err
    records = _json_lines(stdout)
    pairs = [r for r in records if r["type"] == "pair"]
    assert [r["frame1"] for r in pairs] == [f"frame_{i:06d}" for i in range(4)]
    assert pairs[1]["inputs"] == [f"{media['clip']}#1", f"{media['clip']}#2"]
    assert pairs[0]["outputs"] == {"npy": str(out / "clip_frame_000000_flow.npy")}
    [video] = [r for r in records if r["type"] == "video"]
    reader = VideoReader(video["outputs"]["video"])
    assert reader.fps == pytest.approx(12.5) and sum(1 for _ in reader) == 4
    # --max-frames and --step on a video; batches give the same flow as single pairs
    code, stdout, err = cli(media["clip"], "--weights", media["weights"], "-o", tmp_path / "o2", "--npy", "--json",
                            "--max-frames", "3", "-q")
    assert code == 0, err
    single = _json_lines(stdout)
    assert len(single) == 2
    np.testing.assert_allclose(read_npy(single[1]["outputs"]["npy"]), read_npy(pairs[1]["outputs"]["npy"]), atol=1e-4)
    code, stdout, err = cli(media["clip"], "--weights", media["weights"], "-o", tmp_path / "o3", "--json",
                            "--step", "2", "-q")
    assert code == 0, err
    assert [(r["frame1"], r["frame2"]) for r in _json_lines(stdout)] == [
        ("frame_000000", "frame_000002"), ("frame_000002", "frame_000004")
    ]


def test_name_template_formats_and_several_inputs(media, tmp_path, cli):
    out = tmp_path / "out"
    code, stdout, err = cli(media["a"], media["b"], media["frames"], "--weights", media["weights"], "-o", out,
                            "--formats", "npy,warp", "--name", "{source}/{index:03d}-{frame2}", "--json", "-q")
    assert code == 0, err
    outputs = [r["outputs"] for r in _json_lines(stdout)]
    assert outputs == [
        {"npy": str(out / "a/000-b_flow.npy"), "warp": str(out / "a/000-b_warp.png")},
        {"npy": str(out / "frames/000-f_1_flow.npy"), "warp": str(out / "frames/000-f_1_warp.png")},
        {"npy": str(out / "frames/001-f_2_flow.npy"), "warp": str(out / "frames/001-f_2_warp.png")},
    ]


def test_gray_rgba_and_16_bit_inputs(media, tmp_path, cli):
    gray16 = (_frame(0)[:, :, 0].astype(np.uint16) * 257)
    rgba = np.concatenate((_frame(2), np.full((H, W, 1), 255, np.uint8)), axis=2)
    first, second = write_png(tmp_path / "g.png", gray16), write_png(tmp_path / "r.png", rgba)
    assert read_image(first).shape == read_image(second).shape == (3, H, W)
    code, _, err = cli(first, second, "--weights", media["weights"], "-o", tmp_path / "out", "-q")
    assert code == 0, err


def test_learned_occlusion_is_written_for_models_that_have_it(tmp_path, media, cli):
    weights = save_checkpoint(FlowNet(FlowNetConfig(matching="maskflownet", **TINY)), tmp_path / "mask.safetensors")
    code, stdout, err = cli(media["a"], media["b"], "--weights", weights, "-o", tmp_path / "out", "--occlusion",
                            "--json", "-q")
    assert code == 0, err
    [record] = _json_lines(stdout)
    assert set(record["outputs"]) == {"occlusion", "occlusion_learned"}
    assert read_png(record["outputs"]["occlusion_learned"]).shape == (H, W)


def test_existing_outputs_are_never_replaced_without_overwrite(media, tmp_path, cli):
    out = tmp_path / "out"
    base = [media["frames"], "--weights", media["weights"], "-o", out, "-q"]
    # an output of the *second* pair exists: nothing at all is written, the file is untouched
    out.mkdir()
    existing = out / "f_1_vis.png"
    existing.write_bytes(b"keep me")
    code, _, err = cli(*base)
    assert_one_line_error(code, err, 3, "f_1_vis.png", "--overwrite")
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == ["f_1_vis.png"]
    code, _, err = cli(*base, "--overwrite")
    assert code == 0, err
    assert existing.read_bytes() != b"keep me"
    assert len(list(out.iterdir())) == 5  # flo and vis of 2 pairs, and the run record
    # outputs that would collide with each other are refused up front too
    code, _, err = cli(*base, "--overwrite", "--name", "{source}")
    assert_one_line_error(code, err, 3, "{index}")


def test_pairs_of_one_input_with_the_same_name_are_refused_before_any_work(media, tmp_path, cli):
    for shot in ("a", "b"):  # one glob, two pairs named 0001: a/0001 -> a/0002 and b/0001 -> b/0002
        for i in (1, 2):
            write_png(tmp_path / "shots" / shot / f"{i:04d}.png", _frame(i))
    out = tmp_path / "out"
    shots = [str(tmp_path / "shots" / "*" / "*.png"), "--weights", media["weights"], "-o", out, "--flo", "-q"]
    a_b_a_b = [media["a"], media["b"], media["a"], media["b"], "--weights", media["weights"], "-o", out, "-q"]
    for args in (shots, [*shots, "--overwrite"], a_b_a_b):
        code, _, err = cli(*args)
        assert_one_line_error(code, err, 3, "pair 0", "pair 2", "would both write", "add {index} to --name")
        assert not out.exists()
    code, stdout, err = cli(*shots, "--name", "{index}_{stem}", "--json")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        ".flowcli-estimate.json", "0_0001_flow.flo", "1_0002_flow.flo", "2_0001_flow.flo"
    ]


def test_inputs_of_the_same_name_get_distinct_sources(media, tmp_path, cli):
    out = tmp_path / "out"
    args = [media["frames"], media["frames"], "--weights", media["weights"], "-o", out, "--npy", "--json", "-q"]
    code, _, err = cli(*args)
    assert_one_line_error(code, err, 3, "(input 1)", "(input 2)", "add {source} to --name")
    assert not out.exists()
    code, stdout, err = cli(*args, "--name", "{source}/{stem}", "--video")
    assert code == 0, err
    outputs = [r["outputs"] for r in _json_lines(stdout)]
    assert [o.get("npy") for o in outputs if "npy" in o] == [
        str(out / folder / f"f_{i}_flow.npy") for folder in ("frames", "frames-2") for i in (0, 1)
    ]
    assert [o["video"] for o in outputs if "video" in o] == [str(out / "frames_vis.mp4"), str(out / "frames-2_vis.mp4")]


def test_every_video_pair_name_is_checked_before_any_work(media, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip_frame_000002_flow.flo").write_bytes(b"keep me")  # the third of the video's 4 pairs
    args = [media["clip"], "--weights", media["weights"], "-o", out, "--flo", "-q"]
    code, _, err = cli(*args)
    assert_one_line_error(code, err, 3, "clip_frame_000002_flow.flo", "already exists")
    assert [p.name for p in out.iterdir()] == ["clip_frame_000002_flow.flo"]
    code, _, err = cli(*args, "--step", "2")  # frames 0, 2, 4: pair 1 is named frame_000002
    assert_one_line_error(code, err, 3, "clip_frame_000002_flow.flo")
    assert [p.name for p in out.iterdir()] == ["clip_frame_000002_flow.flo"]
    code, _, err = cli(*args, "--max-frames", "3")  # pairs 0 and 1 only
    assert code == 0, err
    assert (out / "clip_frame_000002_flow.flo").read_bytes() == b"keep me"


# ----------------------------------------------------------------------------- bad input


def _registry(tmp_path: Path, monkeypatch, media, sha256: str, cached: bool) -> str:
    cache = tmp_path / "cache"
    data = media["weights"].read_bytes()
    if cached:
        (cache / "models" / "tiny-url").mkdir(parents=True)
        (cache / "models" / "tiny-url" / "model.safetensors").write_bytes(data)
    record = {"path": "model.safetensors", "source": "https://flowcli.invalid/tiny.safetensors",
              "sha256": sha256, "size": len(data)}
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"models": {"tiny-url": {"task": "flow", "files": [record]}}}))
    monkeypatch.setenv("FLOWCLI_REGISTRY", str(registry))
    monkeypatch.setenv("FLOWCLI_CACHE", str(cache))
    return "tiny-url"


def _bad_case(case: str, media, tmp_path: Path, monkeypatch) -> tuple[list, int, str]:
    """(arguments before the common ones, expected exit code, text the error must contain)."""
    a, b, weights = media["a"], media["b"], media["weights"]
    if case == "missing file":
        return [a, tmp_path / "nope.png"], 2, "does not exist"
    if case == "corrupt image":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
        return [a, tmp_path / "bad.png"], 2, "bad.png"
    if case == "truncated video":
        (tmp_path / "cut.mp4").write_bytes(media["clip"].read_bytes()[: media["clip"].stat().st_size // 2])
        return [tmp_path / "cut.mp4"], 2, "cut.mp4"
    if case == "1-frame video":
        with VideoWriter(tmp_path / "one.mp4", fps=10) as writer:
            writer.write(_frame(0))
        return [tmp_path / "one.mp4"], 2, "1 frame"
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        return [tmp_path / "empty"], 2, "no images"
    if case == "frames of different sizes":
        write_png(tmp_path / "mixed" / "0.png", _frame(0))
        write_png(tmp_path / "mixed" / "1.png", _frame(1, size=(32, 32)))
        return [tmp_path / "mixed"], 2, "differ in size"
    if case == "single image":
        return [a], 2, "single image"
    if case == "a list of pairs without --pairs":  # the message named images, folders, globs and videos only
        (tmp_path / "pairs.txt").write_text(f"{a} {b}\n")
        return [tmp_path / "pairs.txt"], 2, f"give images, a folder, a glob or a video, or --pairs {tmp_path}/pairs.txt"
    if case == "a pipe as input":  # bash's <(ffmpeg ...) gives /dev/fd/63, a pipe like this one
        os.mkfifo(tmp_path / "from_ffmpeg.mp4")
        return [tmp_path / "from_ffmpeg.mp4"], 2, "is a pipe or a device, not a file; pipe a video into stdin"
    if case == "unknown output format":
        return [a, b, "--formats", "flo,exr"], 3, "valid formats: flo, kitti"
    if case == "infinite fps":
        return [media["frames"], "--fps", "inf"], 3, "--fps must be a positive number"
    if case == "fps that rounds to zero":
        return [media["frames"], "--video", "--fps", "1e-9"], 3, "--fps must be a positive number of at least 0.001"
    if case == "fps above what an mp4 stores":  # ffmpeg stored it as 1,001,000 fps, or failed after the run
        return [media["frames"], "--video", "--fps", "2e6"], 3, "--fps 2e+06 is above 1,001,000"
    if case == "nan fps":
        return [media["frames"], "--fps", "nan"], 3, "--fps must be a positive number"
    if case == "unknown device":
        return [a, b, "--device", "cuda:x"], 2, "unknown device 'cuda:x'"
    if case == "absent GPU":
        return [a, b, "--device", "cuda:99"], 2, "device cuda:99"
    if case == "scale out of range":
        return [a, b, "--scale", "0"], 2, "--scale must be between"
    if case == "unknown precision":
        return [a, b, "--precision", "fp8"], 2, "unknown precision 'fp8'"
    if case == "batch size zero":
        return [a, b, "--batch-size", "0"], 2, "--batch-size must be at least 1"
    if case == "unknown name placeholder":
        return [a, b, "--name", "{frame}"], 3, "{frame}"
    if case == "empty name":  # an unset $NAME: every output was named _flow.flo
        return [a, b, "--name", ""], 3, '--name "" is empty'
    if case == "unwritable output folder":
        return [a, b, "-o", a / "sub"], 3, "output folder"
    if case == "read-only output folder":
        if os.geteuid() == 0:
            pytest.skip("root can write into read-only folders")
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        return [a, b, "-o", tmp_path / "ro" / "out"], 3, "not writable"
    if case == "wrong sha256":
        name = _registry(tmp_path, monkeypatch, media, "0" * 64, cached=True)
        return [a, b, "--weights", name, "--offline"], 4, "sha256 mismatch"
    if case == "offline with an empty cache":
        name = _registry(tmp_path, monkeypatch, media, hashlib.sha256(weights.read_bytes()).hexdigest(), cached=False)
        return [a, b, "--weights", name, "--offline"], 4, "offline"
    if case == "checkpoint of another architecture":
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in read_metadata(weights).items()}
        meta["flowcli.config"] = json.dumps({**json.loads(meta["flowcli.config"]), "matching": "maskflownet"})
        save_file(load_file(str(weights)), str(tmp_path / "other.safetensors"), metadata=meta)
        return [a, b, "--weights", tmp_path / "other.safetensors"], 4, "does not match its declared architecture"
    if case == "missing weights file":
        return [a, b, "--weights", tmp_path / "none.safetensors"], 4, "no such checkpoint"
    raise AssertionError(case)


BAD_CASES = [
    "missing file", "corrupt image", "truncated video", "1-frame video", "empty folder", "frames of different sizes",
    "single image", "a list of pairs without --pairs", "a pipe as input",
    "unknown output format", "infinite fps", "fps that rounds to zero", "fps above what an mp4 stores", "nan fps",
    "unknown device", "absent GPU",
    "scale out of range", "unknown precision", "batch size zero", "unknown name placeholder", "empty name",
    "unwritable output folder", "read-only output folder", "wrong sha256",
    "offline with an empty cache", "checkpoint of another architecture", "missing weights file",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_error_without_outputs(case, media, tmp_path, monkeypatch, cli):
    args, expected_code, needle = _bad_case(case, media, tmp_path, monkeypatch)
    if "--weights" not in args:
        args += ["--weights", media["weights"]]
    out = tmp_path / "out"
    if "-o" in args:
        out = Path(args[args.index("-o") + 1])
    else:
        args += ["-o", out]
    code, stdout, err = cli(*args, "--all")
    assert_one_line_error(code, err, expected_code, needle)
    assert stdout == ""
    assert not out.exists()  # created only when the first file is written


def test_video_of_image_pairs_only_is_refused_before_any_work(media, tmp_path, cli, monkeypatch):
    """`estimate a.png b.png --video` warned that image pairs get no video, wrote the other files and exited 0."""
    pair_list = tmp_path / "pairs.txt"
    pair_list.write_text(f"{media['a']} {media['b']}\n")
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    for inputs in ([media["a"], media["b"]], ["--pairs", pair_list]):
        code, stdout, err = cli(*inputs, "--video", "--flo", "--weights", media["weights"], "-o", out)
        assert_one_line_error(code, err, 2, "--video writes one video per sequence", "drop --video")
        assert stdout == "" and not out.exists()


def test_fps_without_video_is_refused_instead_of_ignored(media, tmp_path, cli, monkeypatch):
    """`estimate a.png b.png --fps 24` wrote the pair's files and exited 0, the rate going nowhere."""
    from cli_harness import assert_refused_before_the_model

    assert_refused_before_the_model(monkeypatch, cli, media["a"], media["b"], "--fps", "24", "--weights",
                                    media["weights"], output=tmp_path / "out", exit_code=3,
                                    needle="--fps sets the frame rate of --video")  # fmt: skip


@pytest.mark.slow  # a fresh interpreter imports torch: a few seconds, much more on a loaded machine
def test_a_real_process_keeps_json_on_stdout(media, tmp_path):
    env = {**os.environ, "COLUMNS": "400", "OMP_NUM_THREADS": "1"}
    args = [media["a"], media["b"], "--weights", media["weights"], "-o", tmp_path / "out", "--json"]
    proc = subprocess.run([sys.executable, "-c", HARNESS, "estimate", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [record] = _json_lines(proc.stdout)
    assert set(record) == PAIR_KEYS and Path(record["outputs"]["flo"]).is_file()
    assert "pair(s)" in proc.stderr and "{" not in proc.stderr  # progress and info on stderr only


def test_error_in_a_real_process_has_no_traceback(media, tmp_path):
    env = {**os.environ, "COLUMNS": "400", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", HARNESS, "estimate", str(media["a"]), str(tmp_path / "nope.png")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.png'} does not exist; check the path"]


# ----------------------------------------------------------------------------- real footage


def test_real_traffic_frames(shared_data, media, tmp_path, cli):
    traffic = shared_data / "footage" / "traffic"
    if not traffic.is_dir():
        pytest.skip(f"{traffic} not found")
    code, stdout, err = cli(traffic, "--max-frames", "3", "--weights", media["weights"], "-o", tmp_path / "out",
                            "--json", "--flo", "--occlusion", "-q")
    assert code == 0, err
    records = _json_lines(stdout)
    assert [r["frame1"] for r in records] == ["00001", "00002"]
    first = read_image(traffic / "00001.jpg")
    for record in records:
        assert (record["height"], record["width"]) == tuple(first.shape[-2:])
        assert read_png(record["outputs"]["occlusion"]).shape == tuple(first.shape[-2:])
        assert read_flo(record["outputs"]["flo"]).shape == (*first.shape[-2:], 2)


def test_a_glob_from_the_parent_folder_names_its_real_folder(media, tmp_path, cli, monkeypatch):
    # '../*.png' was named '..', and --name '{source}/...' then wrote next to the output folder, not in it
    for i in range(2):
        write_png(tmp_path / "shot" / f"{i}.png", _frame(i))
    (tmp_path / "shot" / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "shot" / "sub")
    code, stdout, err = cli("../*.png", "--weights", media["weights"], "-o", "out", "--name", "{source}/{index}",
                            "--npy", "--json", "-q")
    assert code == 0, err
    [record] = _json_lines(stdout)
    assert record["outputs"] == {"npy": "out/shot/0_flow.npy"}
    assert Path("out/shot/0_flow.npy").is_file() and not Path("0_flow.npy").exists()


def test_an_output_folder_that_refuses_files_fails_before_the_model(media, tmp_path, cli, monkeypatch):
    # as root, os.access says yes for read-only and special folders (/sys); the first write then gave a traceback
    refuse_writes_before_the_model(monkeypatch)
    code, stdout, err = cli(media["a"], media["b"], "--weights", media["weights"], "-o", tmp_path, "--json")
    assert_one_line_error(code, err, 3, "cannot write in output folder", "Permission denied")
    assert stdout == ""


def test_a_file_where_a_name_template_needs_a_folder_fails_before_the_model(media, tmp_path, cli, monkeypatch):
    # out/<source> a file with --name '{source}/{index}': the run loaded the model and computed a pair first
    for i in range(2):
        write_png(tmp_path / "shot" / f"{i}.png", _frame(i))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "shot").write_text("not a folder")
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    code, stdout, err = cli(tmp_path / "shot", "--weights", media["weights"], "-o", tmp_path / "out",
                            "--name", "{source}/{index}", "--npy", "--json")
    assert_one_line_error(code, err, 3, "cannot create output folder", "is a file")
    assert stdout == "" and (tmp_path / "out" / "shot").read_text() == "not a folder"


def test_names_with_brackets_are_shown_as_given_in_the_info_lines(media, tmp_path, cli):
    frames = tmp_path / "shot[final]"
    frames.mkdir()
    for path in sorted(media["frames"].iterdir()):
        (frames / path.name).write_bytes(path.read_bytes())
    weights = tmp_path / "tiny[best].safetensors"
    weights.write_bytes(media["weights"].read_bytes())
    out = tmp_path / "run[" / "v2]"  # '[/v2]' in the path: a closing tag that rich refused with a traceback
    code, _, err = cli(frames, "--weights", weights, "-o", out, "--npy")
    assert code == 0, err
    assert f"model {weights} (" in err and f"2 pair(s) -> {out}\n" in err and "shot[final] f_1" in err


def test_a_name_ending_in_ext_gets_its_kind_before_the_extension(media, tmp_path, cli):
    # --name '{stem}.{ext}' wrote a.flo_flow and a.png_vis: files whose extension no reader knows
    out = tmp_path / "out"
    code, stdout, err = cli(media["a"], media["b"], "--weights", media["weights"], "-o", out, "--name", "{stem}.{ext}",
                            "--flo", "--vis", "--json", "-q")
    assert code == 0, err
    [record] = _json_lines(stdout)
    assert record["outputs"] == {"flo": str(out / "a_flow.flo"), "vis": str(out / "a_vis.png")}
    assert read_flo(out / "a_flow.flo").shape == (H, W, 2)


def test_camcorder_and_phone_video_containers_are_videos(media, tmp_path, cli):
    # .MTS (camcorders), .3gp (phones) were refused as 'neither an image nor a video'
    import imageio_ffmpeg

    for name, muxer in (("cam.MTS", "mpegts"), ("phone.3gp", "3gp")):
        path = tmp_path / name
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(media["clip"]), "-c", "copy",
                   "-f", muxer, str(path)]
        subprocess.run(command, check=True, capture_output=True)
        code, stdout, err = cli(path, "--max-frames", "2", "--weights", media["weights"], "-o", tmp_path / "out",
                                "--npy", "--json", "-q")
        assert code == 0, err
        [record] = _json_lines(stdout)
        assert record["inputs"] == [f"{path}#0", f"{path}#1"]
        assert read_npy(record["outputs"]["npy"]).shape == (H, W, 2)


# ----------------------------------------------------------------------------- --resume


def _count_model_pairs(monkeypatch) -> list[int]:
    """Pairs per call of estimate_flow (the model), appended as the run goes."""
    import flowcli.inference

    batches: list[int] = []
    real = flowcli.inference.estimate_flow

    def counting(model, image1, image2, **kwargs):
        batches.append(image1.shape[0])
        return real(model, image1, image2, **kwargs)

    monkeypatch.setattr(flowcli.inference, "estimate_flow", counting)
    return batches


def test_resume_writes_only_the_outputs_an_interrupted_run_left_missing(media, tmp_path, cli, monkeypatch):
    for i in range(4):  # 3 pairs
        write_png(tmp_path / "shot" / f"f_{i}.png", _frame(i))
    out = tmp_path / "out"
    args = [tmp_path / "shot", "--weights", media["weights"], "-o", out, "--flo", "--vis", "--npy", "--json"]
    code, _, err = cli(*args, "-q")
    assert code == 0, err
    complete = snapshot(out)
    # killed while publishing pair 0 (its .flo not renamed yet) and before pair 2: SIGKILL leaves hidden temp files
    deleted = ["f_0_flow.flo", "f_2_flow.flo", "f_2_vis.png", "f_2_flow.npy"]
    for name in deleted:
        (out / name).unlink()
    temps = {".f_0_flow.k2j4_x.flo", ".f_2_vis.q8w1za.png"}
    for temp in temps:
        (out / temp).write_bytes(b"half written")
    model_pairs = _count_model_pairs(monkeypatch)
    # a batch holds pairs 0 and 2 only if skipping pair 1 does not flush it first (and the lines come out of order)
    code, stdout, err = cli(*args, "--resume", "--batch-size", "2")
    assert code == 0, err
    assert model_pairs == [1, 1]  # pairs 0 and 2
    records = _json_lines(stdout)
    assert [(r["type"], r["index"]) for r in records] == [("pair", 0), ("skipped", 1), ("pair", 2)]
    assert records[1] == {
        "type": "skipped", "source": str(tmp_path / "shot"), "index": 1, "frame1": "f_1", "frame2": "f_2",
        "inputs": [str(tmp_path / "shot" / "f_1.png"), str(tmp_path / "shot" / "f_2.png")],
        "outputs": {"flo": str(out / "f_1_flow.flo"), "npy": str(out / "f_1_flow.npy"),
                    "vis": str(out / "f_1_vis.png")},
    }
    assert set(records[0]["outputs"]) == {"flo", "npy", "vis"}  # every output of the pair, kept ones too
    assert "3 pair(s)" in err and "2 computed, 1 skipped" in err
    resumed = snapshot(out)
    assert set(resumed) == set(complete) | temps
    for name, (data, mtime) in complete.items():
        assert resumed[name][0] == data, name  # the recomputed files are the ones the run would have written
        if name not in deleted:
            assert resumed[name][1] == mtime, f"{name} was rewritten"
    assert all(resumed[temp][0] == b"half written" for temp in temps)  # temp files are neither outputs nor touched


def test_resume_of_a_complete_run_runs_no_model_and_reads_no_frames(media, tmp_path, cli, monkeypatch):
    out = tmp_path / "out"
    args = [media["frames"], media["clip"], "--max-frames", "3", "--weights", media["weights"], "-o", out,
            "--flo", "--vis", "--video", "--json", "-q"]
    code, _, err = cli(*args)
    assert code == 0, err
    complete = snapshot(out)
    assert {"frames_vis.mp4", "clip_vis.mp4"} <= set(complete)
    model_pairs = _count_model_pairs(monkeypatch)
    from flowcli.io import media as media_module

    read_image_calls = []
    monkeypatch.setattr(media_module, "read_image", lambda *a, **k: read_image_calls.append(a) or read_image(*a, **k))
    code, stdout, err = cli(*args, "--resume")
    assert code == 0, err
    assert model_pairs == [] and read_image_calls == []
    records = _json_lines(stdout)
    assert [r["type"] for r in records] == ["skipped"] * 4  # kept videos get no line
    assert [r["inputs"] for r in records][2] == [f"{media['clip']}#0", f"{media['clip']}#1"]
    assert snapshot(out) == complete


def test_resume_makes_a_missing_video_again(media, tmp_path, cli, monkeypatch):
    out = tmp_path / "out"
    with_vis = [media["frames"], "--weights", media["weights"], "-o", out, "--vis", "--video", "--json", "-q"]
    code, _, err = cli(*with_vis)
    assert code == 0, err
    video = out / "frames_vis.mp4"
    original = list(VideoReader(video))
    video.unlink()  # Ctrl-C while the video was being written: it never appeared
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = cli(*with_vis, "--resume")
    assert code == 0, err
    assert model_pairs == []  # the frames of skipped pairs come from their vis PNGs
    assert [r["type"] for r in _json_lines(stdout)] == ["skipped", "skipped", "video"]
    remade = list(VideoReader(video))
    assert len(remade) == 2 and all(np.array_equal(a, b) for a, b in zip(original, remade))

    # without --vis the video needs the flow of every pair; the per-pair files are kept as they are
    out2 = tmp_path / "out2"
    flo_only = [media["frames"], "--weights", media["weights"], "-o", out2, "--flo", "--video", "--json", "-q"]
    code, _, err = cli(*flo_only)
    assert code == 0, err
    (out2 / "frames_vis.mp4").unlink()
    kept = snapshot(out2)
    model_pairs.clear()
    code, stdout, err = cli(*flo_only, "--resume")
    assert code == 0, err
    assert model_pairs == [1, 1]
    assert [r["type"] for r in _json_lines(stdout)] == ["pair", "pair", "video"]
    assert {name: value for name, value in snapshot(out2).items() if name in kept} == kept
    assert sum(1 for _ in VideoReader(out2 / "frames_vis.mp4")) == 2


def test_resume_refuses_overwrite_and_what_is_in_the_way(media, tmp_path, cli, monkeypatch):
    out = tmp_path / "out"
    args = [media["a"], media["b"], "--weights", media["weights"], "-o", out]
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    code, stdout, err = cli(*args, "--resume", "--overwrite")
    assert_one_line_error(code, err, 2, "--resume", "--overwrite")
    assert stdout == "" and not out.exists()
    (out / "a_vis.png").mkdir(parents=True)  # a folder is never an output, even with --resume
    code, _, err = cli(*args, "--resume")
    assert_one_line_error(code, err, 3, "a_vis.png", "is a folder")


@pytest.mark.parametrize("bad_vis", ["other size", "dangling link", "not a png"])
def test_resume_refuses_a_vis_png_it_cannot_put_in_a_missing_video(bad_vis, media, tmp_path, cli):
    out = tmp_path / "out"
    args = [media["frames"], "--weights", media["weights"], "-o", out, "--flo", "--vis", "--video", "-q"]
    code, _, err = cli(*args)
    assert code == 0, err
    (out / "frames_vis.mp4").unlink()
    (out / "f_1_flow.flo").unlink()  # pair 1 runs the model: its colours follow pair 0's from the PNG
    vis = out / "f_0_vis.png"
    vis.unlink()
    if bad_vis == "other size":  # e.g. left by a run on frames extracted at another resolution
        write_png(vis, np.zeros((H // 2, W // 2, 3), np.uint8))
    elif bad_vis == "dangling link":
        vis.symlink_to(tmp_path / "gone.png")
    else:
        vis.write_bytes(b"not a png")
    code, stdout, err = cli(*args, "--resume")
    assert_one_line_error(code, err, 3, str(vis), f"{W}x{H}", "delete it and run again with --resume")
    assert not any(p.suffix == ".mp4" for p in out.iterdir())  # no video, not even a temp one


def _record(folder: Path) -> dict:
    """The run record's settings per source, without the time each was recorded (see _stamps)."""
    record = json.loads((folder / ".flowcli-estimate.json").read_text())
    return {key: {name: value for name, value in entry.items() if name != STAMP} for key, entry in record.items()}


def _stamps(folder: Path) -> dict:
    return {key: entry.get(STAMP) for key, entry in json.loads((folder / ".flowcli-estimate.json").read_text()).items()}


def test_resume_with_other_settings_is_refused_before_any_work(media, tmp_path, cli, monkeypatch):
    out = tmp_path / "out"

    def run(*options, weights=media["weights"]):
        return cli(media["frames"], "--weights", weights, "-o", out, "--flo", "--vis", "--json", "-q", *options)

    code, _, err = run()
    assert code == 0, err
    (out / "f_1_flow.flo").unlink()  # interrupted before pair 1 was complete
    before = snapshot(out)
    other = save_checkpoint(FlowNet(FlowNetConfig(**TINY)), tmp_path / "other.safetensors")  # other random weights
    sha, other_sha = (hashlib.sha256(path.read_bytes()).hexdigest() for path in (media["weights"], other))
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = run("--resume", "--step", "2")
    assert_one_line_error(code, err, 2, f"--resume: {out} holds outputs of {media['frames']} made with other settings",
                          "(step: 1 -> 2)", "resume with the same settings, or use --overwrite")
    assert stdout == ""
    code, stdout, err = run("--resume", "--scale", "0.5", "--max-flow", "4", weights=other)
    assert_one_line_error(code, err, 2, f"weights: {sha[:12]} -> {other_sha[:12]}", "scale: 1.0 -> 0.5",
                          "max-flow: unset -> 4.0")
    assert model_pairs == [] and snapshot(out) == before  # nothing computed, nothing written, the record kept
    # --overwrite starts afresh: the entry is replaced
    code, _, err = run("--overwrite", "--step", "2")
    assert code == 0, err
    key = str((media["frames"] / "f_0.png").resolve())
    assert _record(out) == {key: {"weights": sha, "step": 2, "scale": 1.0, "max_flow": None,
                                  "names": [media["frames"].name]}}  # fmt: skip


def test_resume_may_change_what_alters_numbers_only_by_rounding_and_the_formats(media, tmp_path, cli, monkeypatch):
    out = tmp_path / "out"
    args = [media["frames"], "--weights", media["weights"], "-o", out, "--flo", "--vis", "-q"]
    code, _, err = cli(*args)
    assert code == 0, err
    recorded = _record(out)
    (out / "f_1_flow.flo").unlink()
    model_pairs = _count_model_pairs(monkeypatch)
    code, _, err = cli(*args, "--resume", "--batch-size", "2", "--precision", "fp32", "--device", "cpu",
                       "--max-pixels", "0", "--npy", "--backward", "--max-frames", "3")
    assert code == 0, err
    assert model_pairs == [2]  # both pairs lack their new npy files
    assert (out / "f_1_flow.flo").is_file() and (out / "f_1_flow_bw.npy").is_file()
    assert _record(out) == recorded == {
        str((media["frames"] / "f_0.png").resolve()): {
            "weights": hashlib.sha256(media["weights"].read_bytes()).hexdigest(), "step": 1, "scale": 1.0,
            "max_flow": None, "names": [media["frames"].name],
        }
    }
    # another input's run in the same folder adds its entry and keeps this one
    code, _, err = cli(media["clip"], "--max-frames", "2", "--step", "2", "--weights", media["weights"], "-o", out,
                       "--flo", "-q")
    assert code == 0, err
    assert _record(out) == {
        **recorded, str(media["clip"].resolve()): {**recorded[next(iter(recorded))], "step": 2, "names": ["clip"]}
    }


def test_a_folder_without_a_record_resumes_and_gets_one(media, tmp_path, cli):
    out = tmp_path / "out"
    args = [media["frames"], "--weights", media["weights"], "-o", out, "--flo", "--vis", "-q"]
    code, _, err = cli(*args)
    assert code == 0, err
    recorded = _record(out)
    (out / ".flowcli-estimate.json").unlink()  # as an older flowcli left the folder
    (out / "f_1_vis.png").unlink()
    before = snapshot(out)
    code, _, err = cli(*args, "--resume")
    assert code == 0, err
    after = snapshot(out)
    assert set(after) == set(before) | {"f_1_vis.png", ".flowcli-estimate.json"}
    assert {name: after[name] for name in before} == before
    assert _record(out) == recorded
    code, _, err = cli(*args, "--resume", "--step", "2")  # from now on the record decides
    assert_one_line_error(code, err, 2, "step: 1 -> 2")
    # a record that is not one (edited by hand) is an output error, not a traceback
    (out / ".flowcli-estimate.json").write_text("[1, 2]")
    code, _, err = cli(*args, "--resume")
    assert_one_line_error(code, err, 3, ".flowcli-estimate.json is not a run record", "delete it")


def test_resume_with_inputs_of_one_name_in_another_order_is_refused(media, tmp_path, cli):
    """Two folders named `shot` are the sources shot and shot-2, in the order given: resumed with the folders the
    other way round, each took the other's files as done, and the outputs were silently those of the wrong frames."""
    first, second = tmp_path / "day1" / "shot", tmp_path / "day2" / "shot"
    for folder, offset in ((first, 0), (second, 5)):
        for i in range(2):
            write_png(folder / f"f_{i}.png", _frame(i + offset))
    out = tmp_path / "out"
    common = ["--weights", media["weights"], "-o", out, "--flo", "-q", "--name", "{source}/{stem}"]
    code, _, err = cli(first, second, *common)
    assert code == 0, err
    (out / "shot-2" / "f_0_flow.flo").unlink()  # interrupted before the second folder's pair
    before = snapshot(out)
    code, _, err = cli(second, first, *common, "--resume")
    assert_one_line_error(code, err, 2, f"holds outputs of {second} named shot-2, and this run names them shot",
                          "give them as then, or use --overwrite")  # fmt: skip
    assert snapshot(out) == before
    code, _, err = cli(first, second, *common, "--resume")  # as the run started: it finishes
    assert code == 0, err
    assert (out / "shot-2" / "f_0_flow.flo").is_file()


@pytest.mark.parametrize("new_setting", [["--step", "2"], ["--scale", "0.5"]])
def test_resume_after_an_interrupted_overwrite_with_new_settings_makes_the_old_files_again(
    new_setting, media, tmp_path, cli, monkeypatch
):
    for i in range(5):
        write_png(tmp_path / "shot" / f"f_{i}.png", _frame(i))

    def run(out, *options):
        return cli(tmp_path / "shot", "--weights", media["weights"], "-o", out, "--flo", "--json", "-q", *options)

    code, _, err = run(tmp_path / "fresh", *new_setting)
    assert code == 0, err
    expected = {name: data for name, (data, _) in snapshot(tmp_path / "fresh").items() if name.endswith(".flo")}
    out = tmp_path / "out"
    code, _, err = run(out)
    assert code == 0, err
    for path in out.glob("*.flo"):  # made a second earlier, not in the clock tick of the file system when the next
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - 10**9))  # run records its settings
    old_flo = (out / "f_2_flow.flo").read_bytes()
    import flowcli.inference

    model_pairs, real = [], flowcli.inference.estimate_flow

    def ctrl_c_at_the_second_pair(model, image1, image2, **kwargs):
        if model_pairs:
            raise KeyboardInterrupt
        model_pairs.append(image1.shape[0])
        return real(model, image1, image2, **kwargs)

    monkeypatch.setattr(flowcli.inference, "estimate_flow", ctrl_c_at_the_second_pair)
    code, _, err = run(out, "--overwrite", *new_setting)
    assert code == 130, err
    assert (out / "f_2_flow.flo").read_bytes() == old_flo  # still the first run's: its name is a new-settings name
    monkeypatch.setattr(flowcli.inference, "estimate_flow", real)
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = run(out, "--resume", *new_setting)
    assert code == 0, err
    assert model_pairs == [1] * (len(expected) - 1)  # every pair but the one the interrupted run wrote
    assert [r["type"] for r in _json_lines(stdout)] == ["skipped"] + ["pair"] * (len(expected) - 1)
    assert "output file(s) in" in err and "predated the settings recorded" in err and "made again" in err
    resumed = snapshot(out)
    assert {name: resumed[name][0] for name in expected} == expected
    # what is made again now belongs to the recorded settings: the next --resume keeps everything
    code, stdout, err = run(out, "--resume", *new_setting)
    assert code == 0, err
    assert model_pairs == [1] * (len(expected) - 1) and snapshot(out) == resumed


def test_a_run_with_the_same_settings_keeps_the_time_they_were_recorded(media, tmp_path, cli):
    out = tmp_path / "out"
    args = [media["frames"], "--weights", media["weights"], "-o", out, "-q"]
    code, _, err = cli(*args, "--flo")
    assert code == 0, err
    first = _stamps(out)
    assert all(isinstance(stamp, int) for stamp in first.values())
    code, _, err = cli(*args, "--npy")  # more files of the same settings: the flo files stay done
    assert code == 0, err
    code, _, err = cli(*args, "--resume", "--flo", "--npy")
    assert code == 0, err
    assert _stamps(out) == first
    code, _, err = cli(*args, "--overwrite", "--flo", "--step", "2")
    assert code == 0, err
    assert _stamps(out) != first


def test_resume_makes_a_video_of_other_max_frames_again(media, tmp_path, cli, monkeypatch):
    out = tmp_path / "out"
    for source, first, resumed in [(media["frames"], 2, 3), (media["clip"], 3, 4)]:
        args = [source, "--weights", media["weights"], "-o", out, "--vis", "--video", "--json", "-q"]
        code, _, err = cli(*args, "--max-frames", str(first))
        assert code == 0, err
        code, stdout, err = cli(*args, "--max-frames", str(resumed), "--resume")
        assert code == 0, err
        records = _json_lines(stdout)
        assert [r["type"] for r in records] == ["skipped"] * (first - 1) + ["pair", "video"]
        assert records[-1]["frames"] == resumed - 1 and "made by a run with other --max-frames" in err
        video = out / f"{Path(source).stem}_vis.mp4"
        assert sum(1 for _ in VideoReader(video)) == resumed - 1
        kept = snapshot(out)
        code, stdout, err = cli(*args, "--max-frames", str(resumed), "--resume")  # now it covers the pairs: kept
        assert code == 0, err
        assert [r["type"] for r in _json_lines(stdout)] == ["skipped"] * (resumed - 1) and snapshot(out) == kept


def test_resume_makes_a_video_of_another_fps_again(media, tmp_path, cli):
    """--fps is not in the run record (it changes no pair's files), so a resume asking for another rate kept the
    old video at the old rate."""
    out = tmp_path / "out"
    args = [media["frames"], "--weights", media["weights"], "-o", out, "--vis", "--video", "--max-frames", "3", "-q"]
    code, _, err = cli(*args, "--fps", "5")
    assert code == 0, err
    code, _, err = cli(*args, "--fps", "20", "--resume")
    assert code == 0, err
    assert "plays at 5 fps and this run asks for 20 (--fps): made again" in err
    with VideoReader(out / f"{Path(media['frames']).stem}_vis.mp4") as reader:
        assert reader.fps == pytest.approx(20)
    kept = snapshot(out)
    code, _, err = cli(*args, "--fps", "20", "--resume")
    assert code == 0 and "made again" not in err and snapshot(out) == kept


def test_resume_refuses_a_video_from_stdin_that_does_not_cover_its_pairs(media, tmp_path, cli, pipe_into_stdin):
    args = ["-", "--weights", media["weights"], "-o", tmp_path / "out", "--vis", "--video", "-q"]
    pipe_into_stdin(media["clip"].read_bytes())
    code, _, err = cli(*args, "--max-frames", "3")
    assert code == 0, err
    pipe_into_stdin(media["clip"].read_bytes())  # how many pairs a stream gives is known only at its end
    code, _, err = cli(*args, "--max-frames", "4", "--resume")
    assert_one_line_error(code, err, 3, "stdin_vis.mp4 has 2 frame(s) but stdin gave 3 pair(s)",
                          "delete it and run again with --resume")


@pytest.mark.parametrize("layout", ["folder", "glob", "images in a row", "subfolder from --name"])
def test_image_outputs_among_the_input_frames_are_refused_before_any_work(layout, media, tmp_path, cli, monkeypatch):
    shot = tmp_path / "shot"
    for i in range(3):
        write_png(shot / f"f_{i}.png", _frame(i))
    inputs = {"folder": [shot], "glob": [str(shot / "*.png")], "images in a row": sorted(shot.iterdir()),
              "subfolder from --name": [shot]}[layout]
    output = ["-o", tmp_path, "--name", "shot/{frame1}"] if layout == "subfolder from --name" else ["-o", shot]
    args = [*inputs, "--weights", media["weights"], *output, "-q"]
    before = snapshot(tmp_path)
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    for images in ["--vis", "--kitti", "--occlusion", "--warp"]:
        code, stdout, err = cli(*args, images)
        assert_one_line_error(code, err, 3, "f_0_", "would be an image among the frames of",
                              "choose another output folder with -o")
        assert stdout == "" and snapshot(tmp_path) == before
    monkeypatch.undo()
    code, _, err = cli(*args, "--flo", "--npy")  # not images: a later run over the frames does not list them
    assert code == 0, err
    assert sorted(p.name for p in shot.iterdir() if p.suffix == ".png") == ["f_0.png", "f_1.png", "f_2.png"]
    assert (shot / "f_1_flow.flo").is_file()


# ----------------------------------------------------------------------------- a video on stdin


def _files_without_source(folder: Path, source: str) -> dict[str, bytes]:
    """name -> bytes of a run's per-pair files, named without their {source}: stdin_frame_000000_flow.flo ->
    frame_000000_flow.flo."""
    return {p.name.removeprefix(f"{source}_"): p.read_bytes() for p in folder.glob(f"{source}_frame_*")}


def test_a_video_piped_into_stdin_gives_the_files_of_the_video_file(media, tmp_path, cli, pipe_into_stdin):
    options = ["--weights", media["weights"], "--flo", "--vis", "--json", "-q"]
    code, _, err = cli(media["clip"], "-o", tmp_path / "file", *options)
    assert code == 0, err
    pipe_into_stdin(media["clip"].read_bytes())
    code, stdout, err = cli("-", "-o", tmp_path / "pipe", "--video", *options)
    assert code == 0, err
    expected = _files_without_source(tmp_path / "file", "clip")
    assert len(expected) == 8 and _files_without_source(tmp_path / "pipe", "stdin") == expected
    records = _json_lines(stdout)
    assert [(r["type"], r["source"]) for r in records] == [("pair", "stdin")] * 4 + [("video", "stdin")]
    assert records[1]["inputs"] == ["stdin#1", "stdin#2"]
    assert records[-1]["fps"] == pytest.approx(12.5) and records[-1]["frames"] == 4

    # --resume: the stream is decoded again, only the missing file is written
    (tmp_path / "pipe" / "stdin_frame_000002_vis.png").unlink()
    before = snapshot(tmp_path / "pipe")
    pipe_into_stdin(media["clip"].read_bytes())
    code, stdout, err = cli("-", "-o", tmp_path / "pipe", "--video", "--resume", *options)
    assert code == 0, err
    assert [r["type"] for r in _json_lines(stdout)] == ["skipped", "skipped", "pair", "skipped"]
    after = snapshot(tmp_path / "pipe")
    assert {name: after[name] for name in before} == before
    assert after["stdin_frame_000002_vis.png"][0] == expected["frame_000002_vis.png"]
    assert list(_record(tmp_path / "pipe")) == ["-"]


def test_resume_of_a_video_piped_into_stdin_with_other_settings_is_refused(media, tmp_path, cli, pipe_into_stdin,
                                                                          monkeypatch):
    out = tmp_path / "out"
    args = ["-", "--weights", media["weights"], "-o", out, "--flo", "--vis", "-q"]
    pipe_into_stdin(media["clip"].read_bytes())
    code, _, err = cli(*args)
    assert code == 0, err
    (out / "stdin_frame_000002_flow.flo").unlink()
    before = snapshot(out)
    model_pairs = _count_model_pairs(monkeypatch)
    pipe_into_stdin(media["clip"].read_bytes())
    # the files of --step 2's pairs 0 and 1 are named as those of --step 1's pairs 0 and 2: they were taken as done
    code, stdout, err = cli(*args, "--resume", "--step", "2", "--max-flow", "4")
    assert_one_line_error(code, err, 2, f"--resume: {out} holds outputs of stdin made with other settings",
                          "(step: 1 -> 2; max-flow: unset -> 4.0)")
    assert model_pairs == [] and snapshot(out) == before
    pipe_into_stdin(media["clip"].read_bytes())
    code, _, err = cli(*args, "--resume")
    assert code == 0, err
    assert model_pairs == [1] and (out / "stdin_frame_000002_flow.flo").is_file()


@pytest.mark.parametrize("case", ["twice", "terminal", "garbage", "too short for --step"])
def test_stdin_input_errors_are_one_line_before_any_work(case, media, tmp_path, cli, pipe_into_stdin, monkeypatch):
    args, needle = ["-"], {
        "twice": "- (stdin) is given 2 times",
        "terminal": "nothing is piped in; pipe one",
        "garbage": "cannot read the video on stdin",
        "too short for --step": "stdin has 5 frames, fewer than --step 5 + 1",
    }[case]
    if case == "twice":
        args = ["-", media["frames"], "-"]
    elif case == "terminal":  # `flowcli estimate -` typed alone: an error, not a wait for keystrokes

        class Terminal:
            def isatty(self):
                return True

        monkeypatch.setattr(sys, "stdin", Terminal())
    elif case == "garbage":
        pipe_into_stdin(b"not a video" * 1000)
    else:
        pipe_into_stdin(media["clip"].read_bytes())
        args += ["--step", "5"]
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    code, stdout, err = cli(*args, "--weights", media["weights"], "-o", tmp_path / "out")
    assert_one_line_error(code, err, 2, needle)
    assert stdout == "" and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- --pairs LIST


@pytest.fixture
def pair_images(tmp_path) -> Path:
    """tmp_path/data: three unrelated pairs of tiny images, one with spaces in its names."""
    data = tmp_path / "data"
    for seed, (first, second) in enumerate([("one 1.png", "one 2.png"), ("c.png", "d.png"), ("e.png", "f.png")]):
        write_png(data / first, _frame(seed, rng_seed=10 + seed))
        write_png(data / second, _frame(seed + 2, rng_seed=10 + seed))
    return data


def test_a_pair_list_gives_what_each_pair_gives_in_a_run_of_its_own(media, pair_images, tmp_path, cli, monkeypatch):
    lists = tmp_path / "lists"
    lists.mkdir()
    pair_list = lists / "pairs.txt"
    pair_list.write_text(
        "# before/after pairs\n"
        "\"../data/one 1.png\" '../data/one 2.png'\n"
        "\n"
        "../data/c.png\t../data/d.png\r\n"
        "   # an indented comment\n"
        "  ../data/e.png   ../data/f.png  \n"
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # relative paths are relative to the list's folder, not to this one
    pairs = [[str(lists / "../data" / name) for name in pair] for pair in
             [("one 1.png", "one 2.png"), ("c.png", "d.png"), ("e.png", "f.png")]]
    options = ["--weights", media["weights"], "--flo", "--vis", "--json"]
    from flowcli.cli import run_record

    record_writes = []
    real_atomic_path = run_record.atomic_path

    def counted_atomic_path(path, *args, **kwargs):
        record_writes.append(path)
        return real_atomic_path(path, *args, **kwargs)

    monkeypatch.setattr(run_record, "atomic_path", counted_atomic_path)
    code, stdout, err = cli("--pairs", pair_list, "-o", tmp_path / "listed", *options)
    assert code == 0, err
    assert "3 pair(s) -> " in err
    assert len(record_writes) == 1  # one write for the run: per source, a long list would rewrite it per pair
    listed = _json_lines(stdout)
    alone = []
    for pair in pairs:
        code, stdout, err = cli(*pair, "-o", tmp_path / "alone", *options, "-q")
        assert code == 0, err
        alone += _json_lines(stdout)
    assert [r["inputs"] for r in listed] == pairs
    assert [r["source"] for r in listed] == [" ".join(pair) for pair in pairs]
    assert without_timing(listed) == [
        {**r, "outputs": {k: p.replace(str(tmp_path / "alone"), str(tmp_path / "listed"))
                          for k, p in r["outputs"].items()}}
        for r in without_timing(alone)
    ]
    names = sorted(p.name for p in (tmp_path / "listed").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "alone").iterdir()) == [
        ".flowcli-estimate.json", "c_flow.flo", "c_vis.png", "e_flow.flo", "e_vis.png", "one 1_flow.flo",
        "one 1_vis.png",
    ]
    flows = [read_flo(tmp_path / "listed" / f"{stem}_flow.flo") for stem in ("one 1", "c", "e")]
    for stem, flow in zip(("one 1", "c", "e"), flows):
        np.testing.assert_array_equal(flow, read_flo(tmp_path / "alone" / f"{stem}_flow.flo"))
        listed_vis, alone_vis = (tmp_path / run / f"{stem}_vis.png" for run in ("listed", "alone"))
        assert listed_vis.read_bytes() == alone_vis.read_bytes()
    assert not np.array_equal(flows[1], flows[2])  # three pairs, not one pair three times
    assert _record(tmp_path / "listed") == _record(tmp_path / "alone")


def test_a_pair_list_on_stdin_is_relative_to_the_current_folder(media, pair_images, tmp_path, cli, pipe_into_stdin,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = ["--weights", media["weights"], "--npy", "--json", "-q"]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "pairs.txt").write_text("../data/c.png ../data/d.png\n")
    code, stdout, err = cli("--pairs", "lists/pairs.txt", "-o", tmp_path / "from_file", *options)
    assert code == 0, err
    assert _json_lines(stdout)[0]["inputs"] == ["lists/../data/c.png", "lists/../data/d.png"]
    pipe_into_stdin(b"# from a script\ndata/c.png data/d.png\n")
    code, stdout, err = cli("--pairs", "-", "-o", tmp_path / "from_stdin", *options)
    assert code == 0, err
    [record] = _json_lines(stdout)
    assert record["inputs"] == ["data/c.png", "data/d.png"] and record["source"] == "data/c.png data/d.png"
    assert record["outputs"] == {"npy": str(tmp_path / "from_stdin" / "c_flow.npy")}
    np.testing.assert_array_equal(read_npy(tmp_path / "from_stdin" / "c_flow.npy"),
                                  read_npy(tmp_path / "from_file" / "c_flow.npy"))
    # the list file's line, read from stdin, is relative to the current folder: its ../data is not there
    pipe_into_stdin(b"../data/c.png ../data/d.png\n")
    code, stdout, err = cli("--pairs", "-", "-o", tmp_path / "bad", *options)
    assert_one_line_error(code, err, 2, "stdin:1: ../data/c.png does not exist")


def test_a_pair_list_comes_after_the_inputs_and_shares_their_names(media, tmp_path, cli):
    pair_list = tmp_path / "pairs.txt"
    pair_list.write_text(shlex.join([str(media["a"]), str(media["b"])]) + "\n")  # the pair given as INPUTS too
    out = tmp_path / "out"
    args = [media["a"], media["b"], media["frames"], "--pairs", pair_list, "--weights", media["weights"], "-o", out,
            "--npy", "--json", "-q"]
    code, stdout, err = cli(*args)  # a second source named 'a' writes a_flow.npy again, as with a b a b elsewhere
    assert_one_line_error(code, err, 3, "(input 1)", "(input 3)", "would both write", "add {source} to --name")
    assert not out.exists()
    code, stdout, err = cli(*args, "--name", "{source}/{stem}")
    assert code == 0, err
    records = _json_lines(stdout)
    assert [(r["source"], r["frame1"]) for r in records] == [
        (f"{media['a']} {media['b']}", "a"), (str(media["frames"]), "f_0"), (str(media["frames"]), "f_1"),
        (f"{media['a']} {media['b']}", "a"),
    ]
    assert [r["outputs"]["npy"] for r in records] == [
        str(out / "a/a_flow.npy"), str(out / "frames/f_0_flow.npy"), str(out / "frames/f_1_flow.npy"),
        str(out / "a-2/a_flow.npy"),
    ]
    np.testing.assert_array_equal(read_npy(out / "a-2/a_flow.npy"), read_npy(out / "a/a_flow.npy"))
    assert not np.array_equal(read_npy(out / "a/a_flow.npy"), read_npy(out / "frames/f_0_flow.npy"))


PAIR_LIST_ERRORS = {
    "three paths": ("c.png d.png e.png", ":3: expected two image paths, found 3; quote paths that contain spaces"),
    "one path": ("'one 1.png'", ":3: expected two image paths, found 1"),
    "unterminated quote": ("'one 1.png' \"one 2.png", ":3: no closing quotation"),
    "missing image": ("c.png nope.png", ":3: {data}/nope.png does not exist; check the path"),
    "corrupt image": ("c.png bad.png", ":3: cannot read image {data}/bad.png"),
    "not an image": ("c.png {clip}", ":3: {clip} is not an image file"),
    "sizes differ": ("c.png small.png", ":3: frames differ in size: {data}/c.png is 80x48, {data}/small.png is 32x32"),
    "no pairs": ("# nothing but comments", " has no pairs: give one pair per line"),
    "list missing": (None, "--pairs {list} does not exist; check the path"),
    "list is a folder": (None, "--pairs {data} is a folder"),
    "stdin line": ("c.png d.png e.png", "stdin:3: expected two image paths, found 3"),
    "stdin twice": (None, "--pairs - and the input - both read stdin"),
    # the list read the video's bytes and said "/dev/stdin has no pairs"
    "stdin twice, by its device name": (None, "--pairs /dev/stdin and the input - both read stdin"),
    "stdin is a terminal": (None, "--pairs - reads the list from stdin, but nothing is piped in"),
    "two images after --pairs": (None, "--pairs {a} is an image, not a list of pairs; give it among INPUTS"),
    "two lists": (None, "--pairs is given 2 times; a run reads one list"),  # not the last one alone, unsaid
    # accepted and ignored, --max-frames 10 ran the whole list
    "--step and --max-frames of pairs": (None, "--step and --max-frames: frames are picked from sequences only"),
    "--max-frames of two images": (None, "--max-frames: frames are picked from sequences only"),
}


@pytest.mark.parametrize("case", PAIR_LIST_ERRORS)
def test_a_bad_pair_list_is_one_line_error_naming_its_line_before_any_work(
    case, media, pair_images, tmp_path, cli, monkeypatch, pipe_into_stdin
):
    data = pair_images
    (data / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    write_png(data / "small.png", _frame(0, size=(32, 32)))
    line, needle = PAIR_LIST_ERRORS[case]
    pair_list = data / "pairs.txt"
    text = f"# line 1 is a comment\nc.png d.png\n{line}\ne.png f.png\n"
    pair_list.write_text(f"# line 1\n\n{line}\n" if case == "no pairs" else text.format(clip=media["clip"]))
    inputs = ["--pairs", pair_list]
    if case == "list missing":
        inputs = ["--pairs", tmp_path / "none.txt"]
    elif case == "list is a folder":
        inputs = ["--pairs", data]
    elif case == "stdin line":
        monkeypatch.chdir(data)
        pipe_into_stdin(text.encode())
        inputs = ["--pairs", "-"]
    elif case == "stdin twice":
        pipe_into_stdin(media["clip"].read_bytes())
        inputs = ["-", "--pairs", "-"]
    elif case == "stdin twice, by its device name":
        pipe_into_stdin(media["clip"].read_bytes())
        inputs = ["-", "--pairs", "/dev/stdin"]
    elif case == "stdin is a terminal":  # typed alone: an error, not a wait for keystrokes

        class Terminal:
            def isatty(self):
                return True

        monkeypatch.setattr(sys, "stdin", Terminal())
        inputs = ["--pairs", "-"]
    elif case == "two images after --pairs":  # meant as INPUTS: not 'b.png is a single image'
        inputs = ["--pairs", media["a"], media["b"]]
    elif case == "two lists":
        inputs = ["--pairs", pair_list, "--pairs", pair_list]
    elif case == "--step and --max-frames of pairs":
        pair_list.write_text("c.png d.png\ne.png f.png\n")
        inputs = ["--pairs", pair_list, "--step", "2", "--max-frames", "2"]
    elif case == "--max-frames of two images":
        inputs = [media["a"], media["b"], "--max-frames", "2"]
    if needle.startswith(":") or needle.startswith(" "):
        needle = f"{pair_list}{needle}"
    needle = needle.format(data=data, clip=media["clip"], list=tmp_path / "none.txt", a=media["a"])
    monkeypatch.setattr("flowcli.models.load_model_and_file", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "out"
    code, stdout, err = cli(*inputs, "--weights", media["weights"], "-o", out, "--all")
    assert_one_line_error(code, err, 2, needle)
    assert stdout == "" and not out.exists()


def test_neither_inputs_nor_a_pair_list_is_a_usage_error(media, tmp_path, cli):
    code, stdout, err = cli("--weights", media["weights"], "-o", tmp_path / "out")
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert "Usage: " in err and "estimate [OPTIONS] [INPUTS]..." in err
    assert "Error: Invalid value for 'INPUTS': give INPUTS, --pairs LIST, or both" in err
    assert not (tmp_path / "out").exists()


def test_resume_of_a_pair_list_writes_only_the_missing_file(media, pair_images, tmp_path, cli, monkeypatch):
    pair_list = pair_images / "pairs.txt"
    pair_list.write_text("'one 1.png' 'one 2.png'\nc.png d.png\ne.png f.png\n")
    out = tmp_path / "out"
    args = ["--pairs", pair_list, "--weights", media["weights"], "-o", out, "--flo", "--vis", "--json", "-q"]
    code, _, err = cli(*args)
    assert code == 0, err
    complete = snapshot(out)
    assert _record(out).keys() == {str((pair_images / name).resolve()) for name in ("one 1.png", "c.png", "e.png")}
    (out / "c_flow.flo").unlink()  # interrupted while writing the second pair
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = cli(*args, "--resume", "--batch-size", "2")
    assert code == 0, err
    assert model_pairs == [1]
    records = _json_lines(stdout)
    assert [(r["type"], r["frame1"]) for r in records] == [("skipped", "one 1"), ("pair", "c"), ("skipped", "e")]
    assert records[1]["inputs"] == [str(pair_images / "c.png"), str(pair_images / "d.png")]
    resumed = snapshot(out)
    assert set(resumed) == set(complete)
    for name, (data, mtime) in complete.items():
        assert resumed[name][0] == data, name
        if name not in ("c_flow.flo", ".flowcli-estimate.json"):
            assert resumed[name][1] == mtime, f"{name} was rewritten"
    # a changed setting is refused for the list's pairs as for any input
    code, _, err = cli(*args, "--resume", "--scale", "0.5")
    assert_one_line_error(code, err, 2, f"holds outputs of {pair_images / 'one 1.png'} {pair_images / 'one 2.png'}",
                          "scale: 1.0 -> 0.5")


def test_pairs_in_a_row_share_batches_and_give_the_files_of_single_pairs(media, pair_images, tmp_path, cli,
                                                                         monkeypatch):
    data = pair_images
    write_png(data / "g.png", _frame(1, rng_seed=20))
    write_png(data / "h.png", _frame(4, rng_seed=20))
    write_png(data / "s1.png", _frame(0, rng_seed=21, size=(32, 40)))
    write_png(data / "s2.png", _frame(3, rng_seed=21, size=(32, 40)))
    pair_list = data / "pairs.txt"
    pair_list.write_text("c.png d.png\n'one 1.png' 'one 2.png'\ne.png f.png\ng.png h.png\ns1.png s2.png\n")
    # an image pair, a sequence (2 pairs), then the list: 4 pairs of 80x48 and one of 40x32
    args = [media["a"], media["b"], media["frames"], "--pairs", pair_list, "--weights", media["weights"],
            "--flo", "--vis", "--json", "-q"]
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = cli(*args, "-o", tmp_path / "single")
    assert code == 0, err
    single = _json_lines(stdout)
    assert model_pairs == [1] * 8
    model_pairs.clear()
    code, stdout, err = cli(*args, "-o", tmp_path / "batched", "--batch-size", "3")
    assert code == 0, err
    batched = _json_lines(stdout)
    # the pair before the sequence runs alone, the sequence on its own; three lines of the list share one model
    # call, the fourth line waits for the next one, which the change of size runs alone
    assert model_pairs == [1, 2, 3, 1, 1]
    stems = ["a", "f_0", "f_1", "c", "one 1", "e", "g", "s1"]
    assert [r["frame1"] for r in batched] == stems
    # the same records, but for the flow statistics, which batching changes by float rounding at most
    stats = ("flow_mean", "flow_max")

    def comparable(record: dict) -> dict:  # without the statistics, and outputs named as in the batched run
        outputs = {key: path.replace(str(tmp_path / "single"), str(tmp_path / "batched"))
                   for key, path in record["outputs"].items()}
        return {**{key: value for key, value in record.items() if key not in stats}, "outputs": outputs}

    assert [comparable(r) for r in without_timing(batched)] == [comparable(r) for r in without_timing(single)]
    for one, shared in zip(single, batched):
        assert [shared[k] for k in stats] == pytest.approx([one[k] for k in stats], abs=2e-4)
    assert sorted(p.name for p in (tmp_path / "batched").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir())
    assert _record(tmp_path / "batched") == _record(tmp_path / "single")
    for stem in stems:
        flows = [read_flo(tmp_path / run / f"{stem}_flow.flo") for run in ("single", "batched")]
        # torch's CPU convolutions pick their kernels by batch size: a pair in a batch of 2 or 3 differs from
        # the same pair alone in the last bits of float32 (~1e-7 px here), as a sequence's pairs always have
        np.testing.assert_allclose(flows[1], flows[0], rtol=0, atol=1e-5)
        colours = [read_png(tmp_path / run / f"{stem}_vis.png").astype(int) for run in ("single", "batched")]
        assert np.abs(colours[1] - colours[0]).max() <= 1
    for stem in ("a", "g", "s1"):  # the pairs that ran alone in both runs: byte for byte the same
        for name in (f"{stem}_flow.flo", f"{stem}_vis.png"):
            assert (tmp_path / "batched" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    assert not np.array_equal(read_flo(tmp_path / "batched" / "c_flow.flo"),
                              read_flo(tmp_path / "batched" / "e_flow.flo"))  # each pair its own flow


def test_resume_of_a_batched_pair_list_runs_the_pairs_before_a_skipped_one_first(media, pair_images, tmp_path, cli,
                                                                                  monkeypatch):
    pair_list = pair_images / "pairs.txt"
    pair_list.write_text("c.png d.png\n'one 1.png' 'one 2.png'\ne.png f.png\n")
    out = tmp_path / "out"
    args = ["--pairs", pair_list, "--weights", media["weights"], "-o", out, "--flo", "--json", "-q"]
    code, _, err = cli(*args)
    assert code == 0, err
    complete = snapshot(out)
    flows = {stem: read_flo(out / f"{stem}_flow.flo") for stem in ("c", "one 1")}
    for stem in ("c", "e"):
        (out / f"{stem}_flow.flo").unlink()
    model_pairs = _count_model_pairs(monkeypatch)
    code, stdout, err = cli(*args, "--resume", "--batch-size", "3")
    assert code == 0, err
    assert model_pairs == [1, 1]  # the skipped line between them runs c first: the lines stay in order
    assert [(r["type"], r["frame1"]) for r in _json_lines(stdout)] == [
        ("pair", "c"), ("skipped", "one 1"), ("pair", "e")]
    resumed = snapshot(out)
    assert {name: data for name, (data, _) in resumed.items()} == {name: data for name, (data, _) in complete.items()}
    for stem in ("c", "one 1"):
        (out / f"{stem}_flow.flo").unlink()
    model_pairs.clear()
    code, stdout, err = cli(*args, "--resume", "--batch-size", "3")
    assert code == 0, err
    assert model_pairs == [2]
    assert [(r["type"], r["frame1"]) for r in _json_lines(stdout)] == [
        ("pair", "c"), ("pair", "one 1"), ("skipped", "e")]
    again = snapshot(out)
    assert set(again) == set(complete) and again["e_flow.flo"] == resumed["e_flow.flo"]  # not touched
    for stem in ("c", "one 1"):  # a batch of two: the same flow up to float rounding (see the test above)
        np.testing.assert_allclose(read_flo(out / f"{stem}_flow.flo"), flows[stem], rtol=0, atol=1e-5)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


@pytest.mark.slow  # a fresh interpreter imports torch
def test_sigterm_stops_a_real_process_reading_a_pipe_and_its_ffmpeg(tmp_path, media):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc to find ffmpeg")
    clip = tmp_path / "clip.mkv"  # streamable, as `ffmpeg ... -f matroska -` sends it
    with VideoWriter(clip, fps=10) as writer:
        for i in range(12):
            writer.write(_frame(i % 8, rng_seed=i))
    out = tmp_path / "out"
    env = {**os.environ, "COLUMNS": "400", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", HARNESS, "estimate", "-", "--weights", str(media["weights"]), "-o", str(out),
               "--flo", "--vis", "--video", "--json", "-q"]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env) as process:
        watchdog = threading.Timer(120, process.kill)  # a failure, not a hung test suite
        watchdog.start()
        process.stdin.write(clip.read_bytes())  # then a live stream that stalls: the pipe stays open
        process.stdin.flush()
        first = json.loads(process.stdout.readline() or "null")  # a pair is done: ffmpeg is running
        assert first and first["source"] == "stdin", process.stderr.read1().decode()
        ffmpegs = _children(process.pid)
        assert ffmpegs
        process.terminate()
        process.wait(timeout=60)
        time.sleep(0.5)  # for the kernel to reap what was killed
        # checked with the pipe still open: a live ffmpeg would wait for the stalled stream forever
        assert not [pid for pid in ffmpegs if Path(f"/proc/{pid}").exists()]
        _, err = process.communicate()
        watchdog.cancel()
    assert process.returncode == 143, err
    assert "Traceback" not in err.decode()
    # no temp file, of the video neither; the run record is not one
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".flowcli-estimate.json"]


def test_formats_all_with_spaces_after_the_commas_is_all(media, tmp_path, cli):
    """--formats 'flo, all' chose every format but was not taken as 'all': no backward files, a --video warning."""
    code, stdout, err = cli(media["a"], media["b"], "--weights", media["weights"], "-o", tmp_path / "out",
                            "--formats", "flo, all", "--json", "-q")
    assert code == 0, err
    assert "warning" not in err
    assert set(_json_lines(stdout)[0]["outputs"]) == ALL_PAIR_OUTPUTS - {"video"}


def test_a_video_rate_below_the_writers_least_from_step_is_refused_before_any_work(media, tmp_path, cli):
    """0.0015 fps / --step 2 was a ValueError traceback from the video writer, after the model loaded."""
    slow = tmp_path / "slow.mp4"
    with VideoWriter(slow, fps=0.0015) as writer:
        for i in range(3):
            writer.write(_frame(i, rng_seed=1))
    out = tmp_path / "out"
    code, _, err = cli(slow, "--step", "2", "--video", "--weights", media["weights"], "-o", out, "-q")
    assert_one_line_error(code, err, 3, "video would have 0.00075 fps", "give --fps")
    assert not out.exists()
    code, _, err = cli(slow, "--step", "2", "--video", "--fps", "1", "--weights", media["weights"], "-o", out, "-q")
    assert code == 0, err
    assert (out / "slow_vis.mp4").is_file()


def test_a_video_name_as_output_folder_is_refused_and_an_existing_folder_of_one_is_used(
    media, tmp_path, cli, monkeypatch
):
    """`estimate frames/ --video -o out.mp4` made a folder out.mp4 holding frames_vis.mp4."""
    from cli_harness import assert_refused_before_the_model

    (tmp_path / "x.mp4").mkdir()
    code, _, err = cli(media["frames"], "--video", "--flo", "--weights", media["weights"], "-o", tmp_path / "x.mp4",
                       "-q")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "x.mp4" / "frames_vis.mp4").is_file()
    folder = tmp_path / "out"
    assert_refused_before_the_model(monkeypatch, cli, media["frames"], "--video", "--weights", media["weights"],
                                    output=tmp_path / "out.MP4", exit_code=2,
                                    needle=f"-o {folder} writes {folder / 'SOURCE_vis.mp4'}")  # fmt: skip


def test_a_video_of_frames_larger_than_h264_takes_is_refused_before_the_model(media, tmp_path, cli, monkeypatch):
    """Frames of 2x17000 ran the model over every pair, then ffmpeg failed: 'Nothing was written into output file'."""
    from cli_harness import assert_refused_before_the_model

    for i in range(2):
        write_png(tmp_path / "thin" / f"{i}.png", np.zeros((17000, 2, 3), np.uint8))
    assert_refused_before_the_model(monkeypatch, cli, tmp_path / "thin", "--video", "--weights", media["weights"],
                                    output=tmp_path / "out", exit_code=3,
                                    needle="thin_vis.mp4 of 2x17000 frames: H.264 takes at most 16384")  # fmt: skip
